"""Multi-node pre-training simulated on loopback: 2 nodes x 1 process (gloo on CPU), started by torchrun and by
Lightning's own launch, checked against one process on the same global batch."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import compose_config
from test_data_fashion_mnist import make_fashion_mnist
from test_shards import run_convert

from mae.jobs.harness import build_training_run
from mae.runs.config import instantiate_node

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent

# The global batch is fixed, so each of 2 processes takes 32 images a step and one process 64: 4 steps an epoch.
RUN = [
    "data.train_samples=256",
    "data.knn_train_samples=256",
    "data.knn_val_samples=128",
    "schedule.global_batch_size=64",
    "model.embed_dim=32",
    "model.depth=2",
    "model.num_heads=2",
    "model.decoder_embed_dim=16",
    "model.decoder_depth=1",
    "model.decoder_num_heads=2",
    "trainer.limit_val_batches=2",
    "callbacks.progress_bar.refresh_rate=0",
    "schedule.epochs=2",
    "schedule.warmup_epochs=1",
    "+callbacks.probe._target_=distributed_probe.RankRecorder",
]
TWO_NODES = [
    "trainer=ddp",
    "trainer.accelerator=cpu",
    "trainer.devices=1",
    "trainer.num_nodes=2",
    "trainer.precision=32-true",
]
ENV = {"PYTHONUNBUFFERED": "1", "PYTHONPATH": os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")]))}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def train_command(run_dir: Path, overrides: list[str], base: list[str] = RUN) -> list[str]:
    return [
        str(ROOT / "train.py"),
        f"hydra.run.dir={run_dir}",
        f"paths.log_dir={run_dir.parent / 'outputs'}",
        *base,
        f"+callbacks.probe.out_dir={run_dir / 'probe'}",
        *overrides,
    ]


def run_nodes(commands: list[list[str]], envs: list[dict[str, str]], cwd: Path) -> None:
    """Start one process per node, as two machines would, and wait for both (a failed one stops the other)."""
    nodes = [
        subprocess.Popen(
            command,
            cwd=cwd,
            env={**os.environ, **ENV, **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for command, env in zip(commands, envs)
    ]
    try:
        outputs = [node.communicate(timeout=300)[0] for node in nodes]
    finally:
        for node in nodes:
            node.kill()
    for rank, (node, output) in enumerate(zip(nodes, outputs)):
        assert node.returncode == 0, f"node {rank}:\n{output[-3000:]}"


def probes(run_dir: Path, world_size: int) -> list[dict]:
    return [torch.load(run_dir / "probe" / f"rank{rank}.pt", weights_only=True) for rank in range(world_size)]


@pytest.fixture(scope="module")
def one_process(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("multinode") / "one"
    run_nodes([[sys.executable, *train_command(run_dir, [])]], [{}], run_dir.parent)
    return run_dir


def torchrun_nodes(run_dir: Path) -> None:
    endpoint = f"127.0.0.1:{free_port()}"
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes",
        "2",
        "--nproc-per-node",
        "1",
        "--rdzv-backend",
        "c10d",
        "--rdzv-endpoint",
        endpoint,
        *train_command(run_dir, TWO_NODES),
    ]
    run_nodes([command, command], [{}, {}], run_dir.parent)


def lightning_nodes(run_dir: Path) -> None:
    command = [sys.executable, *train_command(run_dir, TWO_NODES)]
    master = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}
    run_nodes([command, command], [{**master, "NODE_RANK": "0"}, {**master, "NODE_RANK": "1"}], run_dir.parent)


@pytest.mark.slow
@pytest.mark.parametrize(
    "launch, environment", [(torchrun_nodes, "TorchElasticEnvironment"), (lightning_nodes, "LightningEnvironment")]
)
def test_two_nodes_on_loopback_compute_what_one_process_computes(one_process, tmp_path, launch, environment):
    run_dir = tmp_path / "two"
    launch(run_dir)
    (alone,), ranks = probes(one_process, 1), probes(run_dir, 2)
    assert [rank["environment"] for rank in ranks] == [environment] * 2 and ranks[0]["world_size"] == 2
    for epoch, seen in alone["seeds"].items():
        shares = [rank["seeds"][epoch] for rank in ranks]
        assert not set(shares[0]) & set(shares[1])  # disjoint halves of the epoch...
        for step in range(len(seen) // 64):  # ...and each global batch is that of the single process
            together = shares[0][32 * step : 32 * (step + 1)] + shares[1][32 * step : 32 * (step + 1)]
            assert sorted(together) == sorted(seen[64 * step : 64 * (step + 1)])
    first, second = (rank["state"] for rank in ranks)
    assert all(torch.equal(first[key], second[key]) for key in first)  # DDP keeps the replicas identical
    # Float tolerance only: gradients averaged over two processes are summed in another order. (With Lightning's
    # reshuffling sampler in place of the project's, the weights were 1e-3 apart.)
    for key, value in alone["state"].items():
        torch.testing.assert_close(first[key], value, rtol=0, atol=1e-4, msg=key)
    results = json.loads((run_dir / "results.json").read_text())
    expected = json.loads((one_process / "results.json").read_text())
    assert results["effective_batch_size"] == expected["effective_batch_size"] == 64
    assert results["optimizer_steps"] == expected["optimizer_steps"] == 8
    assert results["peak_lr"] == expected["peak_lr"]
    # kNN features computed by both processes and gathered in order: the one-process scores exactly.
    for key in ("knn_top1_pretrained", "knn_top1_random_init", "knn_bank_size", "knn_num_queries"):
        assert results[key] == expected[key], key


@pytest.mark.slow
def test_a_streamed_epoch_is_dealt_out_to_the_processes_once(tmp_path):
    """litdata shards (24 images) read by 2 processes: every epoch, each sample reaches exactly one process (the
    seeds are distinct per sample, so 12 + 12 distinct seeds are all 24 samples)."""
    make_fashion_mnist(tmp_path / "fmnist")
    assert (
        run_convert("data=fashion_mnist", tmp_path / "shards", f"data.root={tmp_path / 'fmnist'}", "data.val_size=0")
        == 0
    )
    # The shards hold the whole split: no train_samples; 24 images at a global batch of 8.
    base = [o for o in RUN if not o.startswith(("data.train_samples", "schedule.global_batch_size"))]
    run_dir = tmp_path / "stream"
    stream = [
        "data=fashion_mnist_stream",
        f"data.input_dir={tmp_path / 'shards'}",
        "schedule.global_batch_size=8",
        "trainer=ddp",
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        "trainer.precision=32-true",
    ]
    run_nodes([[sys.executable, *train_command(run_dir, stream, base)]], [{}], tmp_path)
    ranks = probes(run_dir, 2)
    for epoch in (0, 1):
        shares = [rank["seeds"][epoch] for rank in ranks]
        assert len(set(shares[0])) == len(set(shares[1])) == 12 and not set(shares[0]) & set(shares[1])
    # Evaluation reads whole splits on every process (litdata's len() is a process's share of a stream).
    results = json.loads((run_dir / "results.json").read_text())
    assert (results["knn_bank_size"], results["knn_num_queries"]) == (24, 10)


def test_a_global_batch_is_split_over_processes_and_accumulation(tmp_path):
    cfg = compose_config(
        ["schedule.global_batch_size=64", "schedule.accumulate_grad_batches=2", *TWO_NODES], output_dir=tmp_path / "run"
    )
    run = build_training_run(cfg, lambda: instantiate_node(cfg.model))
    assert run.trainer.world_size == 2 and run.datamodule.batch_size == 64 // (2 * 2)
    cfg = compose_config(["schedule.batch_size=24"], output_dir=tmp_path / "run")  # null: the per-process batch
    assert build_training_run(cfg, lambda: instantiate_node(cfg.model)).datamodule.batch_size == 24
