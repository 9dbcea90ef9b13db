"""Fixed 2-D sine-cosine position embeddings, laid out as in the MAE reference checkpoints."""

from __future__ import annotations

import torch


def sincos_1d(dim: int, positions: torch.Tensor) -> torch.Tensor:
    """Embed 1-D positions as ``[sin | cos]`` of ``pos / 10000^(2i/dim)``, shape ``(len(positions), dim)``."""
    if dim % 2:
        raise ValueError(f"sin-cos embedding width must be even, got {dim}")
    omega = torch.arange(dim // 2, dtype=torch.float64) / (dim / 2.0)
    omega = 1.0 / 10000**omega
    angles = positions.reshape(-1).to(torch.float64)[:, None] * omega[None, :]
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)


def sincos_2d(dim: int, grid_size: int | tuple[int, int], cls_token: bool = True) -> torch.Tensor:
    """2-D sin-cos table of shape ``(1 [+ 1] + rows * cols, dim)``, rows in raster order.

    The first half of each row encodes the patch's column index, the second half its row index; the
    optional leading cls row is all zeros. Computed in float64 and returned as float32, like the reference.
    """
    if dim % 4:
        raise ValueError(f"2-D sin-cos embedding width must be a multiple of 4, got {dim}")
    rows, cols = (grid_size, grid_size) if isinstance(grid_size, int) else grid_size
    row_idx, col_idx = torch.meshgrid(
        torch.arange(rows, dtype=torch.float64), torch.arange(cols, dtype=torch.float64), indexing="ij"
    )
    table = torch.cat([sincos_1d(dim // 2, col_idx), sincos_1d(dim // 2, row_idx)], dim=1)
    if cls_token:
        table = torch.cat([torch.zeros(1, dim, dtype=torch.float64), table], dim=0)
    return table.float()
