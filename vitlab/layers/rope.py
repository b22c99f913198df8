"""Rotary position embeddings on the 2D patch grid (RoPE: Su et al. 2021, "RoFormer"; for ViTs: Heo et al. 2024,
"Rotary Position Embedding for Vision Transformer").

Instead of adding a position to each token (Eq. 1's E_pos), RoPE rotates each head's queries and keys: pairs of
channels (a, b) of the patch at (y, x) turn by an angle theta = position * frequency,
    (a, b) -> (a cos theta - b sin theta, a sin theta + b cos theta),
so that q . k depends only on the offset between the two patches. A quarter of a head's channel pairs turns with
the x coordinate and a quarter with y ("axial"), each at its own frequency. Prefix tokens (class, registers) are
not rotated. The tables are computed for whatever grid the input has, which is how these models run at another
image size (no table to resample); only RoPE-Mixed learns anything (its frequencies).

Three schemes, as the weights' own code computes them (``ViTConfig.rope``):
    axial    timm's ``vit_*_rope_*`` (RoPE-Axial of Heo et al.), EVA-02 (Fang et al. 2023) and Perception
             Encoder: integer patch coordinates, frequencies theta^(-k / (Dh/4)) for k < Dh/4, channels ordered
             [x frequencies, y frequencies] (``axes="xy"``; EVA-02's are [y, x]), each value repeated for the two
             channels of a pair, which are adjacent: (c0, c1), (c2, c3), ... Coordinates may start at an offset
             (Perception Encoder's 1, 0 being its class token's) and, with a reference grid (EVA's
             ``ref_feat_shape``, the pretraining grid), be rescaled to it: (i + offset) * ref / n.
    dinov3   DINOv3 (Simeoni et al. 2025): coordinates of the patch centres in [-1, 1] ((i + 0.5) / n * 2 - 1, so
             another image size covers the same range), periods theta^(2k / (Dh/2)), angles 2 pi c / period,
             channels ordered [y, x], the two channels of a pair half a head apart: (c0, c_{Dh/2}), ...
    mixed    RoPE-Mixed (Heo et al. 2024, Sec. 3.3): each block and head learns its own frequencies, a 2D vector
             (f_x, f_y) per channel pair, and the angle is x f_x + y f_y at integer patch coordinates, so a head can
             turn along any direction of the grid, not only x or y. Pairs adjacent as in axial. The only RoPE with
             parameters: ``rope.freqs`` (2, depth, Nh, Dh/2), as timm's RotaryEmbeddingMixed stores them.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class RotaryEmbedding2d(nn.Module):
    """The (sin, cos) tables of a (h, w) grid, each (h*w, head_dim), for :func:`apply_rope`."""

    def __init__(self, kind: str, head_dim: int, theta: float, axes: str = "xy",
                 ref_grid: tuple[int, int] | None = None, offset: float = 0.0):
        super().__init__()
        if kind not in ("axial", "dinov3") or head_dim % 4:
            raise ValueError(f"RoPE {kind!r} needs a head width divisible by 4, got {head_dim}")
        self.kind, self.head_dim, self.theta, self.axes, self.ref_grid = kind, head_dim, theta, axes, ref_grid
        self.offset = offset

    def angles(self, grid: tuple[int, int]) -> torch.Tensor:
        """(h*w, head_dim / 2): each patch's angle for each channel pair, in the scheme's channel order."""
        h, w = grid
        n = self.head_dim // 4  # frequencies per axis
        if self.kind == "axial":
            freqs = 1.0 / self.theta ** (torch.arange(n, dtype=torch.float32) / n)  # (n,)
            y = torch.arange(h, dtype=torch.float32) + self.offset
            x = torch.arange(w, dtype=torch.float32) + self.offset
            if self.ref_grid is not None:  # EVA: the pretraining grid's coordinates at any size
                y, x = y / h * self.ref_grid[0], x / w * self.ref_grid[1]
            ys, xs = torch.meshgrid(y, x, indexing="ij")  # (h, w) each
            pair = [xs, ys] if self.axes == "xy" else [ys, xs]
            coords = torch.stack(pair, dim=-1).reshape(h * w, 2)  # (h*w, 2): [x, y] or [y, x]
            return (coords[:, :, None] * freqs).flatten(1)  # (h*w, 2n)
        periods = self.theta ** (2.0 * torch.arange(n, dtype=torch.float32) / (self.head_dim // 2))  # (n,)
        ys = (torch.arange(0.5, h, dtype=torch.float32) / h) * 2 - 1  # patch centres in [-1, 1]
        xs = (torch.arange(0.5, w, dtype=torch.float32) / w) * 2 - 1
        coords = torch.stack(torch.meshgrid(ys, xs, indexing="ij"), dim=-1).reshape(h * w, 2)  # (h*w, 2): [y, x]
        return (2 * math.pi * coords[:, :, None] / periods).flatten(1)  # (h*w, 2n)

    def forward(self, grid: tuple[int, int], device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        a = self.angles(grid)  # (h*w, Dh/2)
        a = a.repeat_interleave(2, dim=-1) if self.kind == "axial" else torch.cat([a, a], dim=-1)  # (h*w, Dh)
        return a.sin().to(device), a.cos().to(device)


class RotaryEmbeddingMixed(nn.Module):
    """RoPE-Mixed: learned frequencies ``freqs`` (2, depth, Nh, Dh/2), [f_x; f_y] of every block, head and channel
    pair. Called with a grid, it gives each block's (sin, cos) tables, (Nh, h*w, Dh) each."""

    def __init__(self, depth: int, num_heads: int, head_dim: int, theta: float):
        super().__init__()
        if head_dim % 4:
            raise ValueError(f"RoPE 'mixed' needs a head width divisible by 4, got {head_dim}")
        self.theta = theta
        self.freqs = nn.Parameter(torch.empty(2, depth, num_heads, head_dim // 2))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """The paper's initialisation: axial magnitudes theta^(-4k/Dh) for k < Dh/4, each head's Dh/4 pairs along a
        random direction phi and the next Dh/4 along phi + 90 degrees (a new phi for every block and head)."""
        _, depth, heads, half = self.freqs.shape
        magnitude = self.theta ** (-torch.arange(half // 2, dtype=torch.float32) / (half // 2))  # (Dh/4,)
        phi = torch.rand(depth, heads, 1) * 2 * math.pi  # (depth, Nh, 1)
        direction = torch.cat([phi.expand(-1, -1, half // 2), phi.expand(-1, -1, half // 2) + math.pi / 2], dim=-1)
        magnitude = magnitude.repeat(2)  # (Dh/2,)
        self.freqs.copy_(torch.stack([magnitude * direction.cos(), magnitude * direction.sin()]))

    def forward(self, grid: tuple[int, int], device: torch.device | None = None
                ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        h, w = grid
        ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32, device=self.freqs.device),
                                torch.arange(w, dtype=torch.float32, device=self.freqs.device), indexing="ij")
        freqs = self.freqs.float()
        # (depth, Nh, h*w, Dh/2): x f_x + y f_y
        angles = xs.reshape(-1, 1) * freqs[0].unsqueeze(-2) + ys.reshape(-1, 1) * freqs[1].unsqueeze(-2)
        angles = angles.repeat_interleave(2, dim=-1)  # (depth, Nh, h*w, Dh): adjacent pairs
        sin, cos = angles.sin().to(device), angles.cos().to(device)
        return list(zip(sin.unbind(0), cos.unbind(0), strict=True))


def apply_rope(x: torch.Tensor, sin: torch.Tensor, cos: torch.Tensor, kind: str) -> torch.Tensor:
    """Rotate (..., N, head_dim) by the (..., N, head_dim) tables: x cos + turn(x) sin, where turn(x) takes each pair
    (a, b) to (-b, a): adjacent channels for "axial" and "mixed", channels half a head apart for "dinov3"."""
    if kind != "dinov3":
        turned = torch.stack([-x[..., 1::2], x[..., ::2]], dim=-1).reshape(x.shape)  # (a, b) -> (-b, a)
    else:
        first, second = x.chunk(2, dim=-1)
        turned = torch.cat([-second, first], dim=-1)
    return (x * cos + turned * sin).to(x.dtype)
