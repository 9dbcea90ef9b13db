"""`make reproduce`: its plan covers every results file the tables read, runs in dependency order, skips what
finished, resumes what did not, and copies only finished results."""

import json
import sys
from pathlib import Path

import pytest

from mae.jobs import reproduce
from mae.jobs.reproduce import command, execute, finished, plan, prerequisites, to_remake
from mae.jobs.reproduce_plan import CHECKPOINT, RUNS, Prerequisite, Run
from mae.jobs.results_tables import TABLES, Comparisons, Table


def test_the_plan_makes_every_file_the_tables_read_and_nothing_else():
    planned = {f"{run.name}.json" for run in RUNS}
    read = set()
    for table in TABLES:
        if isinstance(table, Table):
            read.update(name for row in table.rows for name in row.files)
        elif isinstance(table, Comparisons):
            read.update(name for row in table.rows for name in (*row.better, *row.worse))
    assert read == planned
    assert len(planned) == len(RUNS)  # no two runs write the same file


def test_every_run_comes_after_the_run_it_takes_its_encoder_from():
    position = {run.name: index for index, run in enumerate(RUNS)}
    for run in RUNS:
        if run.encoder_from is not None:
            assert position[run.encoder_from] < position[run.name], run.name


def test_the_seeds_the_issue_asks_for():
    names = {run.name for run in RUNS}
    assert {f"pretrain_seed{seed}" for seed in range(3)} <= names
    for stem in ("finetune_pretrained", "finetune_scratch", "linprobe_pretrained_mean"):
        assert {f"{stem}_seed{seed}" for seed in range(2)} <= names
    for depth in ("1", "2", "4", "8"):
        assert {f"sweep_decoder_depth_{depth}_seed{seed}" for seed in range(3)} <= names


def test_only_selects_a_run_and_the_runs_it_needs_and_unknown_names_are_one_line():
    selected = [run.name for run in plan(RUNS, ["finetune_pretrained_seed1"])]
    assert selected == ["pretrain_seed1", "finetune_pretrained_seed1"]
    with pytest.raises(ValueError, match="unknown run 'nosuch'; the runs are: pretrain_seed0, "):
        plan(RUNS, ["nosuch"])


def test_the_command_names_its_directory_its_encoder_and_resumes_from_an_interrupted_attempt(tmp_path):
    run = Run("probe_seed1", ("task=linprobe", "seed=1"), "pretrain_seed1")
    first = command(run, tmp_path)
    assert first[:2] == [sys.executable, str(reproduce.REPO_DIR / "train.py")]
    assert first[2:] == [
        f"hydra.run.dir={tmp_path / 'probe_seed1'}",
        "task=linprobe",
        "seed=1",
        f"pretrained={tmp_path / 'pretrain_seed1' / CHECKPOINT}",
    ]
    (tmp_path / "probe_seed1" / CHECKPOINT).parent.mkdir(parents=True)
    (tmp_path / "probe_seed1" / CHECKPOINT).write_bytes(b"")
    assert command(run, tmp_path)[-1] == f"ckpt_path={tmp_path / 'probe_seed1' / CHECKPOINT}"
    # A task that resumes from its own directory (an ablation point) gets no ckpt_path.
    itself = Run("probe_seed1", ("experiment=sweep_cpu",), resume="itself")
    assert not any(arg.startswith("ckpt_path=") for arg in command(itself, tmp_path))


def test_prerequisites_fill_in_the_run_directory_and_the_encoder(tmp_path):
    run = Run(
        "continued",
        ("pretrained={dir}/hf",),
        "pretrain_seed0",
        (Prerequisite("{dir}/hf", ("mae.model_files.export", "transformers", "{encoder}", "{dir}/hf")),),
    )
    [(path, make)] = prerequisites(run, tmp_path)
    assert path == tmp_path / "continued" / "hf"
    assert make == [
        sys.executable,
        "-m",
        "mae.model_files.export",
        "transformers",
        str(tmp_path / "pretrain_seed0" / CHECKPOINT),
        str(tmp_path / "continued" / "hf"),
    ]
    assert f"pretrained={tmp_path / 'continued' / 'hf'}" in command(run, tmp_path)


def fake_train(monkeypatch, status: str):
    """subprocess.run replaced: the "run" writes a results.json with ``status`` into its hydra.run.dir."""
    calls = []

    def run(args, cwd, check):
        calls.append(args)
        run_dir = Path(next(arg for arg in args if arg.startswith("hydra.run.dir=")).split("=", 1)[1])
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "results.json").write_text(json.dumps({"status": status, "top1": 90.0}))

    monkeypatch.setattr(reproduce.subprocess, "run", run)
    return calls


def test_finished_results_are_copied_and_then_skipped(tmp_path, monkeypatch):
    calls = fake_train(monkeypatch, "finished")
    run, runs_dir, results_dir = Run("probe_seed0", ("seed=0",)), tmp_path / "runs", tmp_path / "results"
    assert not finished(run.name, results_dir)
    execute(run, runs_dir, results_dir)
    assert json.loads((results_dir / "probe_seed0.json").read_text())["top1"] == 90.0
    assert finished(run.name, results_dir) and len(calls) == 1


def test_an_unfinished_run_is_not_copied(tmp_path, monkeypatch):
    fake_train(monkeypatch, "interrupted")
    with pytest.raises(RuntimeError, match="does not say finished; run make reproduce again"):
        execute(Run("probe_seed0", ("seed=0",)), tmp_path / "runs", tmp_path / "results")
    assert not (tmp_path / "results" / "probe_seed0.json").exists()


def test_a_restarted_run_moves_the_interrupted_attempt_aside(tmp_path, monkeypatch):
    fake_train(monkeypatch, "finished")
    run = Run("continued", ("seed=0",), resume="restart")
    stale = tmp_path / "runs" / "continued" / CHECKPOINT
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"old")
    execute(run, tmp_path / "runs", tmp_path / "results")
    assert (tmp_path / "runs" / "continued.incomplete" / CHECKPOINT).read_bytes() == b"old"
    assert not (tmp_path / "runs" / "continued" / CHECKPOINT).exists()


def test_list_runs_nothing(capsys, monkeypatch):
    monkeypatch.setattr(reproduce.subprocess, "run", lambda *a, **k: pytest.fail("--list ran something"))
    assert reproduce.main(["--list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(RUNS) and lines[0].split()[1] == "pretrain_seed0:"
    assert {line.split()[0] for line in lines} <= {"done", "todo", "redo"}


def write_results(path: Path, status: str = "finished") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"status": status}))


def test_a_finished_encoder_run_whose_checkpoint_is_gone_is_made_again_for_the_runs_that_need_it(tmp_path):
    runs_dir, results_dir = tmp_path / "runs", tmp_path / "results"
    runs = (
        Run("pretrain_seed0", ("seed=0",)),
        Run("continued_seed0", ("seed=0",), "pretrain_seed0"),
        Run("probe_seed0", ("task=linprobe",), "continued_seed0"),
        Run("probe_seed1", ("task=linprobe",), "pretrain_seed0"),
    )
    for name in ("pretrain_seed0", "continued_seed0", "probe_seed1"):
        write_results(results_dir / f"{name}.json")
    # A fresh clone: the results files, no checkpoints. The probe to do needs continued_seed0, which needs
    # pretrain_seed0: both are made again. probe_seed1 is finished, so it needs nothing.
    assert to_remake(runs, runs_dir, results_dir) == {"pretrain_seed0", "continued_seed0"}
    # Made here (a checkpoint and a finished results.json in the run's directory): used as they are.
    for name in ("pretrain_seed0", "continued_seed0"):
        (runs_dir / name / CHECKPOINT).parent.mkdir(parents=True)
        (runs_dir / name / CHECKPOINT).write_bytes(b"")
        write_results(runs_dir / name / "results.json")
    assert to_remake(runs, runs_dir, results_dir) == set()
    # An attempt at making it again that was interrupted half-way left a checkpoint: not one to start from.
    write_results(runs_dir / "continued_seed0" / "results.json", "interrupted")
    assert to_remake(runs, runs_dir, results_dir) == {"continued_seed0"}
    # Nothing to do: nothing to make again.
    write_results(results_dir / "probe_seed0.json")
    assert to_remake(runs, runs_dir, results_dir) == set()
