"""Every results.json records where it came from (``provenance``): the CPU parsed from /proc/cpuinfo text, the
commit and dirty state of a checkout, and the record merge_results writes."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace

import pytest
from hydra.core.hydra_config import HydraConfig

from mae.jobs.harness import merge_results
from mae.runs import provenance as prov
from mae.runs.run_directory import RESULTS_FILE

SAPPHIRE_RAPIDS = """\
processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu vme sse sse2 avx avx2 fma avx512f avx512dq avx512bw avx512_bf16 avx512_fp16 amx_bf16 amx_tile amx_int8
bugs\t\t: spectre_v1

processor\t: 1
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu vme sse sse2 avx avx2 fma avx512f avx512dq avx512bw avx512_bf16 avx512_fp16 amx_bf16 amx_tile amx_int8
"""

ZEN3 = """\
processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 7B13
flags\t\t: fpu vme sse sse2 avx avx2 fma bmi2 sha_ni
"""

PROVENANCE_KEYS = {"commit", "dirty", "overrides", "versions", "machine", "date"}
MACHINE_KEYS = {"cpu", "logical_cores", "usable_cores", "flags", "torch_cpu_capability", "gpu"}


def test_cpuinfo_with_avx512_bf16_and_amx():
    assert prov.cpu_model(SAPPHIRE_RAPIDS) == "Intel(R) Xeon(R) Platinum 8480+"
    assert prov.cpu_flags(SAPPHIRE_RAPIDS) == {"avx2": True, "avx512f": True, "avx512_bf16": True, "amx": True}


def test_cpuinfo_with_avx2_only():
    assert prov.cpu_model(ZEN3) == "AMD EPYC 7B13"
    assert prov.cpu_flags(ZEN3) == {"avx2": True, "avx512f": False, "avx512_bf16": False, "amx": False}


def test_cpuinfo_without_flags_is_unknown_not_absent():
    arm = "processor\t: 0\nFeatures\t: fp asimd evtstrm aes\nCPU implementer\t: 0x41\n"
    assert prov.cpu_model(arm) is None
    assert prov.cpu_flags(arm) == {"avx2": None, "avx512f": None, "avx512_bf16": None, "amx": None}
    assert prov.cpu_flags("") == prov.cpu_flags(arm)


def test_machine_reads_the_given_cpuinfo():
    machine = prov.machine(ZEN3)
    assert set(machine) == MACHINE_KEYS
    assert machine["cpu"] == "AMD EPYC 7B13" and machine["flags"]["avx2"] and not machine["flags"]["amx"]
    assert machine["logical_cores"] >= 1
    assert machine["gpu"] is None or machine["gpu"]["count"] == len(machine["gpu"]["names"]) >= 1


def test_describe_machine():
    zen3 = {"cpu": "AMD EPYC 7B13", "logical_cores": 2, "usable_cores": 2, "flags": prov.cpu_flags(ZEN3), "gpu": None}
    assert prov.describe_machine({"machine": zen3}) == "AMD EPYC 7B13, 2 cores, AVX2 (no AVX-512, no AMX), fp32 CPU"
    spr = {
        "cpu": "Intel(R) Xeon(R) Platinum 8480+",
        "logical_cores": 224,
        "usable_cores": 16,
        "flags": prov.cpu_flags(SAPPHIRE_RAPIDS),
        "gpu": {"count": 2, "names": ["NVIDIA H100 80GB HBM3"] * 2},
    }
    assert prov.describe_machine(spr) == (
        "Intel(R) Xeon(R) Platinum 8480+, 16 of 224 cores, AVX2, AVX-512, AVX512-BF16, AMX, bf16 CPU, "
        "2 x NVIDIA H100 80GB HBM3"
    )
    unknown = {"cpu": None, "logical_cores": 1, "usable_cores": None, "flags": prov.cpu_flags(""), "gpu": None}
    assert prov.describe_machine(unknown) == "unknown CPU, 1 core, CPU flags unknown"


def git(repo: Path, *args: str) -> str:
    command = [
        "git",
        "-c",
        "user.name=Test",
        "-c",
        "user.email=test@example.com",
        "-c",
        "commit.gpgsign=false",
        "-C",
        str(repo),
        *args,
    ]
    return subprocess.run(command, check=True, capture_output=True, text=True).stdout.strip()


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_commit_and_dirty_state_of_a_checkout(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q")
    assert prov.git_state(repo) == {"commit": None, "dirty": False}  # no commit yet
    (repo / "train.py").write_text("print('v1')\n")
    git(repo, "add", "train.py")
    git(repo, "commit", "-q", "-m", "first")
    head = git(repo, "rev-parse", "HEAD")
    assert prov.git_state(repo) == {"commit": head, "dirty": False}
    (repo / "outputs.txt").write_text("untracked\n")  # untracked files do not count
    assert prov.git_state(repo) == {"commit": head, "dirty": False}
    # What make reproduce writes between its runs (results files, re-rendered tables) is not code.
    (repo / "docs" / "results").mkdir(parents=True)
    (repo / "README.md").write_text("| table |\n")
    (repo / "docs" / "results" / "run.json").write_text("{}\n")
    git(repo, "add", "README.md", "docs")
    git(repo, "commit", "-q", "-m", "tables")
    head = git(repo, "rev-parse", "HEAD")
    (repo / "README.md").write_text("| table, re-rendered |\n")
    (repo / "docs" / "results" / "run.json").write_text('{"status": "finished"}\n')
    assert prov.git_state(repo) == {"commit": head, "dirty": False}
    (repo / "train.py").write_text("print('v2')\n")
    assert prov.git_state(repo) == {"commit": head, "dirty": True}


def test_no_checkout_or_no_git_records_null(tmp_path, monkeypatch):
    assert prov.git_state(tmp_path) == {"commit": None, "dirty": None}  # e.g. an installed wheel
    (tmp_path / ".git").mkdir()  # looks like a checkout, but git is not installed
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert prov.git_state(tmp_path) == {"commit": None, "dirty": None}


def test_overrides_outside_a_hydra_job_are_null(monkeypatch):
    monkeypatch.setattr(HydraConfig.instance(), "cfg", None)
    assert prov.hydra_overrides() is None


def test_merge_results_records_provenance(config_factory):
    cfg = config_factory(["seed=7", "model.mask_ratio=0.5"])
    rank_zero = SimpleNamespace(is_global_zero=True)
    before = datetime.now(timezone.utc).replace(microsecond=0)
    results = merge_results(cfg, rank_zero, {"val_loss": 0.5})
    written = json.loads((Path(cfg.paths.output_dir) / RESULTS_FILE).read_text())
    assert written == results and written["val_loss"] == 0.5
    record = written["provenance"]
    assert set(record) == PROVENANCE_KEYS
    assert record["overrides"] == ["seed=7", "model.mask_ratio=0.5"]
    assert record["commit"] is None or re.fullmatch(r"[0-9a-f]{40}", record["commit"])
    assert record["dirty"] in (None, True, False)
    assert set(record["versions"]) == {"python", "torch", "lightning", "timm", "torchvision"}
    assert all(isinstance(version, str) for version in record["versions"].values())
    assert set(record["machine"]) == MACHINE_KEYS
    assert set(record["machine"]["flags"]) == {"avx2", "avx512f", "avx512_bf16", "amx"}
    date = datetime.fromisoformat(record["date"])
    assert date.utcoffset() == timedelta(0) and before <= date <= datetime.now(timezone.utc)
    assert isinstance(prov.describe_machine(record), str)

    other_rank = SimpleNamespace(is_global_zero=False)  # reads, writes nothing, records nothing new
    assert merge_results(cfg, other_rank, {"top1": 1.0}) == {**written, "top1": 1.0}
    assert json.loads((Path(cfg.paths.output_dir) / RESULTS_FILE).read_text()) == written


def test_a_job_without_a_trainer_writes_its_results_with_provenance(config_factory):
    """item_knn trains nothing: with no trainer, its one process writes as rank 0 would."""
    cfg = config_factory(["seed=3"])
    results = merge_results(cfg, None, {"val_top1_alone": 50.0})
    written = json.loads((Path(cfg.paths.output_dir) / RESULTS_FILE).read_text())
    assert written == results and written["val_top1_alone"] == 50.0
    assert set(written["provenance"]) == PROVENANCE_KEYS


def test_the_digest_of_a_weights_file_or_folder_changes_with_its_contents_and_names(tmp_path):
    file = tmp_path / "encoder.pth"
    file.write_bytes(b"weights")
    assert prov.content_digest(file) == hashlib.sha256(b"weights").hexdigest()
    folder = tmp_path / "export"
    (folder / "sub").mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    (folder / "sub" / "model.safetensors").write_bytes(b"weights")
    before = prov.content_digest(folder)
    assert before is not None and before == prov.content_digest(folder)
    (folder / "sub" / "model.safetensors").write_bytes(b"weightz")
    changed = prov.content_digest(folder)
    (folder / "sub" / "model.safetensors").rename(folder / "sub" / "other.safetensors")
    assert len({before, changed, prov.content_digest(folder)}) == 3
    assert prov.content_digest(tmp_path / "missing") is None
    (tmp_path / "empty").mkdir()
    assert prov.content_digest(tmp_path / "empty") is None


def test_gpus_are_named_and_counted_when_cuda_is_available(monkeypatch):
    monkeypatch.setattr(prov.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(prov.torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(prov.torch.cuda, "get_device_name", lambda index: f"NVIDIA H100 80GB HBM3 #{index}")
    assert prov.gpus() == {"count": 2, "names": ["NVIDIA H100 80GB HBM3 #0", "NVIDIA H100 80GB HBM3 #1"]}
    monkeypatch.setattr(prov.torch.cuda, "is_available", lambda: False)
    assert prov.gpus() is None
