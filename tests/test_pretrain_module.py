"""The LightningModule's recipe through a real Trainer on a tiny synthetic dataset."""

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from mae.models import MaskedAutoencoderViT
from mae.training import MAEPretrainModule
from mae.training.optim import warmup_cosine_lr


class SyntheticData(L.LightningDataModule):
    def __init__(self, batch_size: int, samples: int = 64):
        super().__init__()
        self.batch_size = batch_size
        generator = torch.Generator().manual_seed(0)
        self.dataset = TensorDataset(torch.randn(samples, 1, 8, 8, generator=generator), torch.zeros(samples))

    def train_dataloader(self):
        return DataLoader(self.dataset, batch_size=self.batch_size, shuffle=False, drop_last=True)


class LrRecorder(L.Callback):
    def __init__(self):
        self.lrs = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.lrs.append([group["lr"] for group in optimizer.param_groups])


def tiny_model() -> MaskedAutoencoderViT:
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


def fit(module, batch_size=8, accumulate=1, epochs=3, **trainer_kwargs):
    recorder = LrRecorder()
    trainer = L.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        accumulate_grad_batches=accumulate,
        callbacks=[recorder],
        **trainer_kwargs,
    )
    trainer.fit(module, datamodule=SyntheticData(batch_size))
    return trainer, recorder.lrs


@pytest.mark.parametrize("accumulate", [1, 2])
def test_per_step_warmup_cosine_with_scaled_lr(accumulate):
    module = MAEPretrainModule(tiny_model(), blr=0.1, min_lr=0.001, warmup_epochs=1, epochs=3)
    trainer, lrs = fit(module, batch_size=8, accumulate=accumulate)
    peak = 0.1 * 8 * accumulate / 256
    steps_per_epoch = 8 // accumulate
    assert module.peak_lr == pytest.approx(peak)
    assert len(lrs) == 3 * steps_per_epoch == trainer.global_step
    expected = [warmup_cosine_lr(k / steps_per_epoch, peak, 0.001, 1, 3) for k in range(len(lrs))]
    assert [group_lrs[0] for group_lrs in lrs] == pytest.approx(expected)
    assert lrs[0][0] == 0.0  # the reference's first step runs at lr 0
    assert all(len(set(group_lrs)) == 1 for group_lrs in lrs)  # both weight-decay groups share the lr


def test_schedule_follows_configured_epochs_not_trainer_stop():
    module = MAEPretrainModule(tiny_model(), lr=0.01, warmup_epochs=1, epochs=4)
    _, lrs = fit(module, epochs=2)
    steps_per_epoch = 8
    expected = [warmup_cosine_lr(k / steps_per_epoch, 0.01, 0.0, 1, 4) for k in range(16)]
    assert [group_lrs[0] for group_lrs in lrs] == pytest.approx(expected)


def test_adamw_settings_and_weight_decay_groups():
    module = MAEPretrainModule(tiny_model(), lr=0.01, weight_decay=0.05, warmup_epochs=0, epochs=1)
    trainer, _ = fit(module, epochs=1)
    optimizer = trainer.optimizers[0]
    assert isinstance(optimizer, torch.optim.AdamW)
    assert optimizer.defaults["betas"] == (0.9, 0.95)
    assert sorted(group["weight_decay"] for group in optimizer.param_groups) == [0.0, 0.05]
    assert optimizer.defaults["fused"] is True


def test_fused_adamw_trains_like_the_reference_loop():
    """The fused kernel is a speed path only: the same update as the for-loop AdamW, up to float rounding.

    Except for the key biases: softmax ignores them, so their gradient is rounding noise (~1e-10) that Adam
    normalises into full-size steps of either sign, in the reference as here. They are left out."""

    def meaningful_weights(model: MaskedAutoencoderViT) -> torch.Tensor:
        kept = []
        for name, param in model.named_parameters():
            if name.endswith("attn.qkv.bias"):
                dim = param.shape[0] // 3
                param = torch.cat([param[:dim], param[2 * dim :]])  # query and value biases
            kept.append(param.detach().flatten())
        return torch.cat(kept)

    weights = {}
    for fused in (True, False):
        torch.manual_seed(0)
        module = MAEPretrainModule(tiny_model(), lr=0.01, warmup_epochs=0, epochs=1, fused=fused)
        fit(module, epochs=1, limit_train_batches=3)
        assert module.optimizers().optimizer.defaults["fused"] is fused
        weights[fused] = meaningful_weights(module.model)
    torch.testing.assert_close(weights[True], weights[False], rtol=1e-5, atol=1e-6)
    torch.manual_seed(0)
    assert (weights[True] - meaningful_weights(tiny_model())).abs().max() > 1e-3  # it did train


def test_training_lowers_loss_and_keeps_position_embeddings_fixed():
    torch.manual_seed(0)
    module = MAEPretrainModule(tiny_model(), lr=0.01, warmup_epochs=0, epochs=20)
    imgs = SyntheticData(8).dataset.tensors[0]
    noise = torch.rand(imgs.shape[0], 4)
    before = module.model(imgs, noise=noise).loss.item()
    pos_embed = module.model.pos_embed.detach().clone()
    fit(module, epochs=20)
    after = module.model(imgs, noise=noise).loss.item()
    assert after < 0.8 * before
    assert torch.equal(module.model.pos_embed, pos_embed)


def test_gradient_clipping_is_applied():
    module = MAEPretrainModule(tiny_model(), lr=0.01, warmup_epochs=0, epochs=1)
    norms = []

    class NormRecorder(L.Callback):
        def on_before_optimizer_step(self, trainer, pl_module, optimizer):
            grads = [p.grad for p in pl_module.parameters() if p.grad is not None]
            norms.append(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])).item())

    trainer = L.Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        gradient_clip_val=1e-3,
        callbacks=[NormRecorder()],
    )
    trainer.fit(module, datamodule=SyntheticData(8))
    # Lightning clips after on_before_optimizer_step, so check the clipped norm directly instead.
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    assert norms and max(norms) > 1e-3
    assert torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])).item() <= 1e-3 * 1.001


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(blr=-1.0), "blr=-1.0 must be non-negative"),
        (dict(lr=0.0), "lr=0.0 must be positive"),
        (dict(epochs=2, warmup_epochs=5), "epochs=2 must be at least 1 and not below warmup_epochs=5"),
    ],
)
def test_invalid_hyperparameters(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MAEPretrainModule(tiny_model(), **kwargs)


def test_bf16_mixed_precision_runs_the_model_in_bfloat16():
    module = MAEPretrainModule(tiny_model(), lr=0.01, warmup_epochs=0, epochs=1)
    dtypes = []
    module.model.decoder_pred.register_forward_hook(lambda mod, args, out: dtypes.append(out.dtype))
    trainer = L.Trainer(
        max_epochs=1,
        accelerator="cpu",
        precision="bf16-mixed",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        limit_train_batches=2,
    )
    trainer.fit(module, datamodule=SyntheticData(8))
    assert dtypes and set(dtypes) == {torch.bfloat16}
    assert module.model.pos_embed.dtype == torch.float32  # master weights stay fp32


@pytest.mark.slow
def test_compiled_model_matches_eager_and_keeps_the_key_layout():
    module = MAEPretrainModule(tiny_model(), lr=0.01, warmup_epochs=0, epochs=1, compile=True)
    trainer = L.Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        limit_train_batches=3,
    )
    trainer.fit(module, datamodule=SyntheticData(8))
    assert module.model._compiled_call_impl is not None  # the Trainer's configure_model compiled it in place
    eager = tiny_model()
    eager.load_state_dict(module.model.state_dict(), strict=True)  # no "_orig_mod." prefixes
    imgs, noise = torch.randn(4, 1, 8, 8), torch.rand(4, 4)
    with torch.no_grad():
        compiled_out, eager_out = module.model(imgs, noise=noise), eager(imgs, noise=noise)
    assert torch.equal(compiled_out.mask, eager_out.mask)
    assert torch.allclose(compiled_out.pred, eager_out.pred, atol=1e-5)
    assert compiled_out.loss.item() == pytest.approx(eager_out.loss.item(), rel=1e-5)


def test_a_samples_mask_comes_from_its_seed_whatever_batch_it_is_in():
    """The third item of a training batch, the samples' seeds, draws each sample's mask: the same sample is masked
    alike in a batch of 4 and in a batch of 2 (as on one process or split over two); without seeds the mask comes
    from the per-batch stream."""
    module = MAEPretrainModule(tiny_model(), epochs=1, warmup_epochs=0)
    imgs, seeds = torch.randn(4, 1, 8, 8), torch.tensor([5, 6, 7, 8])
    whole = module.training_noise((imgs, torch.zeros(4), seeds))
    half = module.training_noise((imgs[2:], torch.zeros(2), seeds[2:]))
    assert whole.shape == (4, module.model.num_patches) and torch.equal(half, whole[2:])
    masks = module.model(imgs, noise=whole).mask
    assert torch.equal(module.model(imgs[2:], noise=half).mask, masks[2:])
    assert not torch.equal(whole[0], whole[1])
    assert module.training_noise((imgs, torch.zeros(4))) is None
