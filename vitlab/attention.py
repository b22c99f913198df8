"""Where the model looks: attention maps read through ``forward_intermediates`` (no hooks, fused
attention stays on for every block that is not asked for)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vitlab.model import VisionTransformer


@torch.no_grad()
def last_layer_attention(model: VisionTransformer, x: torch.Tensor, layer: int = -1) -> torch.Tensor:
    """Attention of the class token (or, for a model without one, of the mean query) to every patch in
    ``layer``, averaged over heads, as a map (B, h, w) that sums to 1 over the patches of each image."""
    out = model.forward_intermediates(x, layers=[layer], return_attention=True)
    probs = next(iter(out.attention.values()))  # (B, Nh, N, N)
    n_prefix = out.num_prefix_tokens
    query = probs[:, :, 0] if model.config.class_token else probs[:, :, n_prefix:].mean(dim=2)  # (B, Nh, N)
    patch = query[:, :, n_prefix:].mean(dim=1)  # (B, h*w)
    patch = patch / patch.sum(dim=-1, keepdim=True)
    return patch.reshape(x.shape[0], *out.grid_size)


def upsample_map(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, h, w) -> (B, H, W), bilinear, rescaled to [0, 1] per image for display."""
    up = F.interpolate(maps[:, None].float(), size=size, mode="bilinear", align_corners=False)[:, 0]
    lo = up.amin(dim=(1, 2), keepdim=True)
    hi = up.amax(dim=(1, 2), keepdim=True)
    return (up - lo) / (hi - lo).clamp_min(1e-12)
