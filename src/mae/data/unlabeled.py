"""Any folder of images, without labels, for MAE pre-training: ``data=unlabeled data.root=DIR``.

Every image file below ``root`` (recursively, see :mod:`mae.data.file_listing`) is a training image, except a
held-out set for the validation loss and the reconstruction grids: a seeded ``val_fraction`` of the files, chosen
by a hash of each path (adding files never moves another file across), or every image below ``val_dir``. Images of
any mode and size are decoded into ``in_chans`` channels (see :mod:`mae.data.decoding`) and go through the paper's
random resized crop. The lists are stored in the run directory (``file_list.json``): a resumed run trains on the
files its first attempt listed, whatever was added since; files that vanished since are counted in one line and
skipped.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from mae.data.base import ImageDataModule
from mae.data.errors import check_int
from mae.data.file_listing import IMAGE_EXTENSIONS, FileList, list_image_files, split_held_out

log = logging.getLogger(__name__)

FILE_LIST = "file_list.json"
"""The run directory's record of the files a run trains and validates on."""
NO_LABEL = -1
"""The label every unlabeled image carries, so that batches keep the labelled datasets' shape."""


class UnlabeledImages(Dataset):
    """``(image, NO_LABEL)`` for files below ``root``; a file in ``missing`` (vanished since the run's list was made)
    gives ``(None, NO_LABEL)``, which the served view replaces by the next image (as a skipped bad image)."""

    def __init__(self, root: str, files: Sequence[str], loader, missing: frozenset[str] = frozenset()) -> None:
        self.root, self.files, self.loader, self.missing = root, list(files), loader, missing

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[torch.Tensor | Image.Image | None, int]:
        path = os.path.join(self.root, self.files[index])
        return (None if path in self.missing else self.loader(path)), NO_LABEL


class UnlabeledImagesDataModule(ImageDataModule):
    """Pre-training on every image below a folder; no classes, so no kNN on it (see the kNN callback's ``data``).

    Args:
        root: the folder; every image file below it, at any depth, is listed.
        val_dir: a folder of held-out images (listed the same way; left out of ``root``'s list if inside it), or
            None to hold out ``val_fraction`` of ``root``'s files.
        val_fraction: the share of files held out when ``val_dir`` is None, chosen by a hash of each file's path
            seeded with ``split_seed``.
        stats_samples, stats_seed: ``mean: auto`` measures this many training images, sampled with this seed;
            the same sample is decoded first in any case, so unreadable files stop the run before it starts.
        decoder, on_bad_image, max_bad_fraction, eval_resize_ratio: as for the image-folder groups.
        The other settings: see :class:`~mae.data.image_folder.ImageFolderDataModule`.
    """

    has_labels = False
    measures_statistics = True
    num_classes = None

    def __init__(
        self,
        *,
        root: str,
        val_dir: str | None,
        val_fraction: float,
        split_seed: int,
        stats_samples: int,
        stats_seed: int,
        eval_resize_ratio: float,
        decoder: str,
        on_bad_image: str,
        max_bad_fraction: float,
        **settings: Any,
    ) -> None:
        super().__init__(**settings)
        self.read_image_files(decoder, eval_resize_ratio, on_bad_image, max_bad_fraction, stats_samples, stats_seed)
        # The decoding check samples these too, with or without mean: auto.
        self.stats_samples = check_int("stats_samples", stats_samples, 1)
        self.stats_seed = check_int("stats_seed", stats_seed, 0)
        self.root = Path(root)
        self.val_path = None if val_dir is None else Path(val_dir)
        for name, path in (("root", self.root), ("val_dir", self.val_path)):
            if path is not None and not path.is_dir():
                what = "a file" if path.is_file() else "missing"
                raise FileNotFoundError(f"data.{name}={path} is {what}: give a folder of images (any depth)")
        if self.val_path is None and not 0.0 < val_fraction < 1.0:
            raise ValueError(f"data.val_fraction={val_fraction} must be in (0, 1), or give data.val_dir")
        self.val_fraction, self.split_seed = float(val_fraction), split_seed
        self.file_list: FileList | None = None
        self.missing: frozenset[str] = frozenset()

    # -- before the run starts ------------------------------------------------------------------------------
    def list_files(self) -> FileList:
        """The training and held-out files as the folders hold them now; one line when either side is empty."""
        exclude = [] if self.val_path is None else [self.val_path]
        files = list_image_files(self.root, exclude=exclude)
        if not files:
            raise FileNotFoundError(
                f"data.root={self.root} holds no image files ({' '.join(IMAGE_EXTENSIONS)}) at any depth"
            )
        if self.val_path is None:
            train, val = split_held_out(files, self.val_fraction, self.split_seed)
            if not train or not val:
                side = "training" if not train else "validation"
                raise ValueError(
                    f"data.val_fraction={self.val_fraction} leaves no {side} image among the "
                    f"{len(files)} files of {self.root}; choose a fraction that leaves both, or give "
                    "data.val_dir"
                )
            return FileList(str(self.root), train, str(self.root), val)
        val = list_image_files(self.val_path)
        if not val:
            raise FileNotFoundError(f"data.val_dir={self.val_path} holds no image files at any depth")
        return FileList(str(self.root), files, str(self.val_path), val)

    def prepare_run(self, stored_normalization=None, stored_in: str = "", resumed_run_dir: Path | None = None) -> None:
        """List the files (or read the first attempt's list when resuming), check that they decode, and measure
        ``mean: auto``; every problem is one line, and nothing is written."""
        if self.file_list is None:
            stored = None if resumed_run_dir is None else resumed_run_dir / FILE_LIST
            if stored is not None and stored.is_file():
                listed = FileList.read(stored)
                self.file_list = FileList(str(self.root), listed.train, str(self.val_path or self.root), listed.val)
                self._note_vanished()
                log.info(
                    "resuming on the %d training and %d held-out files listed in %s",
                    len(listed.train),
                    len(listed.val),
                    stored,
                )
            else:
                if resumed_run_dir is not None:
                    log.warning("no %s in %s: listing %s anew", FILE_LIST, resumed_run_dir, self.root)
                self.file_list = self.list_files()
            self.image_sample()  # decoded once: the check here, the statistics of mean: auto below
            print(
                f"data=unlabeled: {len(self.file_list.train)} training and {len(self.file_list.val)} held-out "
                f"images below {self.root}" + (f" and {self.val_path}" if self.val_path else ""),
                flush=True,
            )
        super().prepare_run(stored_normalization, stored_in, resumed_run_dir)

    def _note_vanished(self) -> None:
        assert self.file_list is not None
        vanished = self.file_list.vanished()
        if len(vanished) >= len(self.file_list.train) + len(self.file_list.val):
            raise FileNotFoundError(
                f"none of the files this run listed when it started exists below {self.root} "
                f"any more (e.g. {vanished[0]}); resume with the folder it was trained on"
            )
        if vanished:
            log.warning(
                "%d of the files listed when this run started have vanished (e.g. %s); they are skipped",
                len(vanished),
                vanished[0],
            )
        self.missing = frozenset(vanished)

    def statistics_files(self) -> tuple[str, list[str]]:
        assert self.file_list is not None
        return self.file_list.train_root, self.file_list.train

    def write_run_files(self, run_dir: Path) -> None:
        if self.file_list is not None:
            self.file_list.write(run_dir / FILE_LIST)

    # -- serving ----------------------------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if self._splits is not None:
            return
        if self.file_list is None or self.mean is None:
            self.prepare_run()
        assert self.file_list is not None
        train = UnlabeledImages(self.file_list.train_root, self.file_list.train, self.image_loader, self.missing)
        val = UnlabeledImages(self.file_list.val_root, self.file_list.val, self.image_loader, self.missing)
        # The held-out files are the validation split and, without labels, all there is to test on.
        self.set_splits(train, val, *self.transforms(self.eval_resize_ratio), val=val)

    def knn_dataloaders(self, split: str = "val") -> tuple[DataLoader, DataLoader]:
        raise ValueError(
            f"data=unlabeled ({self.root}) has no labels for a kNN evaluation; set knn_data=<a labelled data group>"
        )
