"""Ablation sweeps after the fact: the runs of a sweep directory (:mod:`mae.sweeps.sweep_runs`), their summary with
mean and spread over seeds (:mod:`mae.sweeps.summary`) and plots, written by :mod:`mae.sweeps.callback` when a Hydra
multirun ends. Each point runs the job :mod:`mae.jobs.ablation` (task=ablation)."""
