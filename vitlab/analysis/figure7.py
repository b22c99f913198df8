"""The analyses of the ViT paper's Figure 7, for any checkpoint.

- Left: the top principal components of the patch-embedding filters (the linear projection E of Eq. 1).
- Centre: the cosine similarity of each patch's position embedding with every other one.
- Right: the mean attention distance of every head in every layer, in pixels: per query patch, the distance
  to every key patch weighted by the attention weight, averaged over the queries and the images ("receptive
  field size" of the head). Attention to the prefix tokens (class, registers), which have no position, is
  left out and the weights over the patches renormalised.
"""

from __future__ import annotations

import torch

from vitlab.errors import UsageError
from vitlab.model import VisionTransformer


def patch_embedding_components(model: VisionTransformer, k: int = 28) -> tuple[torch.Tensor, torch.Tensor]:
    """The top ``k`` principal components of the D patch-embedding filters, as images (k, C, P, P), and the
    fraction of the variance each explains (k,). The paper's Figure 7 (left) shows the first 28 of ViT-L/32."""
    if model.config.stem != "patch":
        raise UsageError("the conv stem has no linear patch embedding to decompose (stem='conv'); "
                         "use a model with stem='patch'")
    weight = model.patch_embed.proj.weight.detach().float()  # (D, C, P, P)
    d = weight.shape[0]
    flat = weight.reshape(d, -1)  # (D, C*P*P): one filter per row
    flat = flat - flat.mean(dim=0, keepdim=True)
    _, s, vh = torch.linalg.svd(flat, full_matrices=False)
    k = min(k, vh.shape[0])
    variance = s.square() / s.square().sum().clamp_min(1e-12)
    return vh[:k].reshape(k, *weight.shape[1:]), variance[:k]


def position_similarity(pos_embed: torch.Tensor, grid: tuple[int, int], num_prefix: int = 1) -> torch.Tensor:
    """Cosine similarity of every grid position's embedding with every other: (h, w, h, w).

    pos_embed: (1, num_prefix + h*w, D) or (h*w, D) (prefix rows, if any, are skipped).
    """
    h, w = grid
    pos = pos_embed.detach().float().reshape(-1, pos_embed.shape[-1])
    if pos.shape[0] == num_prefix + h * w:
        pos = pos[num_prefix:]
    if pos.shape[0] != h * w:
        raise UsageError(f"the position table has {pos.shape[0]} rows; expected {h * w} for a {h}x{w} grid "
                         f"(plus {num_prefix} prefix rows)")
    pos = torch.nn.functional.normalize(pos, dim=-1)
    return (pos @ pos.T).reshape(h, w, h, w)


def model_position_similarity(model: VisionTransformer) -> torch.Tensor:
    """:func:`position_similarity` of a model's learned table, (h, w, h, w)."""
    if model.pos_embed is None:
        raise UsageError(f"the model has no learned position table (pos_embed={model.config.pos_embed!r})")
    return position_similarity(model.pos_embed, model.config.grid_size, model.config.num_pos_prefix)


def patch_distances(grid: tuple[int, int], patch_size: int) -> torch.Tensor:
    """(h*w, h*w) Euclidean distance in pixels between patch centres."""
    h, w = grid
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    centres = torch.stack([ys.flatten(), xs.flatten()], dim=1).float() * patch_size  # (h*w, 2)
    return torch.cdist(centres, centres)


def mean_attention_distance(attn: torch.Tensor, grid: tuple[int, int], patch_size: int,
                            num_prefix: int = 1) -> torch.Tensor:
    """Mean attention distance in pixels per head, (Nh,), of attention probabilities (B, Nh, N, N)."""
    n_patch = grid[0] * grid[1]
    if attn.shape[-1] != num_prefix + n_patch:
        raise UsageError(f"attention over {attn.shape[-1]} tokens does not match {num_prefix} prefix tokens + a "
                         f"{grid[0]}x{grid[1]} grid")
    a = attn[:, :, num_prefix:, num_prefix:].float()  # (B, Nh, h*w, h*w): patch queries to patch keys
    a = a / a.sum(dim=-1, keepdim=True).clamp_min(1e-12)
    dist = patch_distances(grid, patch_size).to(a.device)
    return (a * dist).sum(dim=-1).mean(dim=(0, 2))  # (Nh,)


def uniform_attention_distance(grid: tuple[int, int], patch_size: int) -> float:
    """The mean attention distance of uniform attention over the patches: the mean distance between two patch
    centres, the ceiling drawn in Figure 7 (right)."""
    return patch_distances(grid, patch_size).mean().item()


@torch.no_grad()
def attention_distances(model: VisionTransformer, x: torch.Tensor, batch_size: int = 32) -> torch.Tensor:
    """Mean attention distance (pixels) of every head in every layer over images ``x``: (depth, Nh). In batches:
    every block's (B, Nh, N, N) probabilities are held at once (B/16 at 224 px: 22 MB per image)."""
    was_training = model.training
    model.eval()
    total = 0
    try:
        for i in range(0, x.shape[0], batch_size):
            out = model.forward_intermediates(x[i:i + batch_size], layers=None, return_attention=True)
            d = torch.stack([mean_attention_distance(out.attention[k], out.grid_size, model.config.patch_size,
                                                     out.num_prefix_tokens) for k in sorted(out.attention)])
            total = total + d * out.features.shape[0]  # a mean over images: weight each batch by its size
    finally:
        model.train(was_training)
    return total / x.shape[0]
