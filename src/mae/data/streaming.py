"""Training from litdata shards (``python -m mae.data.shards``) on local disk or object storage.

The training split is a litdata ``StreamingDataset``: chunks shuffled per epoch with the run's seed and dealt out
to nodes x processes x workers, so that an epoch serves every sample once (litdata's ``drop_last`` evens the
shares out), and its loader's state goes into Lightning checkpoints, so that a resumed run serves exactly the
samples the uninterrupted one would have served next. Each image is decoded as the folder datasets decode
files, and augmented with a generator seeded by (seed, epoch, sample index): the crop of a sample does not depend
on which process or worker happened to serve it. Shards of a folder without labels (``data=unlabeled``) stream
through :class:`UnlabeledShardsDataModule` (``data=unlabeled_stream``), their items ``(image, -1[, seed])``.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from mae.data.base import ImageDataModule
from mae.data.decoding import ImageLoader
from mae.data.loaders import Splits, sample_seed
from mae.data.shards.info import (
    INFO_FILE,
    SPLITS,
    ShardInfo,
    check_item_format,
    is_remote,
    parse_shard_info,
    read_shard_info,
)
from mae.data.transforms import Transformed
from mae.runs.optional import require

STREAMING = "streaming shards (data=*_stream)"
_litdata = require("litdata", "streaming", STREAMING)
StreamingDataLoader, StreamingDataset = _litdata.StreamingDataLoader, _litdata.StreamingDataset


def read_info(input_dir: str) -> ShardInfo:
    """The shard directory's ``mae_shards.json``, fetched first when ``input_dir`` is remote, after checking that
    its splits store only safe item formats (:func:`~mae.data.shards.info.check_item_format`)."""
    if not is_remote(input_dir):
        return read_shard_info(input_dir)
    get_downloader = require("litdata.streaming.downloader", "streaming", STREAMING).get_downloader

    root = input_dir.rstrip("/")
    make = "write the shards with `python -m mae.data.shards <source> <dir>` and upload the directory"
    with tempfile.TemporaryDirectory(prefix="mae_shards_") as folder:  # read at once: no copy to keep
        downloader = get_downloader(input_dir, folder, [])

        def fetch(name: str) -> Path:
            local = Path(folder) / name.replace("/", "_")
            try:
                downloader.download_file(f"{root}/{name}", str(local))
            except Exception as error:  # each storage backend raises its own kinds
                raise FileNotFoundError(
                    f"cannot fetch {root}/{name} ({type(error).__name__}: {error}); {make}"
                ) from error
            return local

        for split in SPLITS:
            check_item_format(fetch(f"{split}/index.json"), f"{root}/{split}/index.json")
        return parse_shard_info(fetch(INFO_FILE), f"{root}/{INFO_FILE}", make)


class ShardImages(Dataset):
    """Random access to one split's ``num_samples`` shards: ``(decoded image, label)`` by position (evaluation, kNN
    bank). Every process sees the whole split: litdata's ``len()`` counts only this process's share under
    ``torch.distributed``, while its positions are global."""

    def __init__(self, split_dir: str, num_samples: int, loader: ImageLoader, cache_dir: str | None) -> None:
        self.split_dir, self.num_samples, self.loader = split_dir, num_samples, loader
        self.shards = StreamingDataset(split_dir, cache_dir=cache_dir, shuffle=False)

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: int) -> tuple[Any, int]:
        item = self.shards[index]
        return self.loader.decode_bytes(item["image"], f"{self.split_dir} sample {item['index']}"), item["label"]


class AugmentedShards(StreamingDataset):
    """The training stream: litdata's shuffled ``StreamingDataset`` whose items are ``(augmented image, label,
    sample seed)``, the seed a function of (seed, epoch, the sample's index in its split) that drives the
    augmentation (and the sample's mask, as for the other data modules)."""

    def __init__(self, split_dir: str, *, loader: ImageLoader, augment, seed: int, cache_dir: str | None) -> None:
        super().__init__(split_dir, cache_dir=cache_dir, shuffle=True, drop_last=True, seed=seed)
        self.split_dir, self.loader, self.augment = split_dir, loader, augment

    def __getitem__(self, index):
        item = super().__getitem__(index)
        if not isinstance(item, dict):  # a slice: litdata's own use
            return item
        image = self.loader.decode_bytes(item["image"], f"{self.split_dir} sample {item['index']}")
        seed = sample_seed(self.seed, self.current_epoch, item["index"])
        return self.augment(image, torch.Generator().manual_seed(seed)), item["label"], seed


class ShardsDataModule(ImageDataModule):
    """Any dataset converted by ``python -m mae.data.shards``, streamed from ``input_dir`` (a local directory or
    ``s3://bucket/prefix``, ``gs://``, ...) holding ``train/``, ``val/`` and ``mae_shards.json``.

    Args:
        input_dir: the converter's output directory, local or remote.
        cache_dir: where litdata keeps downloaded chunks of a remote ``input_dir`` (None: its default).
        eval_resize_ratio, decoder: as for the image-folder datasets (the same decoding and transforms).
        settings: those of every image data module (``img_size``, ``in_chans``, loaders, augmentation);
            ``train_samples`` must be None (an epoch is the whole split: convert a subset instead). ``mean: auto``
            takes the numbers of the file a run starts from when it stores them (resume, ``pretrained=``), else
            those ``mae_shards.json`` stores (the source's, measured at conversion for ``data=unlabeled``).
    """

    measures_statistics = True  # mean: auto reads the converter's numbers (prepare_run)

    def __init__(
        self, *, input_dir: str, cache_dir: str | None, eval_resize_ratio: float, decoder: str, **settings: Any
    ) -> None:
        super().__init__(**settings)
        if self.loaders.persistent_workers:
            raise ValueError(
                "persistent_workers=True: litdata's workers learn the epoch (its shuffle and the "
                "augmentation seeds) when they start; set data.persistent_workers=false"
            )
        if self.val_size:
            raise ValueError(
                f"val_size={self.val_size}: a streamed epoch is the whole training split; set data.val_size=0 "
                "(the shards of a data group with val_size hold its training images without the held-out ones)"
            )
        if self.train_samples is not None:
            raise ValueError(
                f"train_samples={self.train_samples}: a streamed epoch is the whole training split; "
                "set data.train_samples=null, or write shards of a subset"
            )
        # stats_samples: nothing is sampled here, mean: auto reads mae_shards.json's numbers.
        self.read_image_files(decoder, eval_resize_ratio, on_bad_image="error", max_bad_fraction=0.0, stats_samples=1)
        self.input_dir, self.cache_dir = str(input_dir).rstrip("/"), cache_dir
        self.info = read_info(self.input_dir)
        self._check_format()
        self.classes = list(self.info.classes)
        self.num_classes = len(self.classes)

    def _check_format(self) -> None:
        info, where = self.info, f"the shards in {self.input_dir}"
        if info.labelled != self.has_labels:
            raise ValueError(
                f"{where} hold images without labels; stream them with data=unlabeled_stream "
                f"data.input_dir={self.input_dir}"
                if self.has_labels
                else f"{where} hold labelled images ({len(info.classes)} classes); stream them with their labelled "
                "group (data=imagenet_stream, data=fashion_mnist_stream, ...), or convert a folder without labels "
                "with `python -m mae.data.shards data=unlabeled <dir> data.root=<folder>`"
            )
        if self.mean is None and info.mean is None:
            raise ValueError(
                f"data.mean=auto: {self.input_dir}/{INFO_FILE} stores no mean and std (written before "
                "the converter stored them); give data.mean=[...] and data.std=[...]"
            )
        if info.channels != self.in_chans:
            raise ValueError(
                f"{where} hold {info.channels}-channel images, but data.in_chans={self.in_chans}; set "
                f"data.in_chans={info.channels} or convert with a data group of {self.in_chans} channels"
            )
        if info.image_size is not None and info.image_size != self.img_size:
            raise ValueError(
                f"{where} hold {info.image_size} px images, but data.img_size={self.img_size}; set "
                f"data.img_size={info.image_size} (the images were stored at their own size)"
            )

    def prepare_run(self, stored_normalization=None, stored_in: str = "", resumed_run_dir: Path | None = None) -> None:
        """``mean: auto``: the numbers stored in the file the run starts from, else those of ``mae_shards.json``
        (checked against ``in_chans`` and printed, as the measuring modules do)."""
        if self.mean is None and stored_normalization is None:
            stored_normalization = (self.info.mean, self.info.std)
            stored_in = f"{self.input_dir}/{INFO_FILE} (the converter's numbers)"
        super().prepare_run(stored_normalization, stored_in, resumed_run_dir)

    def split_dir(self, split: str) -> str:
        return f"{self.input_dir}/{split}"

    def shard_images(self, split: str) -> ShardImages:
        return ShardImages(self.split_dir(split), self.info.num_samples[split], self.image_loader, self.cache_dir)

    def setup(self, stage: str | None = None) -> None:
        if self._splits is not None:
            return
        augment, evaluate = self.transforms(self.eval_resize_ratio)
        train = AugmentedShards(
            self.split_dir("train"),
            loader=self.image_loader,
            augment=augment,
            seed=self.loaders.seed,
            cache_dir=self.cache_dir,
        )
        test = Transformed(self.shard_images("val"), evaluate)
        self._splits = Splits(
            train=train,
            train_eval=Transformed(self.shard_images("train"), evaluate),
            val=test,
            test=test,
            val_is_test=True,
        )

    def train_dataloader(self) -> StreamingDataLoader:
        """litdata's loader: stateful (Lightning checkpoints it), full batches only."""
        settings = self.loaders
        return StreamingDataLoader(
            self.splits.train,
            batch_size=settings.batch_size,
            num_workers=settings.num_workers,
            pin_memory=settings.pin_memory,
            drop_last=True,
        )


class UnlabeledShardsDataModule(ShardsDataModule):
    """Shards of a folder without labels (``python -m mae.data.shards data=unlabeled OUT data.root=DIR``), for
    pre-training as ``data=unlabeled`` does: items ``(image, -1[, seed])``, the held-out files as the validation
    split, no classes and so no kNN on it (see the kNN callback's ``data``). The settings: those of
    :class:`ShardsDataModule`; ``mean: auto`` reads the numbers ``data=unlabeled`` measured at conversion."""

    has_labels = False

    def __init__(self, **settings: Any) -> None:
        super().__init__(**settings)
        self.num_classes = None

    def knn_dataloaders(self, split: str = "val") -> tuple[DataLoader, DataLoader]:
        raise ValueError(
            f"data=unlabeled_stream ({self.input_dir}) has no labels for a kNN evaluation; set "
            "knn_data=<a labelled data group>"
        )
