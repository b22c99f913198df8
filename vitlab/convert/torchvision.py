"""torchvision ``vit_b_16``, ``vit_l_32``, ... state dicts -> vitlab.

Name mapping (torchvision's ``nn.MultiheadAttention`` packs its input projection as rows [q; k; v],
which is exactly vitlab's fused ``qkv``):
    class_token                                     -> cls_token
    conv_proj                                       -> patch_embed.proj
    encoder.pos_embedding (class row first)         -> pos_embed
    encoder.layers.encoder_layer_{i}.               -> blocks.{i}.
      ln_1 / ln_2                                   ->   norm1 / norm2
      self_attention.in_proj_weight / in_proj_bias  ->   attn.qkv.weight / attn.qkv.bias
      self_attention.out_proj                       ->   attn.proj
      mlp.0 / mlp.3 (before torchvision 0.13: mlp.linear_1 / mlp.linear_2) -> mlp.fc1 / mlp.fc2
    encoder.ln                                      -> norm
    heads.pre_logits (Linear, then tanh)            -> pre_logits.0
    heads.head                                      -> head
The head count is not in the weights: it is read from the width (vit_b 12, vit_l 16, vit_h 16);
pass num_heads=... to vitlab.load for a custom ``VisionTransformer``. The conv stem
(``conv_stem_configs``, keys ``conv_proj.conv_bn_relu_*``) is not supported.
"""

from __future__ import annotations

import re
from typing import Any

import torch

from vitlab.convert import CheckpointError, Converted
from vitlab.preprocess import IMAGENET_MEAN, IMAGENET_STD, Preprocessing

TV_LAYER_NORM_EPS = 1e-6  # torchvision's partial(nn.LayerNorm, eps=1e-6)
# IMAGENET1K_V1 weights (224 px): resize 256 bilinear, centre-crop 224.
TV_RESIZE, TV_CROP = 256, 224

_TOP_NAMES = {
    "class_token": "cls_token",
    "conv_proj.weight": "patch_embed.proj.weight",
    "conv_proj.bias": "patch_embed.proj.bias",
    "encoder.pos_embedding": "pos_embed",
    "encoder.ln.weight": "norm.weight",
    "encoder.ln.bias": "norm.bias",
    "heads.pre_logits.weight": "pre_logits.0.weight",
    "heads.pre_logits.bias": "pre_logits.0.bias",
    "heads.head.weight": "head.weight",
    "heads.head.bias": "head.bias",
}
_LAYER = re.compile(r"^encoder\.layers\.encoder_layer_(\d+)\.(.+)$")
_LAYER_NAMES = {
    "ln_1.weight": "norm1.weight",
    "ln_1.bias": "norm1.bias",
    "self_attention.in_proj_weight": "attn.qkv.weight",
    "self_attention.in_proj_bias": "attn.qkv.bias",
    "self_attention.out_proj.weight": "attn.proj.weight",
    "self_attention.out_proj.bias": "attn.proj.bias",
    "ln_2.weight": "norm2.weight",
    "ln_2.bias": "norm2.bias",
    "mlp.0.weight": "mlp.fc1.weight",
    "mlp.0.bias": "mlp.fc1.bias",
    "mlp.3.weight": "mlp.fc2.weight",
    "mlp.3.bias": "mlp.fc2.bias",
    "mlp.linear_1.weight": "mlp.fc1.weight",  # MLPBlock before torchvision 0.13
    "mlp.linear_1.bias": "mlp.fc1.bias",
    "mlp.linear_2.weight": "mlp.fc2.weight",
    "mlp.linear_2.bias": "mlp.fc2.bias",
}


def is_format(sd: dict[str, Any]) -> bool:
    return "encoder.pos_embedding" in sd and any(k.startswith("conv_proj.") for k in sd)


def read_state_dict(sd: dict[str, torch.Tensor]) -> Converted:
    if any(k.startswith("conv_proj.conv_") for k in sd):
        raise CheckpointError("this torchvision ViT has a conv stem (conv_stem_configs, keys "
                              "conv_proj.conv_bn_relu_*); vitlab reads torchvision ViTs with the plain patch "
                              "projection only")
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        if key in _TOP_NAMES:
            out[_TOP_NAMES[key]] = value
            continue
        m = _LAYER.match(key)
        if m is not None and m.group(2) in _LAYER_NAMES:
            out[f"blocks.{m.group(1)}.{_LAYER_NAMES[m.group(2)]}"] = value
        else:
            out[key] = value  # not a ViT tensor: vitlab.load reports it as unexpected
    return Converted(out, "torchvision", hints=dict(norm_eps=TV_LAYER_NORM_EPS),
                     preprocessing=_preprocessing(out))


def _preprocessing(sd: dict[str, torch.Tensor]) -> Preprocessing | None:
    """torchvision's eval transforms for these weights: 224 px (IMAGENET1K_V1) resize 256 bilinear and crop 224;
    the larger SWAG end-to-end weights (384, 512, 518 px) resize straight to the input size, bicubic."""
    if "pos_embed" not in sd or "patch_embed.proj.weight" not in sd:
        return None
    side = round((sd["pos_embed"].shape[1] - 1) ** 0.5)  # torchvision: one class row, then a square grid
    size = side * sd["patch_embed.proj.weight"].shape[-1]
    if size == TV_CROP:
        return Preprocessing(img_size=(size, size), mean=IMAGENET_MEAN, std=IMAGENET_STD, interpolation="bilinear",
                             crop_pct=TV_CROP / TV_RESIZE)
    return Preprocessing(img_size=(size, size), mean=IMAGENET_MEAN, std=IMAGENET_STD, interpolation="bicubic",
                         crop_pct=1.0)
