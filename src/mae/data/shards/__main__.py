"""``python -m mae.data.shards SRC OUT [key=value ...]``: write a dataset as litdata shards (``conf/shards.yaml``)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from mae.data.errors import COMMAND_LINE_ERRORS, one_line
from mae.data.shards.writer import write_shards
from mae.runs.config import compose_in_repo, instantiate_node


def data_overrides(source: str) -> list[str]:
    """``data=<group>`` as given; a folder becomes the image_folder group rooted there."""
    if source.startswith("data="):
        return [source]
    return ["data=image_folder", f"data.root={Path(source).resolve()}"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mae.data.shards",
        description=__doc__ + "\n\nSee conf/shards.yaml for the keys.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "source",
        help="a folder in the ImageNet layout (SRC/train/<class>/<image>, SRC/val/...), "
        "data=unlabeled with data.root=DIR (every image below DIR, at any depth, "
        "without labels; the held-out files become val), or data=<group> "
        "(data=fashion_mnist, data=flowers102, ...)",
    )
    parser.add_argument("out", type=Path, help="the shard directory to write (train/, val/, mae_shards.json)")
    parser.add_argument(
        "overrides", nargs="*", help="config overrides, e.g. chunk_bytes=128MB overwrite=true data.root=..."
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        cfg = compose_in_repo("shards", [*data_overrides(args.source), *args.overrides])
        module = instantiate_node(cfg.data)
        info = write_shards(
            module,
            args.out,
            chunk_bytes=str(cfg.chunk_bytes),
            num_workers=cfg.num_workers or os.cpu_count() or 1,
            overwrite=bool(cfg.overwrite),
            source=args.source,
        )
    except COMMAND_LINE_ERRORS as error:
        print(f"error: {one_line(error)}", file=sys.stderr)
        return 2
    for line in info.unreadable:
        print(f"unreadable image left out: {line}", file=sys.stderr)
    counts = ", ".join(f"{count} {split}" for split, count in info.num_samples.items())
    labels = f"in {len(info.classes)} classes" if info.labelled else "without labels"
    group = "" if info.labelled else "data=unlabeled_stream "
    print(
        f"wrote {counts} images {labels} to {args.out} ({len(info.unreadable)} unreadable left out); train with "
        f"{group}data.input_dir={args.out}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
