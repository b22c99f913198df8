"""The original DINOv2 state dicts (facebookresearch/dinov2's ``DinoVisionTransformer``, torch.hub's
``dinov2_vit{s,b,l}14`` and ``dinov2_vit{s,b,l}14_reg``) -> vitlab.

Its names are timm's (timm's ViT was its starting point), with these differences:
    mask_token (1, D)                  dropped: it only replaces masked patches in training (iBOT), never in a plain
                                       forward pass
    register_tokens (1, R, D)          -> reg_token. The original inserts registers after the position embedding
                                       is added: they have no position, the class token keeps its row, which is
                                       vitlab's layout (no_embed_class=False)
    blocks.{chunk}.{i}.                -> blocks.{i}. (block_chunks > 0, for FSDP: each chunk is a list padded with
                                       Identity, so {i} is the block's global index). The released hub checkpoints
                                       are saved with block_chunks=0, flat blocks.{i}.
    blocks.{i}.mlp.w12 / w3            the giants' SwiGLU MLP (ffn_layer="swiglufused", rows [gate; value]) ->
                                       mlp.fc1 / mlp.fc2 (vitlab.layers.SwiGLU)
    cls_token, pos_embed (class row + grid), patch_embed.proj, blocks.{i}.norm1 / attn.qkv / attn.proj /
    ls1.gamma / norm2 / mlp.fc1 / mlp.fc2 / ls2.gamma, norm   as in timm (and vitlab)
There is no head: ``forward`` returns the normed class token (the original's ``x_norm_clstoken``) and
``forward_features`` every normed token (``x_norm_clstoken`` then ``x_norm_patchtokens``, registers between).

What the weights cannot show:
    num_heads       width / 64 (ViT-S 384: 6, ViT-B 768: 12, ViT-L 1024: 16, ViT-g 1536: 24)
    norm_eps        1e-6 (partial(nn.LayerNorm, eps=1e-6))
    img_size        the table's grid x 14: 518 for the released 37 x 37 tables
    pos_resample    how its ``interpolate_pos_encoding`` resamples the table at other sizes: without registers
                    "bicubic_offset" (interpolate_offset=0.1, antialias off: bicubic to the scale factor
                    (n + 0.1) / n_old); the register models (interpolate_offset=0, interpolate_antialias=True)
                    "bicubic_antialias"
    preprocessing   DINOv2's (ImageNet statistics, resize 256 / crop 224 bicubic), at the table's size
Recognised before timm's format (the names overlap): ``mask_token``, ``register_tokens`` or chunked block names.
"""

from __future__ import annotations

import math
import re
from typing import Any

import torch

from vitlab.convert import Converted
from vitlab.preprocess import Preprocessing

DINOV2_HEAD_WIDTH = 64
DINOV2_NORM_EPS = 1e-6
_CHUNKED = re.compile(r"^blocks\.(\d+)\.(\d+)\.(.+)$")


def is_format(sd: dict[str, Any]) -> bool:
    if "patch_embed.proj.weight" not in sd or "cls_token" not in sd:
        return False
    return "mask_token" in sd or "register_tokens" in sd or any(_CHUNKED.match(k) for k in sd)


def read_state_dict(sd: dict[str, torch.Tensor]) -> Converted:
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        key = key.replace(".mlp.w12.", ".mlp.fc1.").replace(".mlp.w3.", ".mlp.fc2.")  # SwiGLUFFNFused: same packing
        m = _CHUNKED.match(key)
        if key == "mask_token":
            continue
        if key == "register_tokens":
            out["reg_token"] = value
        elif m is not None:
            out[f"blocks.{m[2]}.{m[3]}"] = value  # blocks.{chunk}.{i}. -> blocks.{i}.
        else:
            out[key] = value
    registers = "reg_token" in out
    D, _, P, _ = out["patch_embed.proj.weight"].shape
    hints: dict[str, Any] = dict(norm_eps=DINOV2_NORM_EPS, no_embed_class=False, pool="token",
                                 pos_resample="bicubic_antialias" if registers else "bicubic_offset")
    if D % DINOV2_HEAD_WIDTH == 0:
        hints["num_heads"] = D // DINOV2_HEAD_WIDTH
    conv = Converted(out, "dinov2", hints=hints)
    if "pos_embed" in out:
        n = out["pos_embed"].shape[1] - 1  # a class row, then the grid
        side = math.isqrt(max(n, 0))
        if side and side * side == n:
            hints["img_size"] = (side * P, side * P)
            conv.preprocessing = Preprocessing.for_family("dinov2", hints["img_size"])
    return conv
