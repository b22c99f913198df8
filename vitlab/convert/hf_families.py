"""The transformers vision families ``vitlab.convert.hf`` reads: what each is called, which of its config fields
have which defaults, and how its tensor names become vitlab's.

The name mapping is written out family by family in ``vitlab.convert.hf``'s module docstring; the tables here
are its source. The families share one renaming table: no name means one thing in one family and another
thing in the next (``head.probe`` is SigLIP's only, ``layer_scale1`` DINOv2's only, ...).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import torch

from vitlab.convert import CheckpointError


@dataclass(frozen=True)
class Family:
    """One transformers model family as vitlab reads it."""

    name: str  # its model_type ("clip" also stands for clip_vision_model, "siglip" for siglip_vision_model)
    title: str  # the family's name in messages
    architectures: tuple[str, ...]  # the classes whose save_pretrained folders vitlab reads
    preprocessing: str  # its key in vitlab.preprocess.FAMILY_PREPROCESSING
    pos_resample: str  # how its interpolate_pos_encoding resamples the table (vitlab.config.POS_RESAMPLES)
    pos_prefix_rows: int  # position rows before the grid: the class (and distillation) token's
    # transformers' config defaults of the fields vitlab reads: an older config.json omits a field at its default,
    # and a bare state dict has no config at all.
    defaults: dict[str, Any]
    heads_by_width: dict[int, int] = field(default_factory=dict)  # head counts that width // 64 would get wrong


_VIT_DEFAULTS = dict(hidden_size=768, num_attention_heads=12, hidden_act="gelu", layer_norm_eps=1e-12,
                     image_size=224, patch_size=16, num_channels=3, qkv_bias=True)  # ViTConfig, DeiTConfig, ViTMAE
_DINOV2_DEFAULTS = {**_VIT_DEFAULTS, "layer_norm_eps": 1e-6, "mlp_ratio": 4}  # Dinov2Config: MLP width = ratio x D
FAMILIES = {f.name: f for f in (
    Family("vit", "ViT", ("ViTModel", "ViTForImageClassification", "ViTForMaskedImageModeling"), "vit", "bicubic",
           1, _VIT_DEFAULTS),
    Family("deit", "DeiT", ("DeiTModel", "DeiTForImageClassification", "DeiTForImageClassificationWithTeacher"),
           "deit", "bicubic", 2, _VIT_DEFAULTS),
    Family("dinov2", "DINOv2", ("Dinov2Model", "Dinov2ForImageClassification"), "dinov2", "bicubic", 1,
           {**_DINOV2_DEFAULTS, "patch_size": 14}),
    # Dinov2WithRegisters resamples with antialias=True, unlike every other family here.
    Family("dinov2_with_registers", "DINOv2 with registers",
           ("Dinov2WithRegistersModel", "Dinov2WithRegistersForImageClassification"), "dinov2", "bicubic_antialias",
           1, {**_DINOV2_DEFAULTS, "num_register_tokens": 4}),
    Family("clip", "CLIP", ("CLIPModel", "CLIPVisionModel", "CLIPVisionModelWithProjection"), "clip", "bicubic", 1,
           dict(hidden_size=768, num_attention_heads=12, hidden_act="quick_gelu", layer_norm_eps=1e-5,
                image_size=224, patch_size=32, num_channels=3)),
    Family("siglip", "SigLIP", ("SiglipModel", "SiglipVisionModel", "SiglipForImageClassification"), "siglip",
           "bicubic", 0, dict(hidden_size=768, num_attention_heads=12, hidden_act="gelu_pytorch_tanh",
                              layer_norm_eps=1e-6, image_size=224, patch_size=16, num_channels=3),
           heads_by_width={1152: 16}),  # SigLIP So400m: 16 heads of 72
    Family("vit_mae", "ViT-MAE", ("ViTMAEModel", "ViTMAEForPreTraining"), "mae", "bicubic", 1, _VIT_DEFAULTS),
    # No position table: RoPE on the patch tokens (rope="dinov3"); the key has no bias (key_bias=False).
    Family("dinov3_vit", "DINOv3", ("DINOv3ViTModel",), "dinov2", "bicubic", 0,
           dict(hidden_size=384, num_attention_heads=6, hidden_act="gelu", layer_norm_eps=1e-5, image_size=224,
                patch_size=16, num_channels=3, rope_theta=100.0, use_gated_mlp=False)),
    # RMSNorm everywhere (on the patch embeddings too), a SwiGLU MLP, no class token; a learned table of the grid,
    # or with is_native the MAE sin-cos grid computed at each size (pos_embed="sincos2d_mae"); use_head: an
    # attention pool whose query is the learned token itself, with no MLP after it (attn_pool_mlp=False).
    Family("aimv2_vision_model", "AIMv2", ("Aimv2Model", "Aimv2VisionModel"), "clip", "bicubic", 0,
           dict(hidden_size=1024, num_attention_heads=8, hidden_act="silu", rms_norm_eps=1e-5, image_size=224,
                patch_size=14, num_channels=3, qkv_bias=False, mlp_bias=False, use_head=True, is_native=False),
           heads_by_width={1024: 8, 1536: 12, 2048: 16, 3072: 24}),  # AIMv2's heads are 128 wide
)}
# config.json's model_type -> family. clip and siglip hold the vision tower's config in "vision_config".
MODEL_TYPES = {**{name: name for name in FAMILIES}, "clip_vision_model": "clip", "siglip_vision_model": "siglip",
               "aimv2": "aimv2_vision_model"}
NESTED_MODEL_TYPES = ("clip", "siglip", "aimv2")

# The base model's prefix, on a task model's tensors (ViTForImageClassification's "vit.", CLIP's "vision_model.").
_PREFIXES = ("vit.", "deit.", "dinov2_with_registers.", "dinov2.", "vision_model.", "model.")  # DINOv3: model.layer
# Per-layer names as save_pretrained writes them (transformers 4 and 5) and as transformers 5 holds them in memory.
LAYER = re.compile(r"^(?:encoder\.layers?|layers?)\.(\d+)\.(.+)$")
_LAYER_NAMES = {
    "layernorm_before": "norm1", "layernorm_after": "norm2",  # ViT, DeiT, MAE
    "norm1": "norm1", "norm2": "norm2",  # DINOv2
    "layer_norm1": "norm1", "layer_norm2": "norm2",  # CLIP, SigLIP
    "rms_norm1": "norm1", "rms_norm2": "norm2", "attention.out_proj": "attn.proj",  # AIMv2
    "attention.output.dense": "attn.proj", "attention.o_proj": "attn.proj", "self_attn.out_proj": "attn.proj",
    "intermediate.dense": "mlp.fc1", "output.dense": "mlp.fc2",  # ViT, DeiT, MAE as saved
    "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2",
}
_QKV_NAMES = {"attention.attention.query": "q", "attention.attention.key": "k", "attention.attention.value": "v",
              "attention.q_proj": "q", "attention.k_proj": "k", "attention.v_proj": "v",
              "self_attn.q_proj": "q", "self_attn.k_proj": "k", "self_attn.v_proj": "v"}
_LAYER_SCALES = {"layer_scale1.lambda1": "ls1.gamma", "layer_scale2.lambda1": "ls2.gamma"}  # DINOv2
# DINOv2 giant's SwiGLU MLP (use_swiglu_ffn=True): transformers 4's packed names (weights_in rows [gate; value]),
# then 5's separate gate and value layers, which vitlab packs into fc1 as [gate; value].
_SWIGLU = {"mlp.weights_in": "mlp.fc1", "mlp.weights_out": "mlp.fc2", "mlp.down_proj": "mlp.fc2",
           "ffn.down_proj": "mlp.fc2"}  # AIMv2: ffn.*
_SWIGLU_HALVES = {"mlp.gate_proj": 0, "mlp.up_proj": 1, "ffn.gate_proj": 0, "ffn.up_proj": 1}
_TOP_NAMES = {
    "embeddings.cls_token": "cls_token",
    "embeddings.distillation_token": "dist_token",
    "embeddings.register_tokens": "reg_token",
    "embeddings.position_embeddings": "pos_embed",
    "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
    "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
    "embeddings.patch_embedding.weight": "patch_embed.proj.weight",  # CLIP, SigLIP
    "embeddings.patch_embedding.bias": "patch_embed.proj.bias",  # SigLIP (CLIP's has none)
    "embeddings.patch_embeddings.weight": "patch_embed.proj.weight",  # DINOv3
    "embeddings.patch_embeddings.bias": "patch_embed.proj.bias",
    "embeddings.patch_embed.weight": "patch_embed.proj.weight",  # AIMv2
    "embeddings.patch_embed.bias": "patch_embed.proj.bias",
    "embeddings.rms_norm.weight": "patch_embed.norm.weight",
    "rms_norm.weight": "norm.weight",
    "head.cls_token": "attn_pool.latent",  # AIMv2's pool: this token is the query (vitlab's q: the identity)
    "head.output_proj.weight": "attn_pool.proj.weight",
    "head.output_proj.bias": "attn_pool.proj.bias",
    "pre_layrnorm.weight": "norm_pre.weight",  # CLIP (transformers' spelling)
    "pre_layrnorm.bias": "norm_pre.bias",
    "layernorm.weight": "norm.weight",
    "layernorm.bias": "norm.bias",
    "post_layernorm.weight": "norm.weight",  # CLIP, SigLIP
    "post_layernorm.bias": "norm.bias",
    "pooler.dense.weight": "pre_logits.0.weight",
    "pooler.dense.bias": "pre_logits.0.bias",
    "classifier.weight": "head.weight",
    "classifier.bias": "head.bias",
    "cls_classifier.weight": "head.weight",  # DeiTForImageClassificationWithTeacher
    "cls_classifier.bias": "head.bias",
    "distillation_classifier.weight": "head_dist.weight",
    "distillation_classifier.bias": "head_dist.bias",
    "head.probe": "attn_pool.latent",  # SigLIP's attention-pooling head
    "head.attention.out_proj.weight": "attn_pool.proj.weight",
    "head.attention.out_proj.bias": "attn_pool.proj.bias",
    "head.layernorm.weight": "attn_pool.norm.weight",
    "head.layernorm.bias": "attn_pool.norm.bias",
    "head.mlp.fc1.weight": "attn_pool.mlp.fc1.weight",
    "head.mlp.fc1.bias": "attn_pool.mlp.fc1.bias",
    "head.mlp.fc2.weight": "attn_pool.mlp.fc2.weight",
    "head.mlp.fc2.bias": "attn_pool.mlp.fc2.bias",
}
# Dropped without a word: the masked-image-modelling token (replaces patches under bool_masked_pos only) and the
# position_ids buffer older transformers saved with CLIP and SigLIP.
_SILENTLY_DROPPED = ("embeddings.mask_token", "embeddings.position_ids")
_OTHER_TOWER = ("text_model.", "text_projection.", "logit_scale", "logit_bias")  # CLIPModel's, SiglipModel's


def base_name(key: str) -> str:
    """A tensor name without the base model's prefix."""
    for prefix in _PREFIXES:
        if key.startswith(prefix):
            return key[len(prefix):]
    return key


def family_of_keys(keys: Any) -> str:
    """The family a bare state dict's names show (no config.json says it). A ViTMAEModel without its decoder has
    a ViT's names and reads as "vit"."""
    names = {base_name(k) for k in keys}
    if "embeddings.class_embedding" in names:
        return "clip"
    if "embeddings.patch_embed.weight" in names:
        return "aimv2_vision_model"
    if "embeddings.patch_embeddings.weight" in names:
        return "dinov3_vit"
    if "embeddings.patch_embedding.weight" in names:
        return "siglip"
    if "embeddings.distillation_token" in names:
        return "deit"
    if any(".layer_scale1." in n for n in names):
        return "dinov2_with_registers" if "embeddings.register_tokens" in names else "dinov2"
    if any(k.startswith("decoder.decoder_") for k in keys):
        return "vit_mae"
    return "vit"


@dataclass
class Renamed:
    state_dict: dict[str, torch.Tensor]  # vitlab's names; tensors no rule names are passed through as they are
    other_tower: list[str] = field(default_factory=list)  # CLIPModel's, SiglipModel's text tower, dropped
    decoder: list[str] = field(default_factory=list)  # ViTMAEForPreTraining's pixel decoder, dropped
    unused_map_head: list[str] = field(default_factory=list)  # SiglipForImageClassification's, dropped


def rename(sd: dict[str, torch.Tensor], family: str) -> Renamed:
    """A transformers state dict of ``family`` -> vitlab's names (see ``vitlab.convert.hf``'s table)."""
    result = Renamed({})
    out = result.state_dict
    qkv: dict[int, dict[str, dict[str, torch.Tensor]]] = {}  # layer -> "weight"/"bias" -> "q"/"k"/"v" -> tensor
    halves: dict[tuple[int, str], list[torch.Tensor | None]] = {}  # (layer, param) -> SwiGLU's [gate, value]
    pool_kv: dict[str, dict[str, torch.Tensor]] = {}  # AIMv2's pool: "weight"/"bias" -> "k"/"v" -> tensor
    siglip_classifier = family == "siglip" and "classifier.weight" in sd
    for key, value in sd.items():
        name = base_name(key)
        if name in _SILENTLY_DROPPED:
            continue
        if key.startswith(_OTHER_TOWER):
            result.other_tower.append(key)
        elif family == "vit_mae" and key.startswith("decoder."):
            result.decoder.append(key)
        elif siglip_classifier and name.startswith("head."):
            result.unused_map_head.append(key)  # SiglipForImageClassification averages the tokens instead
        elif name == "embeddings.class_embedding":
            out["cls_token"] = value.reshape(1, 1, -1)  # (D,) -> (1, 1, D)
        elif name == "embeddings.position_embedding.weight":
            out["pos_embed"] = value.unsqueeze(0)  # (N, D) -> (1, N, D)
        elif name == "visual_projection.weight":
            out["head.weight"] = value  # (P, D), no bias in CLIP
            out["head.bias"] = value.new_zeros(value.shape[0])
        elif name in ("head.k_proj.weight", "head.k_proj.bias", "head.v_proj.weight", "head.v_proj.bias"):
            pool_kv.setdefault(name.rpartition(".")[2], {})[name.split(".")[1][0]] = value  # AIMv2's pool
        elif name in ("head.attention.in_proj_weight", "head.attention.in_proj_bias"):
            param, D = name.rpartition("_")[2], value.shape[0] // 3  # rows [q; k; v], as nn.MultiheadAttention's
            out[f"attn_pool.q.{param}"], out[f"attn_pool.kv.{param}"] = value[:D], value[D:]
        elif name in _TOP_NAMES:
            if name == "embeddings.register_tokens" and value.shape[1] == 0:
                continue  # DINOv3 without registers still saves a (1, 0, D) tensor
            out[_TOP_NAMES[name]] = value
        elif (m := LAYER.match(name)) is not None:
            _rename_layer(int(m.group(1)), m.group(2), value, key, out, qkv, halves)
        else:
            out[key] = value  # not a tensor vitlab knows: vitlab.load reports it as unexpected
    for i, params in qkv.items():
        for param, parts in params.items():
            if param == "bias" and set(parts) == {"q", "v"}:  # DINOv3's key has no bias (key_bias=False)
                parts["k"] = torch.zeros_like(parts["q"])
            if set(parts) != {"q", "k", "v"}:
                raise CheckpointError(f"layer {i} has attention {param} tensors for {sorted(parts)} only (BEiT's "
                                      "layout?); vitlab expects query, key and value")
            out[f"blocks.{i}.attn.qkv.{param}"] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)  # (3D, ...)
    for param, parts in pool_kv.items():
        if set(parts) != {"k", "v"}:
            raise CheckpointError(f"the attention pool has a {param} for {sorted(parts)} only; AIMv2's has k and v")
        out[f"attn_pool.kv.{param}"] = torch.cat([parts["k"], parts["v"]], dim=0)  # (2D, ...)
        D = parts["k"].shape[0]  # the query is the token itself: q = identity (no bias)
        out[f"attn_pool.q.{param}"] = torch.eye(D, dtype=parts["k"].dtype) if param == "weight" else \
            parts["k"].new_zeros(D)
    for (i, param), (gate, value) in halves.items():
        if gate is None and value is not None:  # DINOv3's plain MLP: up_proj -> fc1 (down_proj -> fc2)
            out[f"blocks.{i}.mlp.fc1.{param}"] = value
            continue
        if gate is None or value is None:
            raise CheckpointError(f"layer {i} has only one of the SwiGLU MLP's gate_proj and up_proj {param}s")
        out[f"blocks.{i}.mlp.fc1.{param}"] = torch.cat([gate, value], dim=0)  # (2 hidden, ...): [gate; value]
    return result


def _rename_layer(i: int, rest: str, value: torch.Tensor, key: str, out: dict[str, torch.Tensor],
                  qkv: dict[int, dict[str, dict[str, torch.Tensor]]],
                  halves: dict[tuple[int, str], list[torch.Tensor | None]]) -> None:
    if rest in _LAYER_SCALES:
        out[f"blocks.{i}.{_LAYER_SCALES[rest]}"] = value
        return
    module, _, param = rest.rpartition(".")
    if module in _SWIGLU_HALVES:  # packed into fc1 by rename
        halves.setdefault((i, param), [None, None])[_SWIGLU_HALVES[module]] = value
    elif module in _SWIGLU:
        out[f"blocks.{i}.{_SWIGLU[module]}.{param}"] = value
    elif module in _QKV_NAMES:
        qkv.setdefault(i, {}).setdefault(param, {})[_QKV_NAMES[module]] = value
    elif module in _LAYER_NAMES:
        out[f"blocks.{i}.{_LAYER_NAMES[module]}.{param}"] = value
    else:
        out[key] = value
