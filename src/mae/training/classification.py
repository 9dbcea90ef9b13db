"""What the downstream modules share: top-1/top-5 metrics, the validation step, the number of images seen and
``compile``."""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn
from torchmetrics.aggregation import SumMetric
from torchmetrics.classification import MulticlassAccuracy

from mae.training.scheduled import ScheduledModule


class ClassificationModule(ScheduledModule):
    """A scheduled module whose ``forward(imgs)`` returns class logits; validated with loss, top-1 and top-5.

    With a ``compile`` hyperparameter set, :meth:`configure_model` compiles :meth:`modules_to_compile` in place
    (``nn.Module.compile()``), as pre-training does: parameter names, and so checkpoints, stay as they are.
    """

    def modules_to_compile(self) -> list[nn.Module]:
        """What ``compile=true`` compiles in place (modules called through ``__call__`` in the forward pass)."""
        return []

    def configure_model(self) -> None:
        # Lightning may call this hook more than once (fit, then validate), hence the flag.
        if self.hparams.get("compile", False) and not getattr(self, "_compiled", False):
            for module in self.modules_to_compile():
                module.compile()
            self._compiled = True

    def add_metrics(self, num_classes: int) -> None:
        self.top1 = MulticlassAccuracy(num_classes, top_k=1, average="micro")
        self.top5 = MulticlassAccuracy(num_classes, top_k=min(5, num_classes), average="micro")
        self.images_seen = SumMetric()  # what an evaluation covered, summed over devices

    def validation_step(self, batch, batch_idx: int) -> None:
        imgs, labels = batch
        logits = self(imgs)
        self.top1(logits, labels)
        self.top5(logits, labels)
        self.images_seen(labels.numel())
        self.log("val/loss", F.cross_entropy(logits, labels), on_epoch=True, batch_size=imgs.shape[0], sync_dist=True)
        self.log("val/top1", self.top1, on_epoch=True, prog_bar=True)
        self.log("val/top5", self.top5, on_epoch=True)
        self.log("val/num_images", self.images_seen, on_epoch=True)
