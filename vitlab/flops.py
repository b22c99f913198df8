"""Analytic FLOP and parameter counts of a :class:`~vitlab.config.ViTConfig`, without building the model.

Shape letters are those of ``vitlab.model``: C input channels, H x W image, P patch size, h x w patch
grid (h = H / P), N tokens = class + register tokens + h*w, D width, Nh heads, Dh = D / Nh, M MLP
width, L depth; below also K classes, R representation_size (pre-logits width), F = R or D (the width
the head reads).

FLOPs are counted as ``torch.utils.flop_counter.FlopCounterMode`` counts them: one multiply-add is
2 FLOPs, and only matrix products and convolutions count (their bias additions do not). LayerNorm,
BatchNorm, softmax, GELU, tanh, the attention scale, residual additions, LayerScale and the 2D
resampling of the position table at another image size are all left out, as flop_counter leaves
them out; together they are well under 1% of a ViT's FLOPs. Note that timm's and fvcore's tables
list multiply-adds (MACs) under the name "FLOPs": their figures are half of these (ViT-B/16 at
224 px: 17.6 GMACs = 35.1 GFLOPs here).
"""

from __future__ import annotations

from dataclasses import dataclass

from vitlab.config import ViTConfig
from vitlab.errors import ConfigError


def count_flops(config: ViTConfig, img_size: int | tuple[int, int] | None = None) -> int:
    """Forward-pass FLOPs of one image (batch 1) at ``config.img_size`` or at ``img_size``.

    With T = h*w patches and N = T + prefix tokens, the terms are (2 FLOPs per multiply-add):

        patch projection  2 T D C P^2                       (Eq. 1's x_p E, a Conv2d with stride P)
        or conv stem      sum_i 2 H_i W_i c_out_i c_in_i 9  (3x3 convs of stride s_i, H_i = ceil(H_{i-1} / s_i))
                          + 2 T D c_last                    (the 1x1 projection)
        per block (x L):
            qkv           2 N D (3 D)
            q @ k^T       2 Nh N N Dh = 2 N^2 D
            attn @ v      2 Nh N N Dh = 2 N^2 D
            proj          2 N D D
            fc1, fc2      2 N D M each
        pre_logits        2 D R                             (if representation_size; on the pooled vector)
        head              2 F K                             (on the pooled vector)

    So a block costs 2 N (4 D^2 + 2 D M) + 4 N^2 D. Whatever the pool, the head reads one vector per
    image (the gap average itself is not counted). At another image size T and N follow the new grid,
    as in the model's forward pass.
    """
    return sum(flops_breakdown(config, img_size).values())


def _image_size(config: ViTConfig, img_size: int | tuple[int, int] | None) -> tuple[int, int]:
    if img_size is None:
        return config.img_size
    H, W = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
    if H % config.patch_size or W % config.patch_size:
        raise ConfigError(f"img_size={(H, W)} is not divisible by the patch size {config.patch_size}")
    return H, W


def _patches(config: ViTConfig, img_size: int | tuple[int, int] | None) -> int:
    """T = h * w, the patch tokens at ``img_size``."""
    H, W = _image_size(config, img_size)
    return (H // config.patch_size) * (W // config.patch_size)


def flops_breakdown(config: ViTConfig, img_size: int | tuple[int, int] | None = None) -> dict[str, int]:
    """The terms of :func:`count_flops` by part, summed over the blocks: ``patch_embed`` (projection or conv
    stem), ``qkv``, ``attention_matrix`` (q @ k^T and attn @ v), ``proj``, ``mlp``, ``pre_logits``, ``head``."""
    H, W = _image_size(config, img_size)
    P, C, D, M, L = config.patch_size, config.in_chans, config.embed_dim, config.mlp_dim, config.depth
    T = _patches(config, img_size)  # h * w patches
    N = T + config.num_prefix_tokens

    if config.stem == "patch":
        stem = 2 * T * D * C * P * P
    else:
        stem, h_i, w_i = 0, H, W
        for c_in, c_out, stride in config.conv_stem_layers:
            h_i, w_i = -(-h_i // stride), -(-w_i // stride)  # kernel 3, padding 1: ceil(H / stride)
            stem += 2 * h_i * w_i * c_out * c_in * 9
        stem += 2 * T * D * c_out  # 1x1 projection to D from the last conv's width
    return {
        "patch_embed": stem,
        "qkv": L * 2 * N * D * 3 * D,
        "attention_matrix": L * 2 * (2 * N * N * D),  # q @ k^T and attn @ v, summed over the heads
        "proj": L * 2 * N * D * D,
        "mlp": L * 2 * ((3 if config.mlp_layer == "swiglu" else 2) * N * D * M),  # fc1 (SwiGLU: 2 M wide), fc2
        "pre_logits": 2 * D * config.representation_size if config.representation_size else 0,
        "head": _head_flops(config, T),
    }


def _head_flops(config: ViTConfig, T: int) -> int:
    """The classifier (both of DeiT's), and the attention pool of pool='map' over the T patch tokens."""
    D, M = config.embed_dim, (config.attn_pool_mlp_dim or config.mlp_dim) if config.attn_pool_mlp else 0
    n = 2 * config.num_features * config.num_classes * (2 if config.pool == "distill" else 1)
    if config.pool == "map":  # q of one query, k and v of T tokens, its attention, proj, MLP
        n += 2 * (D * D + T * 2 * D * D + 2 * T * D + D * D + 2 * D * M)
    return n


def attention_macs(config: ViTConfig, img_size: int | tuple[int, int] | None = None,
                   window: int | None = None) -> int:
    """Multiply-adds of one block's self-attention over the h*w patch tokens, as Swin (Liu et al. 2021, Eq. 1-2)
    counts them: global MSA 4 hw C^2 + 2 (hw)^2 C; windowed W-MSA with ``window`` M: 4 hw C^2 + 2 M^2 hw C.
    (C = D here; the softmax is left out, and so are the prefix tokens, which Swin does not have.)"""
    hw, C = _patches(config, img_size), config.embed_dim
    mixing = 2 * hw * hw * C if window is None else 2 * window * window * hw * C
    return 4 * hw * C * C + mixing


def attention_matrix_bytes(config: ViTConfig, img_size: int | tuple[int, int] | None = None, batch: int = 1,
                           bytes_per_value: int = 4) -> int:
    """Memory of one block's attention probabilities (B, Nh, N, N), as the explicit path materialises them
    (the fused kernel does not)."""
    n = _patches(config, img_size) + config.num_prefix_tokens
    return batch * config.num_heads * n * n * bytes_per_value


def count_params(config: ViTConfig) -> int:
    """Trainable parameters of ``VisionTransformer(config)``, counted from the config (exact).

        patch projection  D C P^2 + D
        or conv stem      sum_i (9 c_in_i c_out_i + 2 c_out_i)   (bias-free convs + BatchNorm scale, shift)
                          + c_last D + D                         (1x1 projection)
        class token D, register tokens R_tok D, position table (class + h w) D if learned
        per block (x L):  2 D (norm1) + 3 D^2 [+ 3 D qkv bias] [+ 4 Dh qk_norm] + D^2 + D (proj)
                          [+ 2 D LayerScale] + 2 D (norm2) + D M + M (fc1; SwiGLU twice) + M D + D (fc2)
                          [+ 2 D, 2 M: EVA-02's norms inside the attention and the MLP]
        final norm        2 D (on all tokens, or fc_norm after pooling)
        RoPE-Mixed        L D (frequencies (f_x, f_y) per block, head and channel pair)
        pre_logits        D R + R;  head  F K + K

    BatchNorm running statistics are buffers, not parameters, and are not counted.
    """
    D, M, P, C = config.embed_dim, config.mlp_dim, config.patch_size, config.in_chans
    if config.stem == "patch":
        n = D * C * P * P + D
    else:
        layers = config.conv_stem_layers
        n = sum(9 * c_in * c_out + 2 * c_out for c_in, c_out, _ in layers)
        n += layers[-1][1] * D + D
    n += D * (int(config.class_token) + int(config.distill_token) + config.num_register_tokens)
    n += 0 if config.patch_bias or config.stem != "patch" else -D
    if config.pos_embed == "learned":
        h, w = config.grid_size
        n += (config.num_pos_prefix + h * w) * D
    norm = 1 if config.norm_layer == "rmsnorm" else 2  # parameters per feature: RMSNorm has no bias
    n += norm * D if config.norm_pre else 0
    n += norm * D if config.patch_norm else 0

    block = norm * D  # norm1
    block += 3 * D * D + (3 * D if config.qkv_bias else 0)  # qkv
    block += 2 * norm * config.head_dim if config.qk_norm else 0  # q_norm, k_norm
    block += D * D + (D if config.proj_bias else 0)  # proj
    block += 2 * D if config.layer_scale_init is not None else 0  # ls1, ls2
    block += norm * D  # norm2
    gated = 2 if config.mlp_layer == "swiglu" else 1  # SwiGLU's fc1 holds the gate and the value layer
    block += gated * D * M + M * D + (gated * M + D if config.mlp_bias else 0)  # fc1, fc2
    block += norm * D if config.attn_inner_norm else 0  # EVA-02's sub-LayerNorms
    block += norm * M if config.mlp_inner_norm else 0
    n += config.depth * block

    n += norm * D if config.final_norm or config.fc_norm else 0  # norm (or fc_norm)
    if config.pool == "map":  # attention pool: latent query, q, kv, proj; norm, MLP (M_pool wide) unless AIMv2's
        n += D + 3 * D * D + (3 * D if config.qkv_bias else 0) + D * D + D
        if config.attn_pool_mlp:
            Mp = config.attn_pool_mlp_dim or M
            n += norm * D + 2 * D * Mp + (Mp + D if config.mlp_bias else 0)
    n += config.depth * D if config.rope == "mixed" else 0  # RoPE-Mixed: (2, L, Nh, Dh/2) frequencies
    if config.representation_size:
        n += D * config.representation_size + config.representation_size
    if config.num_classes:
        heads = 2 if config.pool == "distill" else 1  # DeiT: the distillation head too
        n += heads * (config.num_features * config.num_classes + config.num_classes)
    return n


COST_PARTS = ("patch_embed", "qkv", "attention_matrix", "proj", "mlp", "head")  # the head includes pre_logits


@dataclass(frozen=True)
class Cost:
    """What one image costs a model at one input size (:func:`cost_at`)."""

    img_size: tuple[int, int]
    tokens: int  # N = patches + prefix tokens
    flops: int  # forward, one image (count_flops)
    share: dict[str, float]  # percent of ``flops`` by part, for COST_PARTS
    attention_matrix_bytes: int  # one block's (1, Nh, N, N) fp32 probabilities
    msa_macs: int  # global self-attention over the patches, all blocks (Swin's count)
    wmsa_macs: int  # windowed self-attention with the given window, all blocks


def cost_at(config: ViTConfig, img_size: int | tuple[int, int] | None = None, window: int = 7) -> Cost:
    """FLOPs by part, the attention matrix's memory, and global against windowed self-attention at ``img_size``."""
    H, W = _image_size(config, img_size)
    terms = flops_breakdown(config, (H, W))
    total = sum(terms.values())
    parts = {**terms, "head": terms["head"] + terms["pre_logits"]}
    return Cost(img_size=(H, W), tokens=_patches(config, (H, W)) + config.num_prefix_tokens, flops=total,
                share={p: 100 * parts[p] / total for p in COST_PARTS},
                attention_matrix_bytes=attention_matrix_bytes(config, (H, W)),
                msa_macs=attention_macs(config, (H, W)) * config.depth,
                wmsa_macs=attention_macs(config, (H, W), window) * config.depth)
