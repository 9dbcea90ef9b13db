"""The result tables are rendered from the runs' results.json files, and every file that shows them (the README and
the documentation's pages) is up to date."""

import json
from pathlib import Path

import pytest
import yaml

from mae.jobs.results_tables import (
    RESULTS_DIR,
    TABLES,
    Row,
    Table,
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


def write(directory: Path, name: str, **values) -> None:
    (directory / name).write_text(json.dumps(values))


def test_finetune_rows_aggregate_their_seeds(tmp_path):
    write(tmp_path, "finetune_pretrained_seed0.json", top1=91.0, top5=99.0, train_seconds=1000.0)
    write(tmp_path, "finetune_pretrained_seed1.json", top1=93.0, top5=99.5, train_seconds=1200.0)
    write(tmp_path, "finetune_scratch_seed0.json", top1=88.0, top5=98.0, train_seconds=900.0)
    write(tmp_path, "finetune_scratch_seed1.json", top1=88.0, top5=98.0, train_seconds=900.0)
    finetune = table("finetune")
    two_seeds = Table(
        finetune.name,
        finetune.first_header,
        finetune.columns,
        (Row(finetune.rows[0].label, seeds("finetune_pretrained", 2)), Row("scratch", seeds("finetune_scratch", 2))),
    )
    assert finetune.rows[0].files == seeds("finetune_pretrained", 2)  # the README's row reads both seeds
    lines = render(two_seeds, tmp_path).splitlines()
    assert lines[2] == (
        "| MAE pre-trained (`make finetune`) | 92.00 ± 1.41 (n=2) | 99.25 ± 0.35 (n=2) | 1100 ± 141 (n=2) |"
    )
    assert lines[3].endswith("| 88.00 ± 0.00 (n=2) | 98.00 ± 0.00 (n=2) | 900 ± 0 (n=2) |")


def test_knn_rows_read_their_own_keys_of_the_main_job_file_as_percentages(tmp_path):
    write(
        tmp_path,
        "pretrain.json",
        knn_top1_pretrained=0.8312,
        knn_top1_random_init=0.7,
        knn_top1_pixels_raw=0.8,
        knn_top1_pixels_standardized=0.832,
    )
    cells = [line.split(" | ")[-1] for line in render(table("pretrain_knn"), tmp_path).splitlines()[2:]]
    assert cells == ["83.12 |", "70.00 |", "80.00 |", "83.20 |"]


def test_the_run_table_reports_the_budget_it_spent(tmp_path):
    write(
        tmp_path,
        "pretrain.json",
        epochs_trained=7,
        optimizer_steps=1638,
        train_loss_last_epoch=0.51234,
        train_seconds=643.6,
    )
    assert render(table("pretrain_run"), tmp_path).splitlines()[2] == "| `make pretrain` | 7 | 1638 | 0.5123 | 644 |"


def test_the_mask_ratio_table_has_the_sweeps_points_each_the_mean_of_its_seeds(tmp_path):
    params = yaml.safe_load((ROOT / "conf/experiment/sweep_mask_ratio.yaml").read_text())["hydra"]["sweeper"]["params"]
    sweep = table("sweep_mask_ratio")
    assert [row.label for row in sweep.rows] == params["model.mask_ratio"].split(",")
    assert all(len(row.files) == len(params["seed"].split(",")) for row in sweep.rows)
    for row in sweep.rows:
        for seed, name in enumerate(row.files):
            write(tmp_path, name, knn_top1_pretrained=0.70 + 0.01 * seed, pretrain_seconds=100.0 + seed)
    assert render(sweep, tmp_path).splitlines()[2] == "| 0.1 | 71.00 ± 1.00 (n=3) | 101 ± 1 (n=3) |"


def test_a_missing_results_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="pretrain.json does not exist"):
        render(table("pretrain_knn"), tmp_path)


def test_update_replaces_only_the_marked_tables(tmp_path):
    write(
        tmp_path,
        "pretrain.json",
        knn_top1_pretrained=0.5,
        knn_top1_random_init=0.4,
        knn_top1_pixels_raw=0.3,
        knn_top1_pixels_standardized=0.2,
    )
    text = "intro\n<!-- table:pretrain_knn -->\nstale\n<!-- /table:pretrain_knn -->\nend\n"
    updated = update(text, tmp_path)
    assert updated.startswith("intro\n<!-- table:pretrain_knn -->\n| features") and "stale" not in updated
    assert updated.endswith("| 20.00 |\n<!-- /table:pretrain_knn -->\nend\n")
    assert update(updated, tmp_path) == updated
    # A new, empty pair of markers is filled too.
    empty = update("<!-- table:pretrain_knn -->\n<!-- /table:pretrain_knn -->\n", tmp_path)
    assert empty.startswith("<!-- table:pretrain_knn -->\n| features")
    assert empty.endswith("| 20.00 |\n<!-- /table:pretrain_knn -->\n")


def test_the_readme_and_the_pages_hold_every_table_and_are_the_committed_runs_results(capsys):
    files = marked_files()
    assert ROOT / "README.md" in files and any(path.is_relative_to(ROOT / "docs") for path in files)
    assert main(["--check", "--results-dir", str(RESULTS_DIR)]) == 0, capsys.readouterr()
    shown = "".join(path.read_text() for path in files)
    assert [t.name for t in TABLES if f"<!-- table:{t.name} -->" not in shown] == []


def test_without_files_every_marked_file_is_rendered_and_checked(tmp_path, monkeypatch, capsys):
    write(
        tmp_path,
        "pretrain.json",
        knn_top1_pretrained=0.5,
        knn_top1_random_init=0.4,
        knn_top1_pixels_raw=0.3,
        knn_top1_pixels_standardized=0.2,
    )
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
    assert all("stale" not in path.read_text() and "| 20.00 |" in path.read_text() for path in files)
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
