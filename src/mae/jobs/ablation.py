"""The ablation job (task=ablation): pre-train, then run the downstream stages on the encoder it just trained, all in
one run directory, skipping what an earlier attempt at the same job finished.

``<run>/results.json`` holds the pre-training's own numbers (``knn_top1_pretrained``, losses, steps),
``pretrain_seconds``, ``<stage>_top1``/``_top5``/``_loss``/``_train_seconds``/``_seconds`` for each downstream stage
(whose own run directory is ``<run>/<stage>/``) and ``stages_done``, the stages that finished, in order.
"""

from __future__ import annotations

import copy
import logging
import shutil
import time
from pathlib import Path

from lightning.fabric.utilities.rank_zero import rank_zero_only
from omegaconf import DictConfig, OmegaConf, open_dict

from mae.jobs.ablation_stages import check_stages, compose_stage
from mae.jobs.downstream import downstream
from mae.jobs.harness import SetupError, output_dir
from mae.jobs.pretrain import pretrain
from mae.runs.provenance import PROVENANCE_KEY, provenance
from mae.runs.run_directory import RESULTS_FILE, config_file, last_checkpoint, merge_json
from mae.sweeps.records import PRETRAIN, read_results, stages_done

log = logging.getLogger(__name__)

STAGE_RESULTS = ("top1", "top5", "loss", "val_top1", "val_top5", "val_loss", "train_seconds")
"""What a downstream stage's results.json contributes to the run's, as ``<stage>_<key>`` (the test split's numbers,
and the validation split's ``val_*``, which sweeps rank by)."""


def pretrain_then_probe(cfg: DictConfig) -> dict:
    """Run the stages of ``cfg.ablation`` that ``<run>/results.json`` does not list as done; return the record."""
    run_dir = output_dir(cfg)
    downstream_stages = list(cfg.ablation.downstream)
    check_stages(downstream_stages)
    check_same_settings(cfg, run_dir)
    record = read_results(run_dir)
    pending = [stage for stage in [PRETRAIN, *downstream_stages] if stage not in stages_done(record)]
    if not pending:
        log.info("%s: every stage finished earlier (%s); nothing to do", run_dir, ", ".join(stages_done(record)))
        return record
    if PRETRAIN in pending:
        record = _pretrain_stage(cfg, run_dir)
    for stage in downstream_stages:
        if stage in pending:
            record = _downstream_stage(cfg, stage, run_dir)
    return record


def objective(cfg: DictConfig) -> float:
    """:func:`pretrain_then_probe`, returning the result ``cfg.ablation.objective`` names (what Optuna optimises)."""
    results = pretrain_then_probe(cfg)
    key = cfg.ablation.objective
    if results.get(key) is None:
        raise SetupError(f"ablation.objective={key} is not among the run's results ({', '.join(sorted(results))})")
    return float(results[key])


def check_same_settings(cfg: DictConfig, run_dir: Path) -> None:
    """Refuse to reuse a run directory whose earlier pre-training had other settings (``ablation.same_settings``):
    skipping or resuming it would record another experiment's numbers under this one's name."""
    path = config_file(run_dir)
    if not path.is_file():
        return
    earlier = OmegaConf.load(path)
    for key in cfg.ablation.same_settings:
        before = _plain(OmegaConf.select(earlier, key))
        now = _plain(OmegaConf.select(cfg, key))
        if before != now:
            raise SetupError(
                f"{run_dir} holds a run with other {key} settings ({_first_difference(key, before, now)}); "
                "remove that directory or choose another sweep_name"
            )


def _pretrain_stage(cfg: DictConfig, run_dir: Path) -> dict:
    last = last_checkpoint(run_dir)
    if cfg.ckpt_path is None and last.is_file():
        # An interrupted attempt resumes exactly (schedule, data order, masks) from its last checkpoint: an epoch's
        # end, or the step at which a signal stopped it (mae.callbacks.preemption).
        log.info("Resuming the interrupted pre-training from %s", last)
        cfg = copy.deepcopy(cfg)
        with open_dict(cfg):
            cfg.ckpt_path = str(last)
            if cfg.get("pretrained") is not None:
                cfg.pretrained = None  # the checkpoint holds the weights continued pre-training started from
    started = time.perf_counter()
    pretrain(cfg)
    return _record(run_dir, PRETRAIN, {"pretrain_seconds": round(time.perf_counter() - started, 1)})


def _downstream_stage(cfg: DictConfig, stage: str, run_dir: Path) -> dict:
    stage_dir = run_dir / stage
    if stage_dir.exists() and rank_zero_only.rank == 0:
        # An interrupted attempt: its checkpoints and logs would mix with the new ones.
        log.info("Removing the unfinished %s run %s", stage, stage_dir)
        shutil.rmtree(stage_dir)
    stage_cfg = compose_stage(cfg, stage, run_dir)
    started = time.perf_counter()
    results = downstream(stage_cfg)
    values = {f"{stage}_{key}": results.get(key) for key in STAGE_RESULTS}
    return _record(run_dir, stage, {**values, f"{stage}_seconds": round(time.perf_counter() - started, 1)})


def _record(run_dir: Path, stage: str, values: dict) -> dict:
    """Merge ``values`` and ``stage`` (as done) into the run's results.json (rank 0 writes)."""
    path = run_dir / RESULTS_FILE
    done = stages_done(read_results(run_dir))
    values = {**values, "stages_done": done + [stage] if stage not in done else done}
    if rank_zero_only.rank == 0:
        values[PROVENANCE_KEY] = provenance()  # this attempt's: a resumed run may only run the later stages
        return merge_json(path, values)
    return {**read_results(run_dir), **values}


def _plain(node: object) -> object:
    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node


def _first_difference(key: str, before: object, now: object) -> str:
    if isinstance(before, dict) and isinstance(now, dict):
        for name in sorted(set(before) | set(now)):
            if before.get(name) != now.get(name):
                return _first_difference(f"{key}.{name}", before.get(name), now.get(name))
    return f"{key}={before!r} there, {now!r} now"
