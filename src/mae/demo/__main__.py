"""``python -m mae.demo [CKPT] [key=value ...]``: the reconstruction demo on http://127.0.0.1:7860 (``make demo``).

CKPT defaults to the newest ``make pretrain`` run's checkpoint; the keys are those of ``conf/demo.yaml`` (``port=``,
``compare_ckpt_path=``, ``data=...``, ...). Everything the page needs is checked before the server starts: a
missing checkpoint, one without decoder, data of another image size, a port in use or a bad setting is one
``error: ...`` line and exit code 2.
"""

from __future__ import annotations

import contextlib
import socket
import sys
from collections.abc import Sequence
from pathlib import Path

from hydra.errors import HydraException
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from mae.data.errors import CorruptDataError, check_int, one_line
from mae.demo.reconstruction import load_demo_model
from mae.demo.session import DemoLimits, DemoSession, Example, PageError
from mae.jobs.harness import data_for_model_file
from mae.model_files.checkpoint import CheckpointError, check_input_size
from mae.models.masking import check_trainable_mask_ratio
from mae.runs.config import compose_in_repo

SETUP_ERRORS = (ValueError, TypeError, OSError, HydraException, OmegaConfBaseException, CorruptDataError)


def split_arguments(argv: Sequence[str]) -> tuple[str | None, list[str]]:
    """(CKPT or None, the ``key=value`` overrides): the checkpoint is the one argument without ``=``."""
    paths = [arg for arg in argv if "=" not in arg or arg.startswith(("/", "."))]
    if len(paths) > 1:
        raise ValueError(f"one checkpoint at most, got {paths}; settings are key=value")
    return (paths[0] if paths else None), [arg for arg in argv if arg not in paths]


def check_port_free(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server binds: TIME_WAIT is no obstacle
        try:
            probe.bind((host, port))
        except OSError as error:
            raise ValueError(f"cannot serve on {host}:{port} ({error.strerror}); choose another port=<n>") from None


def examples_of(datamodule, count: int) -> list[Example]:
    """The first ``count`` images of the data group's test split, named with their class."""
    dataset = datamodule.splits.test
    classes = getattr(datamodule, "classes", None)
    examples = []
    for index in range(min(count, len(dataset))):
        image, label = dataset[index][:2]
        name = f"test image {index}" + (f": {classes[int(label)]}" if classes is not None else f" (class {label})")
        examples.append(Example(name, image))
    if not examples:
        raise ValueError(f"the evaluation split of data {datamodule.__class__.__name__} has no images to offer")
    return examples


def prepare(cfg: DictConfig, ckpt_path: str) -> DemoSession:
    """Check every setting, load the checkpoint(s) and the example images: the session the page serves."""
    if check_int("port", cfg.port, 1) > 65535:
        raise ValueError(f"port={cfg.port} must be at most 65535")
    for key in ("num_examples", "display_size", "max_upload_mb", "max_megapixels"):
        check_int(key, cfg[key], 1)
    check_int("seed", cfg.seed, 0)
    check_port_free(str(cfg.host), int(cfg.port))
    datamodule = data_for_model_file(cfg.data, ckpt_path, use_stored=bool(cfg.use_run_config))
    fallback = cfg.model
    primary = load_demo_model(ckpt_path, datamodule.mean, datamodule.std, fallback, bool(cfg.use_run_config))
    check_input_size((primary.model.img_size, primary.model.in_chans), datamodule, ckpt_path)
    check_trainable_mask_ratio(float(cfg.mask_ratio), primary.model.num_patches)
    limits = DemoLimits(
        display_size=int(cfg.display_size),
        max_bytes=int(cfg.max_upload_mb) * 2**20,
        max_pixels=int(cfg.max_megapixels) * 10**6,
    )
    session = DemoSession(
        primary, examples_of(datamodule, int(cfg.num_examples)), limits, fallback, Path(str(cfg.compare_root))
    )
    if cfg.compare_ckpt_path:
        session.compared_model(str(cfg.compare_ckpt_path), checked=True)
    return session


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    try:
        # Gradio is the demo extra: a missing one is one line before any checkpoint is read.
        from mae.demo.app import THEME, build_app

        ckpt_arg, overrides = split_arguments(argv)
        cfg = compose_in_repo("demo", overrides)
        ckpt_path = ckpt_arg or str(cfg.ckpt_path)
        session = prepare(cfg, ckpt_path)
    except CheckpointError as error:
        hint = (
            ""
            if ckpt_arg or "does not exist" not in str(error)
            else " (the default is the newest `make pretrain` run's; run it first or name a checkpoint)"
        )
        print(f"error: {one_line(error)}{hint}", file=sys.stderr)
        return 2
    except (*SETUP_ERRORS, PageError) as error:
        print(f"error: {one_line(error)}", file=sys.stderr)
        return 2
    app = build_app(session, float(cfg.mask_ratio), int(cfg.seed), str(cfg.compare_ckpt_path or ""))
    print(f"serving {ckpt_path} on http://{cfg.host}:{cfg.port} (Ctrl+C stops)", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        app.launch(
            server_name=str(cfg.host),
            server_port=int(cfg.port),
            share=False,
            ssr_mode=False,
            theme=THEME,
            max_file_size=f"{4 * int(cfg.max_upload_mb)}mb",
            footer_links=[],
            quiet=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
