"""Reconstructions of any MAE checkpoint with a decoder: `python -m mae.jobs.visualize ckpt_path=<file> out=grid.png`.

Writes a grid with one row per image and the columns original / masked / reconstruction / reconstruction with the
visible patches pasted back (see :mod:`mae.evaluation.reconstruction_grid`; small images enlarged to
``min_cell_size`` pixels, a header row naming the columns with ``labels``), for the first ``num_images`` images of the data group's
evaluation split, with a mask fixed by ``seed`` (through the model's ``noise`` argument). Options are in
``conf/visualize.yaml``.

Where the architecture comes from:

* this project's pre-training checkpoint (a Lightning ``.ckpt`` in ``<run dir>/checkpoints/``): the ``model`` node of
  ``<run dir>/config_resolved.yaml``, two directories up from the file, when it exists (``use_run_config=false``
  or a missing file: the model group);
* a reference MAE ``.pth`` with decoder ("full" or "visualize" files, weights under ``model``) or a plain
  state_dict: the model group and its overrides, e.g. ``model=mae_vit_large_patch16 model.norm_pix_loss=false
  data=imagenet`` for ``mae_visualize_vit_large.pth`` (its decoder predicts raw pixels).

Bad input (a missing file, an encoder-only checkpoint, weights of another shape, images of another size) ends the
command with one ``error: ...`` line and exit code 2. The notebook ``notebooks/reconstruction.ipynb`` calls the
same functions: :func:`compose_config`, then :func:`prepare`, then :meth:`Inspection.views`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from mae.evaluation.reconstruction_grid import (
    ReconstructionViews,
    reconstruct,
    save_reconstruction_grid,
    upscale_factor,
)
from mae.jobs.harness import (
    SETUP_ERRORS,
    SetupError,
    data_for_model_file,
    one_line_setup_error,
    run_job,
)
from mae.model_files.checkpoint import check_input_size
from mae.model_files.loading import load
from mae.models.masking import seeded_noise
from mae.runs.config import CONF_DIR, compose_in_repo, register_resolvers
from mae.runs.run_directory import check_writable

log = logging.getLogger(__name__)

register_resolvers()


def check_mask_ratio(mask_ratio: float | None) -> float | None:
    if mask_ratio is not None and not 0.0 <= float(mask_ratio) < 1.0:
        raise ValueError(f"mask_ratio={mask_ratio} is outside [0, 1) (null: the model's own)")
    return None if mask_ratio is None else float(mask_ratio)


@dataclass
class Inspection:
    """A loaded MAE, the images to show and the fixed mask: everything a reconstruction grid needs."""

    model: torch.nn.Module
    architecture: str
    """Where the architecture came from: what the file states (its run config, an export's ``.json``) or the model group."""
    imgs: torch.Tensor
    """``(N, C, H, W)`` normalised images."""
    noise: torch.Tensor
    """``(N, L)`` masking noise."""
    mask_ratio: float | None
    mean: Sequence[float]
    std: Sequence[float]
    """The data's normalisation, to display the views in pixels (:func:`mae.evaluation.reconstruction_grid.denormalize_images`)."""

    def views(self) -> ReconstructionViews:
        """Original / masked / reconstruction / pasted views, de-normalised from norm_pix space when the model
        predicts normalised patches (still in the data's normalised space; see ``mean`` and ``std``)."""
        return reconstruct(self.model, self.imgs, noise=self.noise, mask_ratio=self.mask_ratio)


def prepare(cfg: DictConfig) -> Inspection:
    """Load ``cfg.ckpt_path`` and ``cfg.num_images`` images of ``cfg.data``, and fix the mask from ``cfg.seed``.

    Bad input (see the module docstring) is a :class:`~mae.jobs.harness.SetupError` whose ``str()`` is one line.
    """
    if OmegaConf.is_missing(cfg, "ckpt_path"):
        raise SetupError(
            "ckpt_path is required: python -m mae.jobs.visualize ckpt_path=<checkpoint with decoder> [out=grid.png]"
        )
    try:
        if int(cfg.num_images) < 1:
            raise ValueError(f"num_images={cfg.num_images} must be at least 1")
        mask_ratio = check_mask_ratio(cfg.mask_ratio)
        upscale_factor(1, 1, int(cfg.min_cell_size))  # a negative min_cell_size fails before the model is loaded
        check_writable(Path(str(cfg.out)).parent)
        loaded = load(
            cfg.ckpt_path, fallback=cfg.model, use_stated=bool(cfg.get("use_run_config", True)), require_decoder=True
        )
        model, source = loaded.model, loaded.architecture_from
        datamodule = data_for_model_file(cfg.data, cfg.ckpt_path, use_stored=bool(cfg.get("use_run_config", True)))
        check_input_size((model.img_size, model.in_chans), datamodule, cfg.ckpt_path)
        imgs = datamodule.sample_images(int(cfg.num_images))
    except SETUP_ERRORS as error:
        raise one_line_setup_error(error) from error
    return Inspection(
        model=model,
        architecture=source,
        imgs=imgs,
        noise=seeded_noise(imgs.shape[0], model.num_patches, cfg.seed),
        mask_ratio=mask_ratio,
        mean=tuple(datamodule.mean),
        std=tuple(datamodule.std),
    )


def compose_config(ckpt_path: str | Path, overrides: Sequence[str] = (), **values: Any) -> DictConfig:
    """``conf/visualize.yaml`` composed as the command sees it, for notebooks and scripts.

    ``overrides`` are the command's Hydra overrides (``model=...``, ``data=...``, ``num_images=4``); ``values``
    set top-level keys directly (``num_images=4, seed=1, mask_ratio=None``). ``paths.*`` (e.g. the data roots
    under ``paths.data_dir``) resolve as if the command ran from the checkout's root, wherever the caller runs;
    ``ckpt_path`` and ``out`` stay relative to the caller's working directory.
    """
    cfg = compose_in_repo("visualize", overrides)
    unknown = sorted(set(values) - set(cfg))
    if unknown:
        raise KeyError(f"visualize config has no key(s) {unknown}; set nested ones through overrides")
    for key, value in {**values, "ckpt_path": str(ckpt_path)}.items():
        cfg[key] = value
    OmegaConf.resolve(cfg)
    return cfg


def visualize(cfg: DictConfig) -> Path:
    """The command's job: write the grid of ``cfg.ckpt_path`` to ``cfg.out`` and return its path."""
    inspection = prepare(cfg)
    path = save_reconstruction_grid(
        inspection.model,
        inspection.imgs,
        cfg.out,
        inspection.mean,
        inspection.std,
        noise=inspection.noise,
        mask_ratio=inspection.mask_ratio,
        min_cell_size=int(cfg.min_cell_size),
        labels=bool(cfg.labels),
    )
    print(
        f"wrote {path} ({inspection.imgs.shape[0]} images x original / masked / reconstruction / pasted; "
        f"{cfg.ckpt_path}, architecture from {inspection.architecture})"
    )
    return path


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="visualize")
def main(cfg: DictConfig) -> None:
    run_job(visualize, cfg)


if __name__ == "__main__":
    main()
