"""The MAE model: a ViT encoder on visible patches and a light decoder that reconstructs the removed ones.

Built from timm's ViT pieces (``PatchEmbed``, ``Block``) and laid out with the reference implementation's
parameter names, so reference checkpoints load with ``strict=True`` and the encoder part loads into timm's
``VisionTransformer``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
from timm.layers import PatchEmbed
from timm.models.vision_transformer import Block
from torch import nn
from torch.utils.checkpoint import checkpoint

from mae.models.loss import masked_mse_loss, normalize_patches
from mae.models.masking import check_trainable_mask_ratio, random_masking
from mae.models.patches import patchify, unpatchify
from mae.models.pos_embed import sincos_2d

ENCODER_PREFIXES = ("cls_token", "pos_embed", "patch_embed.", "blocks.", "norm.")


@dataclass
class MAEOutput:
    """What one MAE forward pass returns."""

    loss: torch.Tensor
    """Scalar reconstruction loss over removed patches."""
    pred: torch.Tensor
    """Per-patch prediction ``(N, L, p*p*C)``; in normalised-patch space when ``norm_pix_loss`` is on."""
    mask: torch.Tensor
    """``(N, L)`` in original patch order, 1 = removed, 0 = visible."""
    ids_restore: torch.Tensor
    """``(N, L)`` indices that put the shuffled token sequence back into original order."""


def _check_config(
    img_size: int,
    patch_size: int,
    in_chans: int,
    embed_dim: int,
    depth: int,
    num_heads: int,
    decoder_embed_dim: int,
    decoder_depth: int,
    decoder_num_heads: int,
    mlp_ratio: float,
    mask_ratio: float,
    layer_norm_eps: float,
) -> None:
    """Every rule the constructor's arguments must meet, each broken one a one-line ``ValueError`` naming it."""
    for name, value in (
        ("img_size", img_size),
        ("patch_size", patch_size),
        ("in_chans", in_chans),
        ("embed_dim", embed_dim),
        ("depth", depth),
        ("num_heads", num_heads),
        ("decoder_embed_dim", decoder_embed_dim),
        ("decoder_depth", decoder_depth),
        ("decoder_num_heads", decoder_num_heads),
    ):
        if value < 1:
            raise ValueError(f"{name}={value} must be at least 1")
    if img_size % patch_size:
        raise ValueError(f"img_size={img_size} is not divisible by patch_size={patch_size}")
    for name, width, heads in (
        ("embed_dim", embed_dim, num_heads),
        ("decoder_embed_dim", decoder_embed_dim, decoder_num_heads),
    ):
        if width % heads:
            raise ValueError(f"{name}={width} is not divisible by its number of heads ({heads})")
        if width % 4:
            raise ValueError(f"{name}={width} must be a multiple of 4 for 2-D sin-cos position embeddings")
    if mlp_ratio <= 0 or layer_norm_eps <= 0:
        raise ValueError(f"mlp_ratio={mlp_ratio} and layer_norm_eps={layer_norm_eps} must both be positive")
    check_trainable_mask_ratio(mask_ratio, (img_size // patch_size) ** 2)


class MaskedAutoencoderViT(nn.Module):
    """MAE with a ViT backbone (He et al., 2021).

    Args:
        img_size: input height and width in pixels.
        patch_size: side of a square patch; must divide ``img_size``.
        in_chans: image channels (3 for RGB, 1 for grayscale).
        embed_dim, depth, num_heads: encoder width, number of blocks, attention heads.
        decoder_embed_dim, decoder_depth, decoder_num_heads: the same for the decoder.
        mlp_ratio: hidden width of each block's MLP relative to its width.
        mask_ratio: fraction of patches removed in training; it must remove at least one patch and keep at least
            one (``forward`` takes any ratio in [0, 1), e.g. 0 for features of the whole image).
        norm_pix_loss: regress per-patch normalised pixels instead of raw ones.
        layer_norm_eps: epsilon of every LayerNorm.
        grad_checkpointing: in training, keep only each transformer block's input and recompute the block in the
            backward pass (activation checkpointing): the same gradients for about a third more compute, and
            activation memory that no longer grows with depth (for ViT-L/H on small GPUs).
    """

    def __init__(
        self,
        img_size: int = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 1024,
        depth: int = 24,
        num_heads: int = 16,
        decoder_embed_dim: int = 512,
        decoder_depth: int = 8,
        decoder_num_heads: int = 16,
        mlp_ratio: float = 4.0,
        mask_ratio: float = 0.75,
        norm_pix_loss: bool = False,
        layer_norm_eps: float = 1e-6,
        grad_checkpointing: bool = False,
    ) -> None:
        arguments = dict(locals())  # first: nothing but the arguments is bound yet
        super().__init__()
        self.init_kwargs = {name: value for name, value in arguments.items() if name not in ("self", "__class__")}
        """The constructor's arguments: ``type(model)(**model.init_kwargs)`` is a fresh model of this architecture."""
        _check_config(
            img_size,
            patch_size,
            in_chans,
            embed_dim,
            depth,
            num_heads,
            decoder_embed_dim,
            decoder_depth,
            decoder_num_heads,
            mlp_ratio,
            mask_ratio,
            layer_norm_eps,
        )
        self.img_size, self.patch_size, self.in_chans = img_size, patch_size, in_chans
        self.mask_ratio = mask_ratio
        self.norm_pix_loss = norm_pix_loss
        self.grad_checkpointing = grad_checkpointing
        norm_layer = partial(nn.LayerNorm, eps=layer_norm_eps)

        # Encoder: timm ViT pieces under timm's names.
        self.embed_dim = embed_dim  # the feature width, under timm's name
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim)
        num_patches = self.patch_embed.num_patches
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        # Fixed sin-cos tables are frozen parameters (not buffers) to keep the reference checkpoint layout.
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, embed_dim), requires_grad=False)
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias=True, norm_layer=norm_layer) for _ in range(depth)
        )
        self.norm = norm_layer(embed_dim)

        # Decoder.
        self.decoder_embed = nn.Linear(embed_dim, decoder_embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_embed_dim))
        self.decoder_pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, decoder_embed_dim), requires_grad=False)
        self.decoder_blocks = nn.ModuleList(
            Block(decoder_embed_dim, decoder_num_heads, mlp_ratio, qkv_bias=True, norm_layer=norm_layer)
            for _ in range(decoder_depth)
        )
        self.decoder_norm = norm_layer(decoder_embed_dim)
        self.decoder_pred = nn.Linear(decoder_embed_dim, patch_size**2 * in_chans)

        self.initialize_weights()

    @property
    def grid_size(self) -> tuple[int, int]:
        return self.patch_embed.grid_size

    @property
    def num_patches(self) -> int:
        return self.patch_embed.num_patches

    def initialize_weights(self) -> None:
        """Reference initialisation: fixed sin-cos tables, xavier-uniform Linears and patch projection."""
        with torch.no_grad():
            self.pos_embed.copy_(sincos_2d(self.pos_embed.shape[-1], self.grid_size).unsqueeze(0))
            self.decoder_pos_embed.copy_(sincos_2d(self.decoder_pos_embed.shape[-1], self.grid_size).unsqueeze(0))
        proj = self.patch_embed.proj.weight
        nn.init.xavier_uniform_(proj.data.view(proj.shape[0], -1))
        nn.init.normal_(self.cls_token, std=0.02)
        nn.init.normal_(self.mask_token, std=0.02)
        self.apply(self._init_module)

    @staticmethod
    def _init_module(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.xavier_uniform_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    # -- pixels <-> patches ------------------------------------------------------------------------
    def patchify(self, imgs: torch.Tensor) -> torch.Tensor:
        return patchify(imgs, self.patch_size)

    def unpatchify(self, patches: torch.Tensor) -> torch.Tensor:
        return unpatchify(patches, self.patch_size, self.in_chans, self.grid_size)

    # -- encoder -----------------------------------------------------------------------------------
    def _check_input(self, imgs: torch.Tensor) -> None:
        expected = (self.in_chans, self.img_size, self.img_size)
        if imgs.ndim != 4 or tuple(imgs.shape[1:]) != expected:
            raise ValueError(f"images have shape {tuple(imgs.shape)}, expected (N, {', '.join(map(str, expected))})")

    def _run_encoder(self, tokens: torch.Tensor) -> torch.Tensor:
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(tokens.shape[0], -1, -1)
        x = torch.cat([cls, tokens], dim=1)
        x = self._run_blocks(self.blocks, x)
        return self.norm(x)

    def _run_blocks(self, blocks: nn.ModuleList, x: torch.Tensor) -> torch.Tensor:
        recompute = self.grad_checkpointing and self.training and torch.is_grad_enabled()
        for block in blocks:
            x = checkpoint(block, x, use_reentrant=False) if recompute else block(x)
        return x

    def forward_encoder(
        self, imgs: torch.Tensor, mask_ratio: float, noise: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Encode the visible patches: returns latent ``(N, 1 + len_keep, D)``, mask and ids_restore."""
        tokens = self.patch_embed(imgs) + self.pos_embed[:, 1:]
        visible, mask, ids_restore = random_masking(tokens, mask_ratio, noise)
        return self._run_encoder(visible), mask, ids_restore

    def forward_features(self, imgs: torch.Tensor) -> torch.Tensor:
        """The encoder on all patches, no masking: normalised tokens ``(N, 1 + L, D)``, cls first."""
        self._check_input(imgs)
        return self._run_encoder(self.patch_embed(imgs) + self.pos_embed[:, 1:])

    # -- decoder -----------------------------------------------------------------------------------
    def forward_decoder(self, latent: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """Predict every patch ``(N, L, p*p*C)`` from the encoded visible tokens and mask tokens."""
        x = self.decoder_embed(latent)
        n, length = ids_restore.shape
        mask_tokens = self.mask_token.expand(n, length + 1 - x.shape[1], -1)
        patches = torch.cat([x[:, 1:], mask_tokens], dim=1)
        patches = torch.gather(patches, 1, ids_restore.unsqueeze(-1).expand(-1, -1, x.shape[2]))
        x = torch.cat([x[:, :1], patches], dim=1) + self.decoder_pos_embed
        x = self._run_blocks(self.decoder_blocks, x)
        return self.decoder_pred(self.decoder_norm(x))[:, 1:]

    # -- loss --------------------------------------------------------------------------------------
    def reconstruction_target(self, imgs: torch.Tensor) -> torch.Tensor:
        target = self.patchify(imgs)
        return normalize_patches(target) if self.norm_pix_loss else target

    def forward_loss(self, imgs: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return masked_mse_loss(pred, self.reconstruction_target(imgs), mask)

    def forward(
        self, imgs: torch.Tensor, mask_ratio: float | None = None, noise: torch.Tensor | None = None
    ) -> MAEOutput:
        """Mask, encode, decode and score a batch of images.

        Args:
            imgs: ``(N, C, H, W)`` normalised images.
            mask_ratio: fraction of patches to remove; the model's ``mask_ratio`` when omitted.
            noise: optional ``(N, L)`` values whose smallest entries choose the visible patches,
                which makes the mask deterministic.
        """
        self._check_input(imgs)
        ratio = self.mask_ratio if mask_ratio is None else mask_ratio
        if not 0.0 <= ratio < 1.0:
            raise ValueError(f"mask_ratio={ratio} is outside [0, 1)")
        latent, mask, ids_restore = self.forward_encoder(imgs, ratio, noise)
        pred = self.forward_decoder(latent, ids_restore)
        return MAEOutput(self.forward_loss(imgs, pred, mask), pred, mask, ids_restore)

    # -- checkpoint views --------------------------------------------------------------------------
    def encoder_state_dict(self) -> dict[str, torch.Tensor]:
        """The encoder's weights under timm ``VisionTransformer`` names (no decoder, no head)."""
        return {k: v for k, v in self.state_dict().items() if k.startswith(ENCODER_PREFIXES)}
