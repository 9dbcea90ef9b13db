"""The jobs the entry points run, apart from the library they use (nothing outside this package imports it).

:mod:`~mae.jobs.pretrain` (``train.py``), :mod:`~mae.jobs.downstream` (``train.py task=finetune|linprobe``),
:mod:`~mae.jobs.evaluate` (``eval.py``), :mod:`~mae.jobs.visualize` (``python -m mae.jobs.visualize``),
:mod:`~mae.jobs.ablation` (``train.py task=ablation``, the sweeps' job) and :mod:`~mae.jobs.results_tables`
(``python -m mae.jobs.results_tables README.md``); :mod:`~mae.jobs.harness` is what every job does around its own work.
"""
