"""``python -m mae.jobs.reproduce`` (``make reproduce``): every run behind the README's and the documentation's result
tables, with the committed defaults, then the tables re-rendered from what they wrote.

Each run is a ``train.py`` command in its own directory, ``outputs/reproduce/<name>/``; its ``results.json`` is
copied to ``docs/results/<name>.json`` when it finishes. Resumable, as the sweeps are: a run whose results file in
``docs/results/`` says ``"status": "finished"`` is skipped, and one interrupted half-way continues from its last
checkpoint. Runs that start from another run's encoder (fine-tuning, probing, continued pre-training) name it and
run after it. A finished run whose checkpoint a run still to do needs, but which is gone (a fresh clone has the
results files, not the checkpoints), is run again first, and its results file replaced. ``--list`` prints the plan with what is done; ``--only NAME ...`` runs a subset (and what it needs).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from mae.jobs.reproduce_plan import CHECKPOINT, RUNS, Run
from mae.jobs.results_tables import RESULTS_DIR
from mae.jobs.results_tables import main as render_tables
from mae.runs.config import REPO_DIR
from mae.runs.run_directory import read_json_object

RUNS_DIR = REPO_DIR / "outputs" / "reproduce"


def finished(name: str, results_dir: Path = RESULTS_DIR) -> bool:
    """Whether ``<name>.json`` in the results directory is a finished run's."""
    path = results_dir / f"{name}.json"
    return path.is_file() and read_json_object(path).get("status") == "finished"


def made_here(name: str, runs_dir: Path = RUNS_DIR) -> bool:
    """Whether run ``name`` finished in this checkout: its directory holds its last checkpoint and a finished
    ``results.json`` (an attempt interrupted half-way has the one without the other)."""
    run_dir = runs_dir / name
    results = run_dir / "results.json"
    return (
        (run_dir / CHECKPOINT).is_file() and results.is_file() and read_json_object(results).get("status") == "finished"
    )


def to_remake(runs: Sequence[Run], runs_dir: Path = RUNS_DIR, results_dir: Path = RESULTS_DIR) -> set[str]:
    """The finished runs among ``runs`` to run again: those not :func:`made_here` while a run to be made (not
    finished, or itself to run again) takes its encoder from it."""
    by_name = {run.name: run for run in runs}
    remake: set[str] = set()
    needed = [run.encoder_from for run in runs if run.encoder_from is not None and not finished(run.name, results_dir)]
    while needed:
        name = needed.pop()
        if name in remake or name not in by_name or not finished(name, results_dir):
            continue
        if not made_here(name, runs_dir):
            remake.add(name)
            if by_name[name].encoder_from is not None:
                needed.append(by_name[name].encoder_from)
    return remake


def plan(runs: Sequence[Run], only: Sequence[str] = ()) -> list[Run]:
    """``runs`` in order, restricted to ``only`` and the runs they take their encoder from; unknown names raise a
    one-line ValueError listing the known ones."""
    by_name = {run.name: run for run in runs}
    unknown = [name for name in only if name not in by_name]
    if unknown:
        raise ValueError(f"unknown run {unknown[0]!r}; the runs are: {', '.join(by_name)}")
    if not only:
        return list(runs)
    wanted: set[str] = set()
    for name in only:
        while name is not None and name not in wanted:
            wanted.add(name)
            name = by_name[name].encoder_from  # type: ignore[assignment]
    return [run for run in runs if run.name in wanted]


def command(run: Run, runs_dir: Path = RUNS_DIR) -> list[str]:
    """The ``train.py`` command of ``run``: its directory, its overrides, its encoder, and ``ckpt_path`` when an
    earlier attempt left a checkpoint to continue from."""
    run_dir = runs_dir / run.name
    overrides = [override.replace("{dir}", str(run_dir)) for override in run.overrides]
    if run.encoder_from is not None and not any(o.startswith("pretrained=") for o in overrides):
        overrides.append(f"pretrained={runs_dir / run.encoder_from / CHECKPOINT}")
    if run.resume == "ckpt_path" and (run_dir / CHECKPOINT).is_file():
        overrides.append(f"ckpt_path={run_dir / CHECKPOINT}")
    return [sys.executable, str(REPO_DIR / "train.py"), f"hydra.run.dir={run_dir}", *overrides]


def prerequisites(run: Run, runs_dir: Path = RUNS_DIR) -> list[tuple[Path, list[str]]]:
    """``(path, the command that makes it)`` for each of ``run.before``, placeholders filled in."""
    run_dir = runs_dir / run.name
    encoder = "" if run.encoder_from is None else str(runs_dir / run.encoder_from / CHECKPOINT)

    def filled(text: str) -> str:
        return text.replace("{encoder}", encoder).replace("{dir}", str(run_dir))

    return [
        (REPO_DIR / filled(item.creates), [sys.executable, "-m", *map(filled, item.module_args)]) for item in run.before
    ]


def execute(run: Run, runs_dir: Path = RUNS_DIR, results_dir: Path = RESULTS_DIR) -> None:
    """Run ``run`` (what it needs first, unless made already) and copy its finished results."""
    run_dir = runs_dir / run.name
    if run.resume == "restart" and run_dir.exists():
        aside = run_dir.with_name(f"{run.name}.incomplete")
        shutil.rmtree(aside, ignore_errors=True)
        run_dir.rename(aside)
    for path, make in prerequisites(run, runs_dir):
        if not path.exists():
            subprocess.run(make, cwd=REPO_DIR, check=True)
    subprocess.run(command(run, runs_dir), cwd=REPO_DIR, check=True)
    results = run_dir / "results.json"
    if read_json_object(results).get("status") != "finished":
        raise RuntimeError(f"{results} does not say finished; run make reproduce again to continue it")
    results_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(results, results_dir / f"{run.name}.json")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mae.jobs.reproduce", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", nargs="+", default=[], metavar="NAME", help="these runs (and their encoders' runs)")
    parser.add_argument("--list", action="store_true", help="print the runs and which are done, run nothing")
    args = parser.parse_args(argv)
    try:
        runs = plan(RUNS, args.only)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    remake = to_remake(runs)
    for index, run in enumerate(runs, 1):
        done = finished(run.name) and run.name not in remake
        if args.list:
            print(
                f"{'done' if done else 'redo' if run.name in remake else 'todo'}  {run.name}: {' '.join(command(run)[2:])}"
            )
            continue
        if done:
            print(f"[{index}/{len(runs)}] {run.name}: finished, skipped", flush=True)
            continue
        why = ": finished, but its checkpoint is gone and a run to do needs it; again (results replaced)"
        print(f"[{index}/{len(runs)}] {run.name}{why if run.name in remake else ''}", flush=True)
        try:
            execute(run)
        except (subprocess.CalledProcessError, RuntimeError) as error:
            print(f"error: {run.name}: {error}", file=sys.stderr)
            return 1
    return 0 if args.list else render_tables([])


if __name__ == "__main__":
    raise SystemExit(main())
