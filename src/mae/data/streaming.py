"""Training from litdata shards (``python -m mae.data.shards``) on local disk or object storage.

The training split is a litdata ``StreamingDataset``: chunks shuffled per epoch with the run's seed and dealt out
to nodes x processes x workers, so that an epoch serves every sample once (litdata's ``drop_last`` evens the
shares out), and its loader's state goes into Lightning checkpoints, so that a resumed run serves exactly the
samples the uninterrupted one would have served next. Each image is decoded as the folder datasets decode
files, and augmented with a generator seeded by (seed, epoch, sample index): the crop of a sample does not depend
on which process or worker happened to serve it.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch
from litdata import StreamingDataLoader, StreamingDataset
from torch.utils.data import Dataset

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


def read_info(input_dir: str) -> ShardInfo:
    """The shard directory's ``mae_shards.json``, fetched first when ``input_dir`` is remote, after checking that
    its splits store only safe item formats (:func:`~mae.data.shards.info.check_item_format`)."""
    if not is_remote(input_dir):
        return read_shard_info(input_dir)
    from litdata.streaming.downloader import get_downloader

    root = input_dir.rstrip("/")
    make = "write the shards with `python -m mae.data.shards <source> <dir>` and upload the directory"
    with tempfile.TemporaryDirectory(prefix="mae_shards_") as folder:  # read at once: no copy to keep
        downloader = get_downloader(input_dir, folder, [])

        def fetch(name: str) -> Path:
            local = Path(folder) / name.replace("/", "_")
            try:
                downloader.download_file(f"{root}/{name}", str(local))
            except Exception as error:  # each storage backend raises its own kinds
                raise FileNotFoundError(f"cannot fetch {root}/{name} ({type(error).__name__}: {error}); "
                                        f"{make}") from error
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
            ``train_samples`` must be None (an epoch is the whole split: convert a subset instead).
    """

    def __init__(self, *, input_dir: str, cache_dir: str | None, eval_resize_ratio: float, decoder: str,
                 **settings: Any) -> None:
        super().__init__(**settings)
        if self.loaders.persistent_workers:
            raise ValueError("persistent_workers=True: litdata's workers learn the epoch (its shuffle and the "
                             "augmentation seeds) when they start; set data.persistent_workers=false")
        if self.train_samples is not None:
            raise ValueError(f"train_samples={self.train_samples}: a streamed epoch is the whole training split; "
                             "set data.train_samples=null, or write shards of a subset")
        self.read_image_files(decoder, eval_resize_ratio, on_bad_image="error", max_bad_fraction=0.0)
        self.input_dir, self.cache_dir = str(input_dir).rstrip("/"), cache_dir
        self.info = read_info(self.input_dir)
        self._check_format()
        self.classes = list(self.info.classes)
        self.num_classes = len(self.classes)

    def _check_format(self) -> None:
        info, where = self.info, f"the shards in {self.input_dir}"
        if info.channels != self.in_chans:
            raise ValueError(f"{where} hold {info.channels}-channel images, but data.in_chans={self.in_chans}; set "
                             f"data.in_chans={info.channels} or convert with a data group of {self.in_chans} channels")
        if info.image_size is not None and info.image_size != self.img_size:
            raise ValueError(f"{where} hold {info.image_size} px images, but data.img_size={self.img_size}; set "
                             f"data.img_size={info.image_size} (the images were stored at their own size)")

    def split_dir(self, split: str) -> str:
        return f"{self.input_dir}/{split}"

    def shard_images(self, split: str) -> ShardImages:
        return ShardImages(self.split_dir(split), self.info.num_samples[split], self.image_loader, self.cache_dir)

    def setup(self, stage: str | None = None) -> None:
        if self._splits is not None:
            return
        augment, evaluate = self.transforms(self.eval_resize_ratio)
        train = AugmentedShards(self.split_dir("train"), loader=self.image_loader, augment=augment,
                                seed=self.loaders.seed, cache_dir=self.cache_dir)
        self._splits = Splits(
            train=train,
            train_eval=Transformed(self.shard_images("train"), evaluate),
            val=Transformed(self.shard_images("val"), evaluate),
        )

    def train_dataloader(self) -> StreamingDataLoader:
        """litdata's loader: stateful (Lightning checkpoints it), full batches only."""
        settings = self.loaders
        return StreamingDataLoader(self.splits.train, batch_size=settings.batch_size, num_workers=settings.num_workers,
                                   pin_memory=settings.pin_memory, drop_last=True)
