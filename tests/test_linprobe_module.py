"""The linear probe trains only its head, with the reference's LARS rules."""

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from mae.models import MaskedAutoencoderViT
from mae.runs.torch_state import eval_mode
from mae.training.linprobe_module import LinearProbeModule, linear_probe_head
from mae.training.optim import LARS


def bright_or_dark(n: int, seed: int) -> TensorDataset:
    """Class 1 bright, class 0 dark, with pixel noise drawn from ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 2
    imgs = torch.randn(n, 1, 8, 8, generator=generator) * 0.3 + (labels.float() * 2 - 1).view(-1, 1, 1, 1)
    return TensorDataset(imgs, labels)


class TwoClassData(L.LightningDataModule):
    """Bright versus dark images: a linear probe on any encoder separates them. Validation is held out (other
    images, other noise), so a score on it is not a score on the batches trained on."""

    def __init__(self, batch_size: int = 16):
        super().__init__()
        self.batch_size = batch_size
        self.dataset, self.held_out = bright_or_dark(64, seed=0), bright_or_dark(64, seed=1)

    def train_dataloader(self):
        return DataLoader(self.dataset, batch_size=self.batch_size, shuffle=True, drop_last=True)

    def val_dataloader(self):
        return DataLoader(self.held_out, batch_size=self.batch_size)


def held_out_top1(module: L.LightningModule) -> float:
    """Top-1 of ``module`` on :class:`TwoClassData`'s held-out images, in eval mode."""
    imgs, labels = TwoClassData().held_out.tensors
    with eval_mode(module), torch.no_grad():
        return (module(imgs).argmax(1) == labels).float().mean().item()


def encoder() -> MaskedAutoencoderViT:
    torch.manual_seed(0)
    return MaskedAutoencoderViT(
        img_size=8,
        patch_size=4,
        in_chans=1,
        embed_dim=16,
        depth=1,
        num_heads=2,
        decoder_embed_dim=8,
        decoder_depth=1,
        decoder_num_heads=2,
    )


def test_head_is_batchnorm_without_affine_and_small_linear():
    head = linear_probe_head(32, 10)
    assert isinstance(head[0], torch.nn.BatchNorm1d) and not head[0].affine and head[0].eps == 1e-6
    assert 0.005 < head[1].weight.std().item() < 0.015 and torch.count_nonzero(head[1].bias) == 0


def test_probe_optimises_the_head_with_the_reference_lars():
    # The reference's LARS (tested in test_optim) adapts and decays only the Linear's weight, by its ndim.
    module = LinearProbeModule(
        encoder(),
        num_classes=3,
        lr=0.5,
        weight_decay=0.1,
        momentum=0.8,
        trust_coefficient=0.002,
        epochs=1,
        warmup_epochs=0,
    )
    optimizer = module.configure_optimizers()["optimizer"]
    assert isinstance(optimizer, LARS) and len(optimizer.param_groups) == 1
    (group,) = optimizer.param_groups
    assert [p is q for p, q in zip(group["params"], module.head.parameters(), strict=True)] == [True, True]
    assert (group["initial_lr"], group["weight_decay"], group["momentum"], group["trust_coefficient"]) == (
        0.5,
        0.1,
        0.8,
        0.002,
    )


def test_probe_trains_only_the_head_and_learns():
    # LARS steps are trust (0.001) x lr relative to the weight norm: the reference lr 6.4 is 0.6% a step.
    module = LinearProbeModule(encoder(), num_classes=2, lr=5.0, warmup_epochs=1, epochs=30)
    untrained = held_out_top1(module)
    before = {k: v.clone() for k, v in module.encoder.state_dict().items()}
    head_before = module.head[1].weight.detach().clone()
    trainer = L.Trainer(
        max_epochs=30, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False
    )
    trainer.fit(module, datamodule=TwoClassData())
    assert all(torch.equal(before[k], v) for k, v in module.encoder.state_dict().items())
    assert not torch.equal(module.head[1].weight, head_before)
    assert all(not p.requires_grad for p in module.encoder.parameters())
    # Scored on held-out images, against the same probe before training (a random direction already separates
    # bright from dark fairly well here; training must fix what it gets wrong).
    trained = trainer.callback_metrics["val/top1"].item()
    assert trained > 0.9 and (1 - trained) < 0.5 * (1 - untrained), (trained, untrained)
    assert held_out_top1(module) == pytest.approx(trainer.callback_metrics["val/top1"].item())
    optimizer = trainer.optimizers[0]
    assert sum(len(group["params"]) for group in optimizer.param_groups) == 2  # the Linear's weight and bias


class KnownTokens(torch.nn.Module):
    """An encoder whose tokens are fixed: cls = 1s, patch tokens 2s and 4s (mean 3s)."""

    embed_dim = 4

    def forward_features(self, imgs):
        n = imgs.shape[0]
        return torch.cat([torch.ones(n, 1, 4), torch.full((n, 1, 4), 2.0), torch.full((n, 1, 4), 4.0)], dim=1)


def test_probe_pools_the_cls_token_or_the_mean_of_the_patch_tokens():
    for pool, expected in (("cls", 1.0), ("mean", 3.0)):
        module = LinearProbeModule(KnownTokens(), num_classes=2, lr=1.0, epochs=1, warmup_epochs=0, pool=pool)
        seen = []
        module.head.register_forward_pre_hook(lambda _, inputs, seen=seen: seen.append(inputs[0]))
        module(torch.zeros(2, 1, 8, 8))
        torch.testing.assert_close(seen[0], torch.full((2, 4), expected))


def test_probe_refuses_an_unknown_pool():
    with pytest.raises(ValueError, match="pool='avg'"):
        LinearProbeModule(KnownTokens(), num_classes=2, lr=1.0, epochs=1, warmup_epochs=0, pool="avg")
