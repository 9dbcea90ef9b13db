"""The result tables are rendered from the runs' results.json files, and every file that shows them (the README and
the documentation's pages) is up to date."""

import json
from pathlib import Path

import pytest
import yaml

from mae.jobs.results_sources import UNKNOWN_WRITER
from mae.jobs.results_tables import (
    NOT_RUN,
    RESULTS_DIR,
    TABLES,
    check_markers,
    main,
    marked_files,
    mean_and_spread,
    render,
    seeds,
    update,
)

ROOT = Path(__file__).resolve().parents[1]


def table(name: str):
    return next(t for t in TABLES if t.name == name)


def test_mean_and_spread_of_seeds():
    assert mean_and_spread([90.0, 92.0], 2) == "91.00 ± 1.41 (n=2)"
    assert mean_and_spread([90.123], 1) == "90.1"
    assert mean_and_spread([], 2) == ""
    assert mean_and_spread([90.0, 92.0], 2, expected=3) == "91.00 ± 1.41 (n=2 of 3)"  # a seed still to run
    assert mean_and_spread([90.0], 2, expected=2) == "90.00 (n=1 of 2)"


def write(directory: Path, name: str, **values) -> None:
    (directory / name).write_text(json.dumps(values))


KNN = dict(knn_top1_pretrained=0.5, knn_top1_random_init=0.4, knn_top1_pixels_raw=0.3, knn_top1_pixels_standardized=0.2)


def test_finetune_rows_aggregate_their_seeds_with_validation_beside_test(tmp_path):
    write(tmp_path, "finetune_pretrained_seed0.json", top1=91.0, val_top1=90.0, top5=99.0, train_seconds=1000.0)
    write(tmp_path, "finetune_pretrained_seed1.json", top1=93.0, val_top1=92.0, top5=99.5, train_seconds=1200.0)
    write(tmp_path, "finetune_scratch_seed0.json", top1=88.0, val_top1=87.0, top5=98.0, train_seconds=900.0)
    finetune = table("finetune")
    assert finetune.rows[0].files == seeds("finetune_pretrained", 2)  # the README's row reads both seeds
    lines = render(finetune, tmp_path).splitlines()
    assert lines[2] == (
        "| MAE pre-trained (`make finetune`) | 91.00 ± 1.41 (n=2) | 92.00 ± 1.41 (n=2) | 99.25 ± 0.35 (n=2) | "
        "1100 ± 141 (n=2) |"
    )
    assert lines[3].endswith("| 87.00 (n=1 of 2) | 88.00 (n=1 of 2) | 98.00 (n=1 of 2) | 900 (n=1 of 2) |")


def test_the_per_class_segmentation_table_has_a_column_per_scene_class(tmp_path):
    write(tmp_path, "segment_pretrained_seed0.json", per_class_iou=[90.0, 10.0, *[20.0] * 9])
    write(tmp_path, "segment_pretrained_seed1.json", per_class_iou=[94.0, 30.0, *[20.0] * 9])
    lines = render(table("segment_per_class"), tmp_path).splitlines()
    assert lines[0].split(" | ")[1:3] == ["background", "T-shirt/top"] and lines[0].endswith("| Ankle boot |")
    assert lines[2].split(" | ")[1:3] == ["92.0 ± 2.8 (n=2)", "20.0 ± 14.1 (n=2)"]
    assert NOT_RUN in lines[3]


def test_knn_rows_read_their_own_keys_of_the_main_job_files_as_percentages(tmp_path):
    for seed in range(3):
        write(tmp_path, f"pretrain_seed{seed}.json", **KNN, **{f"val_{k}": v + 0.01 * seed for k, v in KNN.items()})
    rows = [line.split(" | ")[1:] for line in render(table("pretrain_knn"), tmp_path).splitlines()[2:]]
    assert rows[0] == ["51.00 ± 1.00 (n=3)", "50.00 ± 0.00 (n=3) |"]  # validation, then test
    assert [row[1] for row in rows[1:]] == ["40.00 ± 0.00 (n=3) |", "30.00 ± 0.00 (n=3) |", "20.00 ± 0.00 (n=3) |"]


def test_the_run_table_reports_the_budget_it_spent(tmp_path):
    write(
        tmp_path,
        "pretrain_seed0.json",
        epochs_trained=7,
        optimizer_steps=1638,
        train_loss_last_epoch=0.51234,
        val_loss=0.6,
        train_seconds=643.6,
    )
    assert render(table("pretrain_run"), tmp_path).splitlines()[2] == (
        "| `make pretrain`, seeds 0, 1, 2 | 7 (n=1 of 3) | 1638 (n=1 of 3) | 0.5123 (n=1 of 3) | 0.6000 (n=1 of 3) | "
        "644 (n=1 of 3) |"
    )


@pytest.mark.parametrize(
    ("name", "parameter"), [("mask_ratio", "model.mask_ratio"), ("decoder_depth", "model.decoder_depth")]
)
def test_the_sweep_tables_have_the_sweeps_points_each_the_mean_of_its_seeds(tmp_path, name, parameter):
    params = yaml.safe_load((ROOT / f"conf/experiment/sweep_{name}.yaml").read_text())["hydra"]["sweeper"]["params"]
    sweep = table(f"sweep_{name}")
    assert [row.label for row in sweep.rows] == params[parameter].split(",")
    assert all(len(row.files) == len(params["seed"].split(",")) for row in sweep.rows)
    for row in sweep.rows:
        for seed, file in enumerate(row.files):
            write(
                tmp_path,
                file,
                knn_top1_pretrained=0.70 + 0.01 * seed,
                val_knn_top1_pretrained=0.60,
                pretrain_seconds=100.0 + seed,
            )
    first = render(sweep, tmp_path).splitlines()[2]
    assert first.startswith(f"| {sweep.rows[0].label} | 60.00 ± 0.00 (n=3) | 71.00 ± 1.00 (n=3) |")
    assert "| 101 ± 1 (n=3) |" in first


def test_a_row_without_results_says_it_has_not_run(tmp_path):
    lines = render(table("pretrain_knn"), tmp_path).splitlines()
    assert lines[2] == f"| MAE pre-trained encoder (`make pretrain`) | {NOT_RUN} |  |"


def test_claims_state_welchs_t_and_say_when_they_cannot_be_tested(tmp_path):
    claims = table("claims")
    assert "not tested yet (n = 0 and 0 of 3 and 3" in render(claims, tmp_path).splitlines()[2]
    for seed, (pretrained, random_init) in enumerate(((0.80, 0.60), (0.82, 0.61), (0.81, 0.62))):
        write(tmp_path, f"pretrain_seed{seed}.json", knn_top1_pretrained=pretrained, knn_top1_random_init=random_init)
    line = render(claims, tmp_path).splitlines()[2]
    # Means 81 and 61, both sample variances 1 (points^2): t = 20 / sqrt(2/3) = 24.49, df = 4.
    assert line.startswith("| kNN, `make pretrain`: pre-trained minus fresh random init | +20.00 | 24.49 (df 4.0) |")
    assert line.endswith("| above |")


def test_sources_name_the_commit_and_machine_of_every_file(tmp_path):
    machine = {"cpu": "AMD EPYC 7B13", "logical_cores": 2, "usable_cores": 2, "flags": {"avx2": True}}
    for name, dirty in (("a", False), ("b", False), ("c", True)):
        record = {"commit": "0123456789abcdef", "dirty": dirty, "machine": machine, "versions": {"torch": "2.14.1"}}
        write(tmp_path, f"{name}.json", provenance=record)
    lines = render(table("sources"), tmp_path).splitlines()
    assert lines[2].startswith("| 2 | `0123456789` | AMD EPYC 7B13") and lines[2].endswith("| torch 2.14.1 |")
    assert lines[3].startswith("| 1 | `0123456789` (uncommitted changes) |")


def test_encoders_tell_runs_of_one_path_apart_by_the_file_they_read(tmp_path):
    old, new = "a" * 64, "b" * 64
    write(tmp_path, "pretrain_seed0.json", checkpoint_sha256=new, pretrained=None)
    write(tmp_path, "probe_new.json", pretrained="ckpt", pretrained_sha256=new)
    write(tmp_path, "probe_old.json", pretrained="ckpt", pretrained_sha256=old)
    write(tmp_path, "probe_unrecorded.json", pretrained="ckpt")
    write(tmp_path, "scratch.json", pretrained=None, pretrained_sha256=None)
    lines = render(table("encoders"), tmp_path).splitlines()
    assert lines[2:] == [
        f"| `aaaaaaaaaaaa` | {UNKNOWN_WRITER} | probe_old |",
        "| `bbbbbbbbbbbb` | pretrain_seed0 | probe_new |",
        "| not recorded (runs made before digests were recorded) |  | probe_unrecorded |",
    ]
    assert render(table("encoders"), tmp_path / "empty") == "No run here started from a weights file."


def test_update_replaces_only_the_marked_tables(tmp_path):
    write(tmp_path, "pretrain_seed0.json", **KNN)
    text = "intro\n<!-- table:pretrain_knn -->\nstale\n<!-- /table:pretrain_knn -->\nend\n"
    updated = update(text, tmp_path)
    assert updated.startswith("intro\n<!-- table:pretrain_knn -->\n| features") and "stale" not in updated
    assert updated.endswith("| 20.00 (n=1 of 3) |\n<!-- /table:pretrain_knn -->\nend\n")
    assert update(updated, tmp_path) == updated
    # A new, empty pair of markers is filled too.
    empty = update("<!-- table:pretrain_knn -->\n<!-- /table:pretrain_knn -->\n", tmp_path)
    assert empty.startswith("<!-- table:pretrain_knn -->\n| features")
    assert empty.endswith("| 20.00 (n=1 of 3) |\n<!-- /table:pretrain_knn -->\n")


def test_the_readme_and_the_pages_hold_every_table_and_are_the_committed_runs_results(capsys):
    files = marked_files()
    assert ROOT / "README.md" in files and any(path.is_relative_to(ROOT / "docs") for path in files)
    assert main(["--check", "--results-dir", str(RESULTS_DIR)]) == 0, capsys.readouterr()
    shown = "".join(path.read_text() for path in files)
    assert [t.name for t in TABLES if f"<!-- table:{t.name} -->" not in shown] == []


def test_without_files_every_marked_file_is_rendered_and_checked(tmp_path, monkeypatch, capsys):
    write(tmp_path, "pretrain_seed0.json", **KNN)
    (tmp_path / "docs" / "deep").mkdir(parents=True)
    stale = "<!-- table:pretrain_knn -->\nstale\n<!-- /table:pretrain_knn -->\n"
    (tmp_path / "README.md").write_text(stale)
    (tmp_path / "docs" / "deep" / "page.md").write_text("text\n" + stale)
    (tmp_path / "docs" / "plain.md").write_text("no tables here\n")
    files = marked_files(tmp_path)
    assert files == [tmp_path / "README.md", tmp_path / "docs" / "deep" / "page.md"]
    monkeypatch.setattr("mae.jobs.results_tables.marked_files", lambda: files)
    assert main(["--check", "--results-dir", str(tmp_path)]) == 1
    assert "README.md" in capsys.readouterr().err
    assert main(["--results-dir", str(tmp_path)]) == 0
    assert all("stale" not in path.read_text() and "| 20.00 (n=1 of 3) |" in path.read_text() for path in files)
    assert main(["--check", "--results-dir", str(tmp_path)]) == 0
    assert main([str(files[1]), "--check", "--results-dir", str(tmp_path)]) == 0  # files named: only those


def test_a_marker_of_no_table_or_without_its_partner_is_refused(tmp_path, capsys):
    with pytest.raises(ValueError, match="names no table"):
        check_markers("<!-- table:nosuch -->\n<!-- /table:nosuch -->\n")
    with pytest.raises(ValueError, match="never closed"):
        check_markers("<!-- table:finetune -->\n| x |\n")
    with pytest.raises(ValueError, match="not opened"):
        check_markers("<!-- /table:finetune -->\n")
    check_markers(
        "<!-- table:finetune -->\n<!-- /table:finetune -->\n<!-- table:finetune -->\n<!-- /table:finetune -->\n"
    )
    page = tmp_path / "page.md"
    page.write_text("<!-- table:finetun -->\n<!-- /table:finetun -->\n")
    assert main([str(page), "--check", "--results-dir", str(RESULTS_DIR)]) == 2
    assert "names no table" in capsys.readouterr().err
