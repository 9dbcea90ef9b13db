"""Datasets as litdata shards: optimized chunks of encoded images and labels, for streaming from local disk or
object storage (``python -m mae.data.shards``, ``data=imagenet_stream`` / ``data=fashion_mnist_stream`` /
``data=unlabeled_stream``).

A shard directory holds one litdata dataset per split (``train/``, ``val/``), each item
``{"index": position in the source split, "image": the encoded file's bytes, "label": class index}``, and
``mae_shards.json`` (:class:`ShardInfo`): classes, channels, image size, split sizes and the normalisation. Shards
of a folder without labels (``data=unlabeled``, streamed by ``data=unlabeled_stream``) have no classes, label -1 on
every item, and the held-out files as ``val``.
"""

from mae.data.shards.info import INFO_FILE, SPLITS, ShardInfo, read_shard_info
from mae.data.shards.writer import write_shards

__all__ = ["INFO_FILE", "SPLITS", "ShardInfo", "read_shard_info", "write_shards"]
