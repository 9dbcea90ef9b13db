"""One training job on several nodes under SLURM: the trainer config, the sbatch script, and what Lightning makes of
the variables srun sets (here those of task 3 of a 2-node x 2-task job)."""

from __future__ import annotations

import re
import signal
from pathlib import Path

import pytest
from conftest import compose_config
from lightning.pytorch.plugins.environments import SLURMEnvironment

from mae.jobs.harness import build_trainer

ROOT = Path(__file__).resolve().parents[1]
SBATCH = ROOT / "scripts" / "slurm" / "pretrain.sbatch"
# What srun sets for the fourth task (global rank 3, second task on the second node) of `--nodes=2 --ntasks-per-node=2`.
SLURM_TASK_3 = {
    "SLURM_JOB_ID": "81234",
    "SLURM_JOB_NAME": "mae-pretrain",
    "SLURM_JOB_NUM_NODES": "2",
    "SLURM_NNODES": "2",
    "SLURM_NTASKS": "4",
    "SLURM_NTASKS_PER_NODE": "2",
    "SLURM_PROCID": "3",
    "SLURM_LOCALID": "1",
    "SLURM_NODEID": "1",
    "SLURM_JOB_NODELIST": "gpu[017-018]",
    "SLURM_NODELIST": "gpu[017-018]",
}


def sbatch_options() -> dict[str, str]:
    return dict(re.findall(r"^#SBATCH --([\w-]+)=(\S+)", SBATCH.read_text(), re.M))


def test_the_sbatch_script_runs_one_task_per_gpu_with_the_requeue_signal_and_the_slurm_trainer():
    options = sbatch_options()
    assert options["ntasks-per-node"] == options["gpus-per-node"]
    assert options["signal"].startswith("USR1@") and "--requeue" in SBATCH.read_text()
    srun = SBATCH.read_text().replace("\\\n", " ").split("\nsrun ", 1)[1].splitlines()[0]
    assert "trainer=slurm" in srun and "${SLURM_JOB_ID}" in srun and srun.endswith('"$@"')
    # The effective batch the script's comment promises: per-GPU batch x accumulation x GPUs = the paper's 4096.
    overrides = re.findall(r"(\S+=\S+)", srun)
    cfg = compose_config([o for o in overrides if not o.startswith("hydra.")])
    gpus = int(options["nodes"]) * int(options["gpus-per-node"])
    assert cfg.trainer.strategy._target_.endswith("DDPStrategy") and cfg.model.depth == 24
    assert "lightning.pytorch.plugins.environments.SLURMEnvironment" in [p._target_ for p in cfg.trainer.plugins]
    assert cfg.schedule.batch_size * cfg.schedule.accumulate_grad_batches * gpus == 4096


def keep_process_state(monkeypatch) -> None:
    """A trainer of global rank 3 makes this process rank 3 for Lightning's rank-zero-only helpers (which then skip
    writing results) and sets the master's address: put all of it back after the test."""
    import lightning.fabric.utilities.rank_zero as fabric_rank_zero
    import lightning.pytorch.utilities.rank_zero as pytorch_rank_zero
    import lightning_utilities.core.rank_zero as utilities_rank_zero

    for module in (fabric_rank_zero, pytorch_rank_zero, utilities_rank_zero):
        monkeypatch.setattr(module.rank_zero_only, "rank", getattr(module.rank_zero_only, "rank", 0))
    # Lightning's SLURM environment writes the master address and port into os.environ when asked for them: left
    # there, a later DDP run on this machine would wait for gpu017.
    for name in ("MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "NODE_RANK", "LOCAL_RANK", "GLOBAL_RANK"):
        monkeypatch.setenv(name, "")  # recorded, so that teardown restores the variable's absence or value
        monkeypatch.delenv(name)


def test_under_srun_lightning_takes_ranks_world_size_and_master_from_slurm(monkeypatch, tmp_path):
    keep_process_state(monkeypatch)
    for name, value in SLURM_TASK_3.items():
        monkeypatch.setenv(name, value)
    cfg = compose_config(
        ["trainer=slurm", "trainer.accelerator=cpu", "trainer.precision=32-true"], output_dir=tmp_path / "run"
    )
    assert (cfg.trainer.num_nodes, cfg.trainer.devices) == (2, 2)
    trainer = build_trainer(cfg)
    environment = trainer._accelerator_connector.cluster_environment
    assert isinstance(environment, SLURMEnvironment) and environment.auto_requeue
    assert (trainer.num_nodes, trainer.num_devices, trainer.world_size) == (2, 2, 4)
    assert (trainer.global_rank, trainer.node_rank, trainer.local_rank) == (3, 1, 1)
    assert environment.main_address == "gpu017"  # the first node of the allocation
    assert environment.main_port == 15000 + 1234  # Lightning's: from the job id, the same on every node
    before = signal.getsignal(signal.SIGUSR1)
    try:
        trainer._signal_connector.register_signal_handlers()
        handler = signal.getsignal(signal.SIGUSR1)
        assert handler is not before
        assert "slurm_sigusr_handler" in repr(getattr(handler, "signal_handlers", [handler]))
    finally:
        trainer._signal_connector.teardown()
        signal.signal(signal.SIGUSR1, before)


def test_outside_slurm_the_slurm_trainer_is_one_node_of_one_device(monkeypatch, tmp_path):
    for name in SLURM_TASK_3:
        monkeypatch.delenv(name, raising=False)
    cfg = compose_config(["trainer=slurm", "trainer.accelerator=cpu"], output_dir=tmp_path / "run")
    assert (cfg.trainer.num_nodes, cfg.trainer.devices) == (1, 1)


@pytest.mark.parametrize("variable", ["SLURM_JOB_NUM_NODES", "SLURM_NTASKS_PER_NODE"])
def test_the_counts_come_from_the_allocation(monkeypatch, tmp_path, variable):
    monkeypatch.setenv(variable, "4")
    cfg = compose_config(["trainer=slurm"], output_dir=tmp_path / "run")
    key = "num_nodes" if variable == "SLURM_JOB_NUM_NODES" else "devices"
    assert cfg.trainer[key] == 4
