"""Fine-tuning: layer-decayed lrs through the schedule, mixup/cutmix losses, learning on a toy task."""

import lightning as L
import pytest
import torch
from test_linprobe_module import TwoClassData, encoder, held_out_top1

from mae.models import MaskedAutoencoderViT
from mae.models.classifier import vit_classifier_from_mae
from mae.training.finetune_module import FinetuneModule


def classifier():
    return vit_classifier_from_mae(encoder(), num_classes=2, global_pool="avg")


def test_every_group_follows_the_schedule_times_its_layer_scale():
    module = FinetuneModule(
        classifier(), num_classes=2, lr=1e-3, warmup_epochs=1, epochs=2, layer_decay=0.5, mixup=0.0, cutmix=0.0
    )
    seen = []

    class Recorder(L.Callback):
        def on_before_optimizer_step(self, trainer, pl_module, optimizer):
            seen.append([group["lr"] for group in optimizer.param_groups])

    trainer = L.Trainer(
        max_epochs=2,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        callbacks=[Recorder()],
    )
    trainer.fit(module, datamodule=TwoClassData())
    peak_step = 4  # 4 steps an epoch, 1 warmup epoch: step 4 runs at the peak
    depth = 1
    scales = sorted({round(lr / 1e-3, 6) for lr in seen[peak_step]})
    assert scales == [0.5 ** (depth + 1 - layer) for layer in range(depth + 2)]
    assert seen[0] == [0.0] * len(seen[0])


def reference_scale_and_weight_decay(name: str, ndim: int, depth: int, layer_decay: float, weight_decay: float):
    """The reference's ``param_groups_lrd``, written out: (lr scale, weight decay) of one parameter."""
    num_layers = depth + 1
    if name in ("cls_token", "pos_embed") or name.startswith("patch_embed"):
        layer = 0
    elif name.startswith("blocks"):
        layer = int(name.split(".")[1]) + 1
    else:
        layer = num_layers
    no_decay = ndim == 1 or name in ("pos_embed", "cls_token", "dist_token")
    return layer_decay ** (num_layers - layer), 0.0 if no_decay else weight_decay


@pytest.mark.parametrize("global_pool", ["avg", "token"])
def test_vit_b_param_groups_equal_the_reference_for_every_parameter(global_pool):
    # ViT-B/16's parameter names (depth 12, width 768) on the meta device; only img_size differs, which names
    # do not show.
    with torch.device("meta"):
        mae = MaskedAutoencoderViT(
            img_size=32,
            patch_size=16,
            embed_dim=768,
            depth=12,
            num_heads=12,
            decoder_embed_dim=8,
            decoder_depth=1,
            decoder_num_heads=1,
        )
        model = vit_classifier_from_mae(mae, num_classes=10, global_pool=global_pool)
    module = FinetuneModule(model, num_classes=10, lr=1e-3, weight_decay=0.05, layer_decay=0.65, fused=False)
    optimizer = module.configure_optimizers()["optimizer"]
    groups_of = {}
    for group in optimizer.param_groups:
        for param in group["params"]:
            groups_of.setdefault(id(param), []).append(group)
    names = [name for name, _ in model.named_parameters()]
    final_norm = "norm.weight" if global_pool == "token" else "fc_norm.weight"
    assert len(names) == 152 and {"cls_token", "blocks.11.mlp.fc2.weight", final_norm, "head.weight"} <= set(names)
    for name, param in model.named_parameters():
        assert len(groups_of.pop(id(param), [])) == 1, name
    assert not groups_of  # nothing else is optimised
    for group in optimizer.param_groups:
        for param in group["params"]:
            name = next(n for n, p in model.named_parameters() if p is param)
            scale, weight_decay = reference_scale_and_weight_decay(name, param.ndim, 12, 0.65, 0.05)
            # The scheduler holds each group's peak lr in initial_lr (its lr is the warmup's 0 at step 0).
            assert group["initial_lr"] == pytest.approx(1e-3 * scale, rel=1e-12), name
            assert group["weight_decay"] == weight_decay, name
    if global_pool == "token":  # the gap timm's grouping leaves: the final norm at 1, not block 12's 0.65
        group = next(g for g in optimizer.param_groups if any(p is model.norm.weight for p in g["params"]))
        assert group["initial_lr"] == pytest.approx(1e-3)


def test_mixup_and_cutmix_train_with_soft_targets_and_learn():
    torch.manual_seed(0)
    module = FinetuneModule(classifier(), num_classes=2, lr=1e-3, warmup_epochs=1, epochs=15)
    assert module.mixup is not None and module.mixup.mixup_alpha == 0.8 and module.mixup.cutmix_alpha == 1.0
    untrained = held_out_top1(module)
    block_weight = module.model.blocks[0].attn.qkv.weight.detach().clone()
    trainer = L.Trainer(
        max_epochs=15, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False
    )
    trainer.fit(module, datamodule=TwoClassData())
    # Held-out images, against the same classifier before training (a head initialised at std 2e-5: chance).
    assert trainer.callback_metrics["val/top1"].item() > 0.9 > untrained + 0.2
    assert not torch.equal(module.model.blocks[0].attn.qkv.weight, block_weight)  # the encoder is trained too


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(layer_decay=0.0), r"layer_decay=0.0 must be in \(0, 1\]"),
        (dict(label_smoothing=1.0), r"label_smoothing=1.0 must be in"),
    ],
)
def test_invalid_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        FinetuneModule(classifier(), num_classes=2, **kwargs)
