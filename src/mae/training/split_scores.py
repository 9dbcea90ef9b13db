"""Scores a module gathers over a whole validation or test pass (mIoU, COCO AP) rather than per batch."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


class ScoresPerSplit:
    """Mixin for a LightningModule whose ``__init__`` calls :meth:`init_split_scores` with its metric (anything
    with ``update()``, ``compute()`` and ``reset()``): at the end of each pass it computes the split's metric,
    resets it, keeps the result in
    ``scores[split]`` (the latest pass's) and the optimizer step it was scored at in ``scored_at_step[split]`` (the
    sanity check's few batches are not kept there), and hands it to :meth:`log_scores`. Put it before the
    LightningModule base so that its pass-end hooks are the ones called."""

    scores: dict[str, Any]
    scored_at_step: dict[str, int]

    def init_split_scores(self, make_metric: Callable[[], Any]) -> None:
        """One ``make_metric()`` each for ``val_scores`` and ``test_scores``, and nothing scored yet (call it after
        the module's own ``super().__init__()``, since metrics are submodules)."""
        self.val_scores = make_metric()
        self.test_scores = make_metric()
        self.scores = {}  # of the latest validation / test pass
        self.scored_at_step = {}

    def log_scores(self, split: str, scores: Any) -> None:
        """Log what the progress bar and the loggers show of ``scores`` (``split``: ``val`` or ``test``)."""
        raise NotImplementedError

    def _finish_pass(self, split: str) -> None:
        metric = getattr(self, f"{split}_scores")
        scores = metric.compute()
        metric.reset()
        self.scores[split] = scores
        if not self.trainer.sanity_checking:
            self.scored_at_step[split] = self.trainer.global_step
        self.log_scores(split, scores)

    def on_validation_epoch_end(self) -> None:
        self._finish_pass("val")

    def on_test_epoch_end(self) -> None:
        self._finish_pass("test")
