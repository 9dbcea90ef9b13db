"""Reconstructions of any MAE checkpoint with a decoder: `python -m mae.jobs.visualize ckpt_path=<file> out=grid.png`.

Writes a grid with one row per image and the columns original / masked / reconstruction / reconstruction with the
visible patches pasted back (see :mod:`mae.reconstruction_grid`), for the first ``num_images`` images of the data group's
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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from mae.checkpoint import (
    CheckpointError,
    check_input_size,
    check_state_dict_shapes,
    load_checkpoint_file,
    model_state_dict,
)
from mae.config import CONF_DIR, compose_in_repo, instantiate_node, register_resolvers
from mae.jobs.harness import (
    SETUP_ERRORS,
    SetupError,
    one_line_setup_error,
    run_job,
)
from mae.models.masking import seeded_noise
from mae.reconstruction_grid import ReconstructionViews, reconstruct, save_reconstruction_grid
from mae.run_directory import check_writable, config_file, run_dir_of_checkpoint
from mae.stored_config import MODEL_TARGETS, trusted_node

log = logging.getLogger(__name__)

DECODER_KEYS = ("mask_token", "decoder_")
"""Names (or name prefixes) of the weights only an MAE with decoder has; an encoder-only file has none of them."""

register_resolvers()


class NoDecoderError(CheckpointError):
    """The checkpoint holds an encoder only (a reference encoder ``.pth``, a fine-tuned or linear-probe file)."""


def has_decoder(state: Mapping[str, torch.Tensor]) -> bool:
    return any(key.startswith(DECODER_KEYS) for key in state)


def run_config_file(ckpt_path: str | Path) -> Path:
    """``<run dir>/config_resolved.yaml`` for ``<run dir>/checkpoints/<file>``."""
    return config_file(run_dir_of_checkpoint(ckpt_path))


def architecture(ckpt_path: str | Path, checkpoint: Mapping, model_cfg: DictConfig,
                 use_run_config: bool = True) -> tuple[DictConfig, str]:
    """(model node, where it came from): the run's resolved ``model`` for this project's Lightning checkpoints
    when ``config_resolved.yaml`` exists two directories up, otherwise ``model_cfg``."""
    config_file = run_config_file(ckpt_path)
    if use_run_config and "state_dict" in checkpoint and config_file.is_file():
        node = OmegaConf.load(config_file).get("model")
        if isinstance(node, DictConfig) and "_target_" in node:
            return trusted_node(node, MODEL_TARGETS, str(config_file)), str(config_file)
        log.warning("%s has no model node; the architecture comes from the model group", config_file)
    return model_cfg, "the model group"


def load_mae(ckpt_path: str | Path, model_cfg: DictConfig, use_run_config: bool = True) -> tuple[torch.nn.Module, str]:
    """An MAE with decoder, weights loaded from ``ckpt_path``, in eval mode; and where its architecture came from.

    Reads this project's Lightning checkpoints, reference MAE ``.pth`` files (weights under ``model``) and plain
    state_dicts (see :func:`architecture` for the architecture). Raises :class:`NoDecoderError` for a file
    without decoder weights and :class:`~mae.checkpoint.CheckpointError` for a missing or unreadable file or
    weights that do not fit the architecture (one line each).
    """
    checkpoint = load_checkpoint_file(ckpt_path)
    if not isinstance(checkpoint, Mapping):
        raise CheckpointError(f"checkpoint {ckpt_path} holds a {type(checkpoint).__name__}, not a state_dict")
    state = model_state_dict(checkpoint)
    if not has_decoder(state):
        raise NoDecoderError(f"{ckpt_path} has no decoder weights (encoder-only checkpoint): reconstructions need "
                             "a full/visualize checkpoint")
    node, source = architecture(ckpt_path, checkpoint, model_cfg, use_run_config)
    model = instantiate_node(node)
    check_state_dict_shapes(state, model.state_dict(), f"checkpoint {ckpt_path} (architecture from {source})")
    model.load_state_dict(state)
    return model.eval(), source


def check_mask_ratio(mask_ratio: float | None) -> float | None:
    if mask_ratio is not None and not 0.0 <= float(mask_ratio) < 1.0:
        raise ValueError(f"mask_ratio={mask_ratio} is outside [0, 1) (null: the model's own)")
    return None if mask_ratio is None else float(mask_ratio)


@dataclass
class Inspection:
    """A loaded MAE, the images to show and the fixed mask: everything a reconstruction grid needs."""

    model: torch.nn.Module
    architecture: str
    """Where the architecture came from: the run's ``config_resolved.yaml`` or the model group."""
    imgs: torch.Tensor
    """``(N, C, H, W)`` normalised images."""
    noise: torch.Tensor
    """``(N, L)`` masking noise."""
    mask_ratio: float | None
    mean: Sequence[float]
    std: Sequence[float]
    """The data's normalisation, to display the views in pixels (:func:`mae.reconstruction_grid.denormalize_images`)."""

    def views(self) -> ReconstructionViews:
        """Original / masked / reconstruction / pasted views, de-normalised from norm_pix space when the model
        predicts normalised patches (still in the data's normalised space; see ``mean`` and ``std``)."""
        return reconstruct(self.model, self.imgs, noise=self.noise, mask_ratio=self.mask_ratio)


def prepare(cfg: DictConfig) -> Inspection:
    """Load ``cfg.ckpt_path`` and ``cfg.num_images`` images of ``cfg.data``, and fix the mask from ``cfg.seed``.

    Bad input (see the module docstring) is a :class:`~mae.jobs.harness.SetupError` whose ``str()`` is one line.
    """
    if OmegaConf.is_missing(cfg, "ckpt_path"):
        raise SetupError("ckpt_path is required: python -m mae.jobs.visualize ckpt_path=<checkpoint with decoder> "
                         "[out=grid.png]")
    try:
        if int(cfg.num_images) < 1:
            raise ValueError(f"num_images={cfg.num_images} must be at least 1")
        mask_ratio = check_mask_ratio(cfg.mask_ratio)
        check_writable(Path(str(cfg.out)).parent)
        model, source = load_mae(cfg.ckpt_path, cfg.model, cfg.get("use_run_config", True))
        datamodule = instantiate_node(cfg.data)
        check_input_size((model.img_size, model.in_chans), datamodule, cfg.ckpt_path)
        imgs = datamodule.sample_images(int(cfg.num_images))
    except SETUP_ERRORS as error:
        raise one_line_setup_error(error) from error
    return Inspection(model=model, architecture=source, imgs=imgs,
                      noise=seeded_noise(imgs.shape[0], model.num_patches, cfg.seed), mask_ratio=mask_ratio,
                      mean=tuple(datamodule.mean), std=tuple(datamodule.std))


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
    path = save_reconstruction_grid(inspection.model, inspection.imgs, cfg.out, inspection.mean, inspection.std,
                                    noise=inspection.noise, mask_ratio=inspection.mask_ratio)
    print(f"wrote {path} ({inspection.imgs.shape[0]} images x original / masked / reconstruction / pasted; "
          f"{cfg.ckpt_path}, architecture from {inspection.architecture})")
    return path


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="visualize")
def main(cfg: DictConfig) -> None:
    run_job(visualize, cfg)


if __name__ == "__main__":
    main()
