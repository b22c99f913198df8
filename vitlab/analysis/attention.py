"""Where the model looks: attention maps, attention rollout and gradient rollout.

Everything is read through ``forward_intermediates`` (no hooks): only the blocks a method needs compute explicit
softmax probabilities, every other block keeps the fused kernel. The pure functions take attention tensors
(B, Nh, N, N) (rows: queries, columns: keys; token order [class, distillation, registers..., patches]) and return
maps (B, h, w) over the patch grid that sum to 1 per image.

Which query is read: the tokens the head reads, weighted as it reads them (:func:`head_query`). pool='token': the
class token's row; 'distill' (DeiT): the mean of the class and distillation tokens' rows (both heads are averaged);
'gap': the mean over the patch queries' rows; 'token_gap' (DINOv2's probe): half the class row, half the patch
mean; 'map' (SigLIP): the attention pool's own query, i.e. the rows weighted by the pool's attention over the final
patch tokens. Registers are prefix tokens: they can be attended to, but a map covers the patches only.

- ``raw``: one layer's attention of that query to the patches, heads fused (mean, max or min) or one head.
- ``rollout`` (Abnar & Zuidema 2020): per layer, heads fused, the residual added as 0.5 A + 0.5 I and rows
  renormalised; the layers multiplied from the first to the last, R = A_L ... A_1. ``discard_ratio`` zeroes the
  weakest fraction of each fused layer's weights first (vit-explain's trick against noise; the prefix tokens'
  own attention to themselves is kept).
- ``grad-rollout`` (Chefer et al. 2021's head weighting): the same product, each layer's heads fused as the
  mean of relu(dy_c/dA * A), with y_c the logit of the chosen (default: predicted) class.
- ``pool`` (pool='map' only): the attention pool's own attention over the final patch tokens, the map that decides
  what the head sees, heads fused or one head.

:func:`attention_figure` draws one image with its map and the per-head maps (``vitlab attention``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from vitlab.errors import UsageError
from vitlab.model import Intermediates, VisionTransformer
from vitlab.plots.attention import plot_attention_figure
from vitlab.preprocess import Preprocessing

METHODS = ("raw", "rollout", "grad-rollout")  # any ViT
POOL_METHOD = "pool"  # an attention-pooled (pool='map') model only
HEAD_FUSIONS = ("mean", "max", "min")


def methods_for(model: VisionTransformer) -> tuple[str, ...]:
    """The map methods that apply to ``model``: METHODS, and ``pool`` for an attention-pooled one."""
    return METHODS + ((POOL_METHOD,) if model.config.pool == "map" else ())


def _check(name: str, value: str, valid: tuple[str, ...]) -> None:
    if value not in valid:
        raise UsageError(f"{name}={value!r} is not one of {', '.join(valid)}")


def fuse_heads(probs: torch.Tensor, how: str = "mean") -> torch.Tensor:
    """(B, Nh, N, N) -> (B, N, N): the heads' mean, max or min."""
    _check("head_fusion", how, HEAD_FUSIONS)
    if how == "mean":
        return probs.mean(dim=1)
    return probs.amax(dim=1) if how == "max" else probs.amin(dim=1)


def head_query(model: VisionTransformer, out: Intermediates) -> torch.Tensor:
    """(B, N) weights over the final tokens, summing to 1: how the head reads them (see the module docstring).
    pool='map' needs ``out.pool_attention`` (``forward_intermediates(..., return_attention=True)``)."""
    pool, n_prefix = model.config.pool, out.num_prefix_tokens
    b, n = out.features.shape[:2]
    query = out.features.new_zeros(b, n)
    if pool in ("token", "token_gap"):
        query[:, 0] = 1.0
    elif pool == "distill":
        query[:, :2] = 0.5  # class and distillation tokens
    if pool in ("gap", "token_gap"):
        query[:, n_prefix:] += 1.0 / (n - n_prefix)
    elif pool == "map":
        query[:, n_prefix:] = out.pool_attention.detach().mean(dim=1)  # (B, h*w), heads averaged
    return query / query.sum(dim=-1, keepdim=True)


def query_row(attn: torch.Tensor, num_prefix: int, query: torch.Tensor) -> torch.Tensor:
    """(B, ..., N, N) -> (B, ..., h*w): the rows of ``attn`` weighted by ``query`` (B, N) (:func:`head_query`), i.e.
    that query's attention to the patches, renormalised to sum to 1 over the patches."""
    q = query.reshape(query.shape[0], *([1] * (attn.ndim - 3)), 1, query.shape[-1])  # (B, ..., 1, N)
    return over_patches((q.to(attn.dtype) @ attn).squeeze(-2), num_prefix)  # (B, ..., h*w)


def over_patches(rows: torch.Tensor, num_prefix: int) -> torch.Tensor:
    """Attention rows (..., N) -> (..., h*w): their weights on the patches, renormalised to sum to 1 over them (the
    prefix tokens they also attend to are left out)."""
    patches = rows[..., num_prefix:]
    return patches / patches.sum(dim=-1, keepdim=True).clamp_min(1e-12)


def _discard(fused: torch.Tensor, ratio: float, num_prefix: int) -> torch.Tensor:
    """Zero the smallest ``ratio`` of each image's (N, N) weights, keeping the prefix tokens' self-attention."""
    if ratio <= 0:
        return fused
    b, n, _ = fused.shape
    flat = fused.reshape(b, n * n).clone()
    k = int(n * n * ratio)
    keep = torch.zeros(n * n, dtype=torch.bool, device=fused.device)
    keep[torch.arange(num_prefix, device=fused.device) * (n + 1)] = True  # diagonal entries of the prefix tokens
    order = flat.masked_fill(keep, float("inf")).argsort(dim=1)[:, :k]  # (B, k) smallest first
    flat.scatter_(1, order, 0.0)
    return flat.view(b, n, n)


def rollout(attentions: list[torch.Tensor], head_fusion: str = "mean", discard_ratio: float = 0.0,
            num_prefix: int = 1, weights: list[torch.Tensor] | None = None) -> torch.Tensor:
    """Attention rollout over ``attentions`` (first block first), each (B, Nh, N, N) -> joint attention (B, N, N).

    ``weights``: per-layer (B, Nh, N, N) gradients for gradient rollout (heads fused as mean(relu(grad * A)),
    ``head_fusion`` unused). Row i of the result: how much token i at the output draws on each input token.
    """
    if not attentions:
        raise UsageError("rollout needs the attention of at least one block")
    if not 0.0 <= discard_ratio < 1.0:
        raise UsageError(f"discard_ratio must be in [0, 1), got {discard_ratio}")
    b, _, n, _ = attentions[0].shape
    eye = torch.eye(n, device=attentions[0].device, dtype=attentions[0].dtype)
    joint = eye.expand(b, n, n)
    for i, a in enumerate(attentions):
        if weights is not None:
            fused = (weights[i] * a).clamp_min(0).mean(dim=1)  # (B, N, N)
        else:
            fused = fuse_heads(a, head_fusion)
        fused = _discard(fused, discard_ratio, num_prefix)
        a_res = 0.5 * fused + 0.5 * eye  # the residual stream carries the token itself
        a_res = a_res / a_res.sum(dim=-1, keepdim=True)
        joint = a_res @ joint  # (B, N, N)
    return joint


def layer_map(attn: torch.Tensor, num_prefix: int, query: torch.Tensor, head: str | int = "mean") -> torch.Tensor:
    """``raw``: one block's attention (B, Nh, N, N) read by ``query`` (B, N), one head (int) or the heads fused
    (mean, max, min) -> (B, h*w) over the patches, summing to 1."""
    if isinstance(head, int):
        return query_row(attn[:, head], num_prefix, query)
    return query_row(fuse_heads(attn, head), num_prefix, query)


def rollout_map(attentions: list[torch.Tensor], num_prefix: int, query: torch.Tensor, head_fusion: str = "mean",
                discard_ratio: float = 0.0, weights: list[torch.Tensor] | None = None) -> torch.Tensor:
    """``rollout`` (``grad-rollout`` with ``weights``) of ``attentions`` read by ``query`` (B, N) -> (B, h*w)."""
    return query_row(rollout(attentions, head_fusion, discard_ratio, num_prefix, weights), num_prefix, query)


def pool_map(pool_attention: torch.Tensor, head: str | int = "mean") -> torch.Tensor:
    """``pool``: an attention pool's attention (B, Nh, h*w) (``Intermediates.pool_attention``), one head or the heads
    fused -> (B, h*w)."""
    return pool_attention[:, head] if isinstance(head, int) else fuse_heads(pool_attention[:, :, None], head)[:, 0]


def patch_rows(attn: torch.Tensor, num_prefix: int) -> torch.Tensor:
    """What each patch attends to: (B, ..., N, N) -> (B, ..., h*w, h*w), row i the attention of patch i's query to
    the patches (:func:`over_patches`)."""
    return over_patches(attn[..., num_prefix:, :], num_prefix)


@dataclass
class AttentionMaps:
    """What :func:`attention_maps` returns.

    maps:      (B, h, w) saliency over the patch grid, each map summing to 1.
    head_maps: (B, Nh, h, w) per head of ``layer`` (``raw`` only; None otherwise).
    logits:    (B, num_classes) of the same forward pass.
    target:    (B,) the class explained by ``grad-rollout`` (the predicted one unless given); None otherwise.
    """

    maps: torch.Tensor
    head_maps: torch.Tensor | None
    logits: torch.Tensor
    target: torch.Tensor | None


def attention_maps(model: VisionTransformer, x: torch.Tensor, method: str = "raw", layer: int = -1,
                   head: str | int = "mean", discard_ratio: float = 0.0, target: torch.Tensor | int | None = None,
                   first_layer: int = 0) -> AttentionMaps:
    """Saliency maps of images ``x`` (B, C, H, W) by ``method`` (see the module docstring).

    ``layer``: the block of ``raw``, or the last block ``rollout`` multiplies up to (default: the last). ``head``:
    "mean" | "max" | "min" fuses the heads, an int picks one (``raw`` and ``pool``). ``target``: the class for
    ``grad-rollout`` (int or (B,) tensor; default the predicted class). ``first_layer``: the first block the
    rollouts multiply from (default 0). Starting later leaves out an early block whose attention piles onto one
    token: in the DINOv2 ViT-S/14 of the README's photos, block 0 sends 10-17% of every query's attention to the
    one patch with the largest key, and a rollout from block 0 then peaks on that patch.
    """
    cfg = model.config
    _check("method", method, METHODS + (POOL_METHOD,))
    if method == POOL_METHOD and cfg.pool != "map":
        raise UsageError(f"method='pool' shows an attention pool's map; this model pools with {cfg.pool!r}, not "
                         "'map' (use raw, rollout or grad-rollout)")
    depth = cfg.depth
    if not -depth <= layer < depth:
        raise UsageError(f"layer={layer} is out of range for a model of {depth} blocks (valid: {-depth}..{depth - 1})")
    last = layer % depth
    if not 0 <= first_layer <= last:
        raise UsageError(f"first_layer={first_layer} must be in 0..{last} (the last block rolled out)")
    if isinstance(head, int) and not 0 <= head < cfg.num_heads:
        raise UsageError(f"head={head} is out of range: the model has {cfg.num_heads} heads (0..{cfg.num_heads - 1})")
    if isinstance(head, int) and method not in ("raw", POOL_METHOD):
        raise UsageError(f"head={head}: one head can only be shown with method='raw' or 'pool'; {method} fuses the "
                         "heads")
    if isinstance(head, str):
        _check("head", head, HEAD_FUSIONS)
    if method == "grad-rollout" and cfg.num_classes == 0:
        raise UsageError("grad-rollout needs a classifier head: the model has num_classes=0")
    was_training = model.training
    model.eval()
    try:
        layers = [last] if method in ("raw", POOL_METHOD) else list(range(first_layer, last + 1))
        with torch.set_grad_enabled(method == "grad-rollout"):
            out = model.forward_intermediates(x, layers=layers, return_attention=True)
            logits = model.forward_head(out.features)
            attn = [out.attention[i] for i in layers]
            n_prefix, query = out.num_prefix_tokens, head_query(model, out)
            h, w = out.grid_size
            b = x.shape[0]
            if method == POOL_METHOD:  # (B, Nh, h*w) over the patches already
                per_head = out.pool_attention.detach()
                m = pool_map(per_head, head)
                return AttentionMaps(m.reshape(b, h, w), per_head.reshape(b, -1, h, w), logits.detach(), None)
            if method == "raw":
                per_head = query_row(attn[0], n_prefix, query)  # (B, Nh, h*w)
                m = layer_map(attn[0], n_prefix, query, head)
                return AttentionMaps(m.reshape(b, h, w).detach(), per_head.reshape(b, -1, h, w).detach(),
                                     logits.detach(), None)
            grads = None
            tgt = None
            if method == "grad-rollout":
                tgt = logits.argmax(-1) if target is None else torch.as_tensor(target, device=logits.device).expand(b)
                score = logits.gather(1, tgt[:, None]).sum()
                grads = list(torch.autograd.grad(score, attn))
            m = rollout_map([a.detach() for a in attn], n_prefix, query, head, discard_ratio, grads)  # head: a fusion
            return AttentionMaps(m.reshape(b, h, w).detach(), None, logits.detach(), tgt)
    finally:
        model.train(was_training)


@torch.no_grad()
def last_layer_attention(model: VisionTransformer, x: torch.Tensor, layer: int = -1) -> torch.Tensor:
    """Attention of the class token (or, for a model without one, of the mean query) to every patch in
    ``layer``, averaged over heads, as a map (B, h, w) that sums to 1 over the patches of each image."""
    return attention_maps(model, x, "raw", layer=layer).maps


def upsample_map(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, h, w) -> (B, H, W), bilinear, rescaled to [0, 1] per image for display."""
    up = F.interpolate(maps[:, None].float(), size=size, mode="bilinear", align_corners=False)[:, 0]
    lo = up.amin(dim=(1, 2), keepdim=True)
    hi = up.amax(dim=(1, 2), keepdim=True)
    return (up - lo) / (hi - lo).clamp_min(1e-12)


@dataclass
class AttentionFigure:
    """What :func:`attention_figure` returns.

    path:       the PNG written.
    maps:       the :class:`AttentionMaps` drawn (their logits give the prediction).
    prediction: "<class name> (<probability>)" of the predicted class; "" without class names.
    """

    path: Path
    maps: AttentionMaps
    prediction: str


def attention_figure(model: VisionTransformer, x: torch.Tensor, path: str | Path, *, method: str = "raw",
                     layer: int = -1, head: str | int = "mean", discard_ratio: float = 0.0, target: int | None = None,
                     first_layer: int = 0,
                     title: str = "", class_names: list[str] | None = None) -> AttentionFigure:
    """Write the figure of ``vitlab attention`` for one image ``x`` (1, C, H, W), normalised with the model's
    preprocessing: the image, titled ``title`` and the prediction; its map by ``method``; the per-head maps of
    ``layer`` (see :func:`attention_maps` for the arguments). ``class_names``: the model's own by default."""
    if x.ndim != 4 or x.shape[0] != 1:
        raise UsageError(f"attention_figure draws one image: expected x of shape (1, C, H, W), got {tuple(x.shape)}")
    names = list(model.class_names or []) if class_names is None else list(class_names)
    result = attention_maps(model, x, method, layer, head, discard_ratio, target, first_layer)
    heads = result.head_maps if result.head_maps is not None else attention_maps(model, x, "raw", layer).head_maps
    prediction = ""
    if names:
        p, c = result.logits.float().softmax(-1)[0].max(0)
        prediction = f"{names[c]} ({p:.2f})"
        title += f"\npredicted: {prediction}"
    size = tuple(x.shape[-2:])
    preprocessing = model.preprocessing or Preprocessing.default_for(model.config)
    path = plot_attention_figure(_display_image(preprocessing.denormalize(x[0])),
                                 upsample_map(result.maps, size)[0].cpu().numpy(),
                                 upsample_map(heads[0], size).cpu().numpy(), title,
                                 _map_title(method, layer % model.config.depth, head, result.target, names,
                                            first_layer),
                                 f"block {layer % model.config.depth}", path)
    return AttentionFigure(path, result, prediction)


def _map_title(method: str, block: int, head: str | int, target: torch.Tensor | None, names: list[str],
               first: int = 0) -> str:
    """E.g. "raw, block 11, heads mean" or "grad-rollout, blocks 0-11\nfor class tabby"."""
    if method == POOL_METHOD:
        return "attention pool" + (f", head {head}" if isinstance(head, int) else f", heads {head}")
    text = f"{method}, " + (f"block {block}" if method == "raw" else f"blocks {first}-{block}")
    if method == "raw":
        text += f", head {head}" if isinstance(head, int) else f", heads {head}"
    if target is not None:
        t = int(target[0])
        text += f"\nfor class {names[t] if t < len(names) else t}"
    return text


def _display_image(x: torch.Tensor) -> np.ndarray:
    """(C, H, W) in [0, 1] -> uint8 (H, W, C) for display, or (H, W) for one channel."""
    image = (x.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy()
    return image[..., 0] if image.shape[-1] == 1 else image
