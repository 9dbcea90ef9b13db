"""Ablation sweeps: the pre-train-then-probe job (:mod:`mae.sweeps.ablation`, task=ablation), and the aggregation of
a sweep directory into a table and plots (:mod:`mae.sweeps.summary`, run by :mod:`mae.sweeps.callback` at the end of
a Hydra multirun)."""
