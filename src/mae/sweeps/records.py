"""Reading what an ablation run recorded: its results.json and the stages that finished."""

from __future__ import annotations

from pathlib import Path

from mae.runs.run_directory import RESULTS_FILE, read_json_object

PRETRAIN = "pretrain"
"""The first stage of every ablation run."""


def read_results(run_dir: Path) -> dict:
    """The run's results.json, or ``{}`` when it has none yet (or an unreadable one: the run starts over)."""
    try:
        return read_json_object(run_dir / RESULTS_FILE)
    except ValueError:
        return {}


def stages_done(results: dict) -> list[str]:
    """The stages that finished, in the order they ran. A plain pre-training run (no ablation bookkeeping) counts as
    pre-trained once the job wrote its final summary (``optimizer_steps``, merged only after training ended)."""
    if "stages_done" in results:
        return list(results["stages_done"])
    return [PRETRAIN] if "optimizer_steps" in results else []
