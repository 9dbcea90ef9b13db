"""The comparison model of the paper's Table 2: MAE with mask tokens in the encoder (SimMIM-style).

The encoder processes all ``L`` patches, the removed ones replaced by a learned mask token, and the same
decoder follows; its input already has one token per patch, so the decoder inserts no mask tokens of its own.
Built by composing the project's :class:`~mae.models.MaskedAutoencoderViT` (its patch embedding, encoder,
decoder and loss) rather than copying it, so the two models differ only in what the encoder sees.
"""

from __future__ import annotations

import torch
from torch import nn

from mae.models.mae import MAEOutput, MaskedAutoencoderViT
from mae.models.masking import random_masking


class AllTokensMAE(nn.Module):
    """Wrap ``mae`` so that its encoder runs on every patch, mask tokens in place of the removed ones.

    The mask, the loss (on removed patches) and the decoder are the wrapped model's; the decoder is called with
    the identity order, since the encoded sequence is never shuffled.
    """

    def __init__(self, mae: MaskedAutoencoderViT) -> None:
        super().__init__()
        self.mae = mae
        self.encoder_mask_token = nn.Parameter(torch.zeros(1, 1, mae.cls_token.shape[-1]))
        nn.init.normal_(self.encoder_mask_token, std=0.02)

    @property
    def mask_ratio(self) -> float:
        return self.mae.mask_ratio

    def forward(
        self, imgs: torch.Tensor, mask_ratio: float | None = None, noise: torch.Tensor | None = None
    ) -> MAEOutput:
        """Mask as MAE does, encode all patches (removed ones as mask tokens), decode, and score."""
        mae = self.mae
        mae._check_input(imgs)
        ratio = mae.mask_ratio if mask_ratio is None else mask_ratio
        tokens = mae.patch_embed(imgs)
        n, length, _ = tokens.shape
        _, mask, _ = random_masking(tokens, ratio, noise)  # only the mask is used
        removed = mask.unsqueeze(-1).to(tokens.dtype)
        tokens = tokens * (1 - removed) + self.encoder_mask_token.to(tokens.dtype) * removed
        latent = mae._run_encoder(tokens + mae.pos_embed[:, 1:])
        identity = torch.arange(length, device=imgs.device).expand(n, length)
        pred = mae.forward_decoder(latent, identity)
        return MAEOutput(mae.forward_loss(imgs, pred, mask), pred, mask, identity)
