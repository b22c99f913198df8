"""The SwiGLU MLP (Shazeer 2020, "GLU Variants Improve Transformer", Eq. 6): FFN(x) = (SiLU(x W) * x V) W2.

DINOv2's giant models (Oquab et al. 2023, Sec. 4), DINOv3's ``_plus`` and 7B models, EVA-02 and AIMv2 use it in
place of the paper's fc1 -> GELU -> fc2. The hidden width is usually two thirds of the plain MLP's, so that the
three matrices hold about as many parameters as the two they replace (DINOv2: int(4 D * 2 / 3), rounded up to a
multiple of 8: 4096 for D = 1536).

Names as timm's ``SwiGLUPacked`` (``GluMlp`` with the gate first): ``fc1`` holds W and V stacked, rows [W; V], so
that one matrix product gives both halves; ``fc2`` is W2.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SwiGLU(nn.Module):
    """(B, N, D) -> (B, N, D) through a gated hidden layer of width ``hidden``: fc1 (2 hidden, D), fc2 (D, hidden)."""

    def __init__(self, dim: int, hidden: int, dropout: float = 0.0, inner_norm_eps: float | None = None,
                 bias: bool = True):
        super().__init__()
        self.fc1 = nn.Linear(dim, 2 * hidden, bias=bias)  # rows [W; V]: the gate, then the value
        self.drop1 = nn.Dropout(dropout)
        # EVA-02's sub-LayerNorm on the hidden layer (Wang et al. 2022, "Foundation Transformers"), when an eps is given
        self.norm = nn.LayerNorm(hidden, eps=inner_norm_eps) if inner_norm_eps is not None else nn.Identity()
        self.fc2 = nn.Linear(hidden, dim, bias=bias)
        self.drop2 = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, value = self.fc1(x).chunk(2, dim=-1)  # 2 x (B, N, hidden)
        return self.drop2(self.fc2(self.norm(self.drop1(F.silu(gate) * value))))  # (B, N, D)
