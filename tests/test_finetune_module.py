"""Fine-tuning: layer-decayed lrs through the schedule, mixup/cutmix losses, learning on a toy task."""

import lightning as L
import pytest
import torch
from test_linprobe_module import TwoClassData, encoder, held_out_top1

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
