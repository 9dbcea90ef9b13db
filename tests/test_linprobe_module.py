"""The linear probe trains only its head, with the reference's LARS rules."""

import lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset

from mae.models import MaskedAutoencoderViT
from mae.training.linprobe_module import LinearProbeModule, lars_param_groups, linear_probe_head


class TwoClassData(L.LightningDataModule):
    """Bright versus dark images: a linear probe on any encoder separates them."""

    def __init__(self, batch_size: int = 16):
        super().__init__()
        self.batch_size = batch_size
        generator = torch.Generator().manual_seed(0)
        labels = torch.arange(64) % 2
        imgs = torch.randn(64, 1, 8, 8, generator=generator) * 0.3 + (labels.float() * 2 - 1).view(-1, 1, 1, 1)
        self.dataset = TensorDataset(imgs, labels)

    def train_dataloader(self):
        return DataLoader(self.dataset, batch_size=self.batch_size, shuffle=True, drop_last=True)

    def val_dataloader(self):
        return DataLoader(self.dataset, batch_size=self.batch_size)


def encoder() -> MaskedAutoencoderViT:
    torch.manual_seed(0)
    return MaskedAutoencoderViT(img_size=8, patch_size=4, in_chans=1, embed_dim=16, depth=1, num_heads=2,
                                decoder_embed_dim=8, decoder_depth=1, decoder_num_heads=2)


def test_head_is_batchnorm_without_affine_and_small_linear():
    head = linear_probe_head(32, 10)
    assert isinstance(head[0], torch.nn.BatchNorm1d) and not head[0].affine and head[0].eps == 1e-6
    assert 0.005 < head[1].weight.std().item() < 0.015 and torch.count_nonzero(head[1].bias) == 0


def test_lars_adapts_and_decays_only_weights():
    groups = lars_param_groups(linear_probe_head(8, 3), weight_decay=0.1)
    weights, others = groups
    assert [p.ndim for p in weights["params"]] == [2] and weights["always_adapt"] and weights["weight_decay"] == 0.1
    assert [p.ndim for p in others["params"]] == [1] and not others["always_adapt"] and others["weight_decay"] == 0.0


def test_probe_trains_only_the_head_and_learns():
    # LARS steps are trust (0.001) x lr relative to the weight norm: the reference lr 6.4 is 0.6% a step.
    module = LinearProbeModule(encoder(), num_classes=2, lr=5.0, warmup_epochs=1, epochs=30)
    before = {k: v.clone() for k, v in module.encoder.state_dict().items()}
    head_before = module.head[1].weight.detach().clone()
    trainer = L.Trainer(max_epochs=30, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False)
    trainer.fit(module, datamodule=TwoClassData())
    assert all(torch.equal(before[k], v) for k, v in module.encoder.state_dict().items())
    assert not torch.equal(module.head[1].weight, head_before)
    assert all(not p.requires_grad for p in module.encoder.parameters())
    assert trainer.callback_metrics["val/top1"].item() > 0.9
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
        module.head.register_forward_pre_hook(lambda _, inputs: seen.append(inputs[0]))
        module(torch.zeros(2, 1, 8, 8))
        torch.testing.assert_close(seen[0], torch.full((2, 4), expected))


def test_probe_refuses_an_unknown_pool():
    import pytest

    with pytest.raises(ValueError, match="pool='avg'"):
        LinearProbeModule(KnownTokens(), num_classes=2, lr=1.0, epochs=1, warmup_epochs=0, pool="avg")
