"""Position embeddings: 2D resampling of a learned table, and fixed 2D sin-cos embeddings.

A learned table is laid out as (1, n_prefix + h*w, D): an optional row for the class token followed
by the h x w patch grid in row-major order. Changing the input size resamples the grid part in 2D
(paper Sec. 3.2: "we perform 2D interpolation of the pre-trained position embeddings"); prefix rows
are never touched, and a flattened table is never sliced.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vitlab.errors import ConfigError


def resample_pos_embed(
    pos_embed: torch.Tensor,
    new_grid: tuple[int, int],
    old_grid: tuple[int, int] | None = None,
    num_prefix: int = 1,
    method: str = "bicubic_antialias",
) -> torch.Tensor:
    """Resample (1, num_prefix + h*w, D) to (1, num_prefix + new_h*new_w, D), in float32.

    ``old_grid`` defaults to a square grid. ``method`` is one of ``vitlab.config.POS_RESAMPLES``, the way the
    weights' own code resamples, so that features at another size match it:
        bicubic_antialias      bicubic with antialiasing (timm's resample_abs_pos_embed, OpenCLIP)
        bicubic                plain bicubic, align_corners=False (transformers' interpolate_pos_encoding)
        bicubic_offset         plain bicubic to the scale factor (n + 0.1) / n_old (the original DINOv2 code)
        bicubic_align_corners  plain bicubic, align_corners=True (torchvision's interpolate_embeddings)
    """
    if method not in _RESAMPLE_KWARGS:
        raise ConfigError(f"method={method!r} is not one of {', '.join(map(repr, _RESAMPLE_KWARGS))}")
    if pos_embed.ndim != 3 or pos_embed.shape[0] != 1:
        raise ConfigError(f"pos_embed must have shape (1, N, D), got {tuple(pos_embed.shape)}")
    n_grid = pos_embed.shape[1] - num_prefix
    if old_grid is None:
        side = round(n_grid**0.5)
        if side * side != n_grid:
            raise ConfigError(
                f"cannot infer the grid of a position table with {n_grid} patch rows: it is not square; "
                "pass old_grid=(h, w)"
            )
        old_grid = (side, side)
    if old_grid[0] * old_grid[1] != n_grid:
        raise ConfigError(f"old_grid={old_grid} does not match the {n_grid} patch rows of the table")
    if not any(isinstance(s, torch.SymInt) for s in new_grid):  # eager: plain ints
        new_grid = (int(new_grid[0]), int(new_grid[1]))
        if tuple(old_grid) == new_grid:
            return pos_embed
    # Traced with a symbolic grid (torch.export / ONNX with dynamic H x W): resample unconditionally, so the
    # interpolation stays in the graph instead of specialising on one size; at the trained grid it is the identity.
    prefix, grid = pos_embed[:, :num_prefix], pos_embed[:, num_prefix:]
    D = grid.shape[-1]
    grid = grid.float().reshape(1, old_grid[0], old_grid[1], D).permute(0, 3, 1, 2)  # (1, D, h, w)
    if method == "bicubic_offset":  # DINOv2's interpolate_offset, as two interpolation matrices (see below)
        rows = _bicubic_matrix(new_grid[0], old_grid[0], DINOV2_OFFSET).to(grid.device)  # (h', h)
        cols = _bicubic_matrix(new_grid[1], old_grid[1], DINOV2_OFFSET).to(grid.device)  # (w', w)
        # With the offset, resampling to the same grid is not the identity; DINOv2 then uses the table as it is.
        # (Eager returns early above; a traced graph with a symbolic grid needs the choice inside it.)
        same = (torch.full((), new_grid[0]) == old_grid[0]) & (torch.full((), new_grid[1]) == old_grid[1])
        rows = torch.where(same, torch.eye(new_grid[0], old_grid[0], device=grid.device), rows)
        cols = torch.where(same, torch.eye(new_grid[1], old_grid[1], device=grid.device), cols)
        grid = torch.einsum("yh,bdhw,xw->bdyx", rows, grid, cols)  # (1, D, h', w')
    else:
        grid = F.interpolate(grid, size=new_grid, mode="bicubic", **_RESAMPLE_KWARGS[method])
    grid = grid.permute(0, 2, 3, 1).reshape(1, new_grid[0] * new_grid[1], D)  # (1, h'*w', D)
    return torch.cat([prefix, grid.to(pos_embed.dtype)], dim=1)


def _bicubic_matrix(n_out: int, n_in: int, offset: float) -> torch.Tensor:
    """(n_out, n_in) weights of PyTorch's 1D bicubic resampling (Keys' kernel, a = -0.75, edges clamped,
    align_corners=False) when it is given the scale factor (n_out + offset) / n_in instead of a size, as the original
    DINOv2 code calls it: output i reads input (i + 0.5) * n_in / (n_out + offset) - 0.5. The same numbers as
    ``F.interpolate(scale_factor=...)``, written so that a traced graph keeps n_out symbolic (ONNX export with
    dynamic sizes; F.interpolate would bake the scale factor in)."""
    i = torch.arange(n_out, dtype=torch.float32)
    scale = (n_in / (torch.full((), n_out, dtype=torch.float64) + offset)).float()  # 1 / scale factor, as PyTorch
    src = (i + 0.5) * scale - 0.5  # (n_out,)
    left = src.floor()
    t = (src - left)[:, None]  # (n_out, 1)
    a = -0.75
    near = torch.cat([t, 1 - t], dim=1)  # distances to taps 0 and 1, in [0, 1]
    far = torch.cat([t + 1, 2 - t], dim=1)  # distances to taps -1 and 2, in [1, 2]
    w_near = ((a + 2) * near - (a + 3)) * near * near + 1
    w_far = ((a * far - 5 * a) * far + 8 * a) * far - 4 * a
    weights = torch.stack([w_far[:, 0], w_near[:, 0], w_near[:, 1], w_far[:, 1]], dim=1)  # taps -1, 0, 1, 2
    taps = (left[:, None] + torch.arange(-1, 3, dtype=torch.float32)).clamp(0, n_in - 1).long()  # (n_out, 4)
    return torch.zeros(n_out, n_in).scatter_add(1, taps, weights)


DINOV2_OFFSET = 0.1  # facebookresearch/dinov2's interpolate_offset default ("avoid floating point error")
_RESAMPLE_KWARGS = {
    "bicubic_antialias": dict(align_corners=False, antialias=True),
    "bicubic": dict(align_corners=False, antialias=False),
    "bicubic_offset": dict(align_corners=False, antialias=False),
    "bicubic_align_corners": dict(align_corners=True, antialias=False),
}


def sincos_2d(grid: tuple[int, int], dim: int, temperature: float = 10_000.0, mae: bool = False) -> torch.Tensor:
    """Fixed 2D sin-cos position embedding, (1, h*w, dim), row-major over the grid.

    A quarter of the channels each for sin(x), cos(x), sin(y), cos(y), with frequencies
    1 / temperature^(k / (dim/4 - 1)) (the layout of big_vision's ``posemb_sincos_2d``), or with ``mae``
    1 / temperature^(k / (dim/4)) (MAE's ``get_2d_sincos_pos_embed``, AIMv2's native-resolution models).
    """
    if dim % 4:
        raise ConfigError(f"sincos_2d needs dim divisible by 4, got {dim}")
    h, w = grid
    y, x = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32),
                          indexing="ij")
    n_freq = dim // 4
    omega = torch.arange(n_freq, dtype=torch.float32) / (n_freq if mae else max(n_freq - 1, 1))
    omega = 1.0 / temperature**omega  # (dim/4,)
    x = x.flatten()[:, None] * omega[None, :]  # (h*w, dim/4)
    y = y.flatten()[:, None] * omega[None, :]
    return torch.cat([x.sin(), x.cos(), y.sin(), y.cos()], dim=1)[None]  # (1, h*w, dim)
