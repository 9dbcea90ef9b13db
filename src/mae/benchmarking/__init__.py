"""Benchmark harness for MAE pre-training throughput.

One job per module: :mod:`~mae.benchmarking.flops` (analytic FLOP counts), :mod:`~mae.benchmarking.peak`
(this machine's matmul peak), :mod:`~mae.benchmarking.simmim` (the all-tokens comparison model of the paper's
Table 2), :mod:`~mae.benchmarking.memory` (peak memory of a measured region), :mod:`~mae.benchmarking.step`
(timing of a full pre-training step), :mod:`~mae.benchmarking.loader` (data-pipeline throughput),
:mod:`~mae.benchmarking.listing` (listing a million image files) and
:mod:`~mae.benchmarking.report` (result rows, JSON and markdown). ``python -m mae.benchmarking`` (:mod:`~mae.benchmarking.__main__`) strings them together.
"""
