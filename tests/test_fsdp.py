"""FSDP2 (torch's fully_shard through Lightning's ModelParallelStrategy, `trainer=fsdp2`): the config, the module's
sharding switch, equal kNN work on every process, and a 2-process CPU pre-training checked against DDP."""

import json
import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import compose_config
from hydra.utils import instantiate
from lightning.pytorch.strategies import ModelParallelStrategy
from test_train import SMALL, run_train
from torch.utils.data import DataLoader, TensorDataset

from mae.evaluation.sharded import gather_in_order, rank_share
from mae.models import MaskedAutoencoderViT
from mae.training import MAEPretrainModule

HERE = Path(__file__).resolve().parent
CPU = ["trainer.accelerator=cpu", "trainer.devices=2", "trainer.precision=32-true"]
# Bank and queries split unevenly over 2 processes: 128 + 127 bank items make 4 batches of 32 on each; 33 + 32
# queries make 2 batches on one process and 1 on the other, unless the shorter share is padded with a batch.
RUN = [o for o in SMALL if not o.startswith("data.knn_")] + [
    "data.knn_train_samples=255",
    "data.knn_val_samples=65",
    "schedule.epochs=2",
    "schedule.warmup_epochs=1",
    # kNN after every epoch as well: training then goes on after an evaluation through the sharded model.
    "callbacks.knn_evaluation.every_n_epochs=1",
    "+callbacks.probe._target_=fsdp_probe.ShardRecorder",
]


def tiny_mae() -> MaskedAutoencoderViT:
    return MaskedAutoencoderViT(
        img_size=28,
        patch_size=7,
        in_chans=1,
        embed_dim=32,
        depth=2,
        num_heads=2,
        decoder_embed_dim=16,
        decoder_depth=1,
        decoder_num_heads=2,
    )


# -- fast ------------------------------------------------------------------------------------------------------------
def test_fsdp2_trainer_config_shards_over_every_device():
    cfg = compose_config(["trainer=fsdp2"])
    strategy = cfg.trainer.strategy
    assert strategy._target_ == "lightning.pytorch.strategies.ModelParallelStrategy"
    assert (cfg.trainer.accelerator, cfg.trainer.devices, cfg.trainer.precision) == ("gpu", 8, "bf16-mixed")
    assert (strategy.data_parallel_size, strategy.tensor_parallel_size) == (8, 1)
    assert strategy.save_distributed_checkpoint is False
    nodes = compose_config(["trainer=fsdp2", "trainer.num_nodes=4"]).trainer.strategy
    assert nodes.data_parallel_size == 32  # every process of every node
    cpu = instantiate(compose_config(["trainer=fsdp2", *CPU]).trainer.strategy)
    assert isinstance(cpu, ModelParallelStrategy)
    assert (cpu._data_parallel_size, cpu._tensor_parallel_size, cpu._save_distributed_checkpoint) == (2, 1, False)


def test_configure_model_leaves_the_model_alone_without_a_device_mesh():
    module = MAEPretrainModule(tiny_mae())
    before = {k: v.clone() for k, v in module.model.state_dict().items()}
    module.configure_model()
    assert type(module.model) is MaskedAutoencoderViT
    assert all(type(p) is torch.nn.Parameter for p in module.model.parameters())
    assert all(torch.equal(v, module.model.state_dict()[k]) for k, v in before.items())


def test_configure_model_refuses_tensor_parallelism():
    class Mesh:
        def __getitem__(self, name):
            return SimpleNamespace(size=lambda: {"data_parallel": 1, "tensor_parallel": 2}[name])

    module = MAEPretrainModule(tiny_mae())
    module._device_mesh = Mesh()
    with pytest.raises(ValueError, match="tensor_parallel_size=2: the MAE has no tensor parallelism"):
        module.configure_model()
    assert type(module.model) is MaskedAutoencoderViT


@pytest.mark.parametrize("world_size", [2, 3, 4])
@pytest.mark.parametrize("total", [1, 2, 7, 8, 9, 13, 16, 17])
@pytest.mark.parametrize("batch_size", [1, 2, 4])
def test_rank_shares_make_equal_batch_counts_and_gather_back_in_order(total, world_size, batch_size):
    loader = DataLoader(TensorDataset(torch.arange(total) * 10), batch_size=batch_size)
    shares = [[batch[0] for batch in rank_share(loader, rank, world_size)] for rank in range(world_size)]
    # A sharded model's forward needs every process: all make the same number of calls.
    assert len({len(batches) for batches in shares}) == 1
    for rank, batches in enumerate(shares):
        plain = torch.tensor(range(rank, total, world_size), dtype=torch.long) * 10
        # The plain share, batched as before (the same numbers on one process or in DDP), then any padding.
        plain_batches = [plain[start : start + batch_size] for start in range(0, len(plain), batch_size)]
        assert all(torch.equal(a, b) for a, b in zip(batches, plain_batches, strict=False))
        assert len(batches) - len(plain_batches) in (0, 1) and sum(map(len, batches)) - len(plain) in (0, 1)
    # What each process hands to all_gather (its features padded to the longest share), stacked as all_gather does.
    rows = -(-total // world_size)
    gathered = torch.zeros(world_size, rows, dtype=torch.long)
    for rank, batches in enumerate(shares):
        local = torch.cat(batches)
        assert len(local) <= rows
        gathered[rank, : len(local)] = local
    trainer = SimpleNamespace(world_size=world_size, strategy=SimpleNamespace(all_gather=lambda padded: gathered))
    assert torch.equal(gather_in_order(trainer, torch.cat(shares[0]), total), torch.arange(total) * 10)


# -- slow: train.py on 2 CPU processes -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def fsdp_and_ddp_runs(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("fsdp")
    runs = {}
    with pytest.MonkeyPatch.context() as patch:
        # The probe callback is imported from tests/ by the training processes.
        patch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")])))
        for name in ("fsdp2", "ddp"):
            result = run_train(
                tmp_path,
                [f"trainer={name}", *CPU, *RUN, f"+callbacks.probe.out_dir={tmp_path / name / 'probe'}"],
                name=name,
            )
            assert result.returncode == 0, result.stderr[-4000:]
            runs[name] = tmp_path / name
    return runs


def final_state(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]


@pytest.mark.slow
def test_fsdp2_shards_every_parameter_over_the_two_processes(fsdp_and_ddp_runs):
    probes = [torch.load(fsdp_and_ddp_runs["fsdp2"] / "probe" / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert all(p["strategy"] == "ModelParallelStrategy" and p["world_size"] == 2 for p in probes)
    for name, full in ((n, torch.Size(v["full_shape"])) for n, v in probes[0]["params"].items()):
        held = [p["params"][name] for p in probes]
        assert all(h["dtensor"] for h in held), name
        # Dim-0 shards: the two local pieces make up the full tensor, neither holds it all (unless it has one row).
        assert sum(h["local_shape"][0] for h in held) == full[0] and all(
            h["local_shape"][1:] == list(full[1:]) for h in held
        ), name
        if full[0] > 1:
            assert all(h["local_shape"][0] < full[0] for h in held), name
    qkv = [p["params"]["blocks.0.attn.qkv.weight"]["local_shape"] for p in probes]
    assert qkv == [[48, 32], [48, 32]]
    ddp = torch.load(fsdp_and_ddp_runs["ddp"] / "probe" / "rank0.pt", weights_only=True)
    assert not any(v["dtensor"] for v in ddp["params"].values())


@pytest.mark.slow
def test_fsdp2_checkpoint_holds_the_full_model(fsdp_and_ddp_runs):
    run_dir = fsdp_and_ddp_runs["fsdp2"]
    assert {p.name for p in (run_dir / "checkpoints").iterdir()} == {"last.ckpt", "epoch000.ckpt", "epoch001.ckpt"}
    state = final_state(run_dir)
    assert all(type(v) is torch.Tensor for v in state.values())
    assert state["model.blocks.0.attn.qkv.weight"].shape == (96, 32)
    model = tiny_mae()
    model.load_state_dict({k.removeprefix("model."): v for k, v in state.items()}, strict=True)
    assert (run_dir / "reconstruction.png").is_file()


@pytest.mark.slow
def test_fsdp2_trains_and_evaluates_what_ddp_does(fsdp_and_ddp_runs):
    fsdp, ddp = (final_state(fsdp_and_ddp_runs[name]) for name in ("fsdp2", "ddp"))
    assert fsdp.keys() == ddp.keys()
    for name in fsdp:
        # Only the order of the gradient sums differs (~1e-8 after 8 steps). The key bias differs more: its true
        # gradient is exactly zero (softmax ignores a shift common to all keys), so its gradients are rounding
        # noise, which Adam scales up to lr-sized steps.
        key_bias = name.endswith("attn.qkv.bias")
        torch.testing.assert_close(fsdp[name], ddp[name], rtol=0, atol=1e-4 if key_bias else 1e-6, msg=name)
    # The kNN random-init baseline: a fresh, unsharded model of the same architecture built from the seed on each
    # process, nothing taken from the trained one; FSDP2 and DDP runs build the same one.
    for rank in (0, 1):
        fsdp_baseline, ddp_baseline = (
            torch.load(fsdp_and_ddp_runs[name] / "probe" / f"baseline_rank{rank}.pt", weights_only=True)
            for name in ("fsdp2", "ddp")
        )
        assert fsdp_baseline["plain"] and fsdp_baseline["state"].keys() == ddp_baseline["state"].keys()
        for name, tensor in fsdp_baseline["state"].items():
            assert torch.equal(tensor, ddp_baseline["state"][name]), name
    results = {name: json.loads((fsdp_and_ddp_runs[name] / "results.json").read_text()) for name in ("fsdp2", "ddp")}
    for key in (
        "knn_top1_pretrained",
        "knn_top1_random_init",
        "knn_bank_size",
        "knn_num_queries",
        "optimizer_steps",
        "effective_batch_size",
    ):
        assert results["fsdp2"][key] == results["ddp"][key], key
    assert (results["fsdp2"]["knn_bank_size"], results["fsdp2"]["knn_num_queries"]) == (255, 65)
