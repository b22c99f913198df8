"""Hugging Face transformers vision models -> vitlab: ViT, DeiT, DINOv2 (with and without registers), DINOv3,
AIMv2, the vision towers of CLIP and SigLIP, and the ViT-MAE encoder.

Two entry points. A ``save_pretrained`` folder (``read_folder``): ``config.json`` names the family
(``model_type``) and states heads, LayerNorm eps, image size, activation and labels; ``preprocessor_config.json``,
when present, the preprocessing, else the family's published one (``Preprocessing.for_family``, silently: the
config names the family). A bare state dict (``read_state_dict``): the family is recognised by its tensor names,
the architecture read off the shapes, and what only a config could say (eps, activation, the head count of an
unusual width, the preprocessing) is taken from transformers' defaults for the family, in a one-line notice
(``AssumedSettingsNotice``, as for the other formats' bare state dicts).

Readable (model_type: architectures; vitlab's pool):
    vit                    ViTModel, ViTForImageClassification, ViTForMaskedImageModeling; token
    deit                   DeiTModel, DeiTForImageClassification: token (the class token only, as transformers);
                           DeiTForImageClassificationWithTeacher: distill ((head(class) + head_dist(dist)) / 2)
    dinov2                 Dinov2Model: token; Dinov2ForImageClassification: token_gap ([class; mean of patches]).
                           use_swiglu_ffn=True (the giant models): SwiGLU (weights_in, or gate_proj and up_proj,
                           -> mlp.fc1 as [gate; value]; weights_out / down_proj -> mlp.fc2)
    dinov2_with_registers  Dinov2WithRegistersModel, ...ForImageClassification (the mean leaves the registers out,
                           in both)
    clip                   CLIPModel: its vision tower and visual_projection (the text tower is left out, in a note)
    clip_vision_model      CLIPVisionModel, CLIPVisionModelWithProjection; token
    siglip                 SiglipModel: its vision tower (the text tower is left out, in a note);
                           SiglipForImageClassification: gap (the mean of all tokens, its unused MAP head left out)
    siglip_vision_model    SiglipVisionModel: map; with vision_use_head=False transformers has no pooled output,
                           vitlab pools gap (SiglipForImageClassification's mean) and forward_features matches
    dinov3_vit             DINOv3ViTModel: token; rope="dinov3" at the config's rope_theta (a bare file: 100, in the
                           notice), registers, use_gated_mlp -> SwiGLU; the key has no bias (zeros in qkv)
    aimv2_vision_model     Aimv2VisionModel: map (use_head; the pool's query is its cls_token, q = identity, and
                           no MLP follows: attn_pool_mlp=False), else gap; RMSNorm, patch_norm, SwiGLU, biases as
                           qkv_bias (also the output projection's) and mlp_bias; is_native: pos_embed="sincos2d_mae"
    aimv2                  Aimv2Model: its vision tower and visual_projection (-> head), the text tower left out
    vit_mae                ViTMAEModel, ViTMAEForPreTraining (the encoder; its pixel decoder is left out, in a
                           warning); token. vitlab has no masking: it runs the encoder on every patch in order,
                           which is transformers' ViTMAEModel with mask_ratio=0 and noise that keeps the order
                           (noise=torch.arange(num_patches)); its default random masking has no counterpart.

Name mapping. The base model's prefix (``vit.``, ``deit.``, ``dinov2.``, ``dinov2_with_registers.``,
``vision_model.``, DINOv3's ``model.``) comes off first; layer names as save_pretrained writes them, transformers
5's in-memory names in brackets (the tables are in ``vitlab.convert.hf_families``):
  Embeddings
    embeddings.cls_token                           -> cls_token                     ViT, DeiT, DINOv2, MAE
    embeddings.class_embedding (D,)                -> cls_token (1, 1, D)           CLIP
    embeddings.distillation_token                  -> dist_token                    DeiT
    embeddings.register_tokens                     -> reg_token (registers have no position row) DINOv2 w/ reg.
    embeddings.position_embeddings                 -> pos_embed, rows [class, (distillation,) grid]
    embeddings.position_embedding.weight (N, D)    -> pos_embed (1, N, D): CLIP [class, grid], SigLIP [grid]
    embeddings.patch_embeddings.projection         -> patch_embed.proj
    embeddings.patch_embedding                     -> patch_embed.proj (CLIP's has no bias: patch_bias=False)
    embeddings.patch_embeddings                    -> patch_embed.proj             DINOv3
    embeddings.patch_embed; embeddings.rms_norm    -> patch_embed.proj; patch_embed.norm  AIMv2
    pre_layrnorm                                   -> norm_pre                      CLIP
  Blocks: encoder.layer.{i}. (CLIP, SigLIP: encoder.layers.{i}.)  -> blocks.{i}.     [layers.{i}.]
    layernorm_before / layernorm_after             -> norm1 / norm2                 ViT, DeiT, MAE
    norm1 / norm2; layer_norm1 / layer_norm2       -> norm1 / norm2                 DINOv2; CLIP, SigLIP
    rms_norm1 / rms_norm2; attention.out_proj      -> norm1 / norm2; attn.proj      AIMv2
    attention.attention.query, key, value          -> attn.qkv, rows [q; k; v]      [attention.q_proj, ...]
    self_attn.q_proj, k_proj, v_proj               -> attn.qkv, rows [q; k; v]      CLIP, SigLIP
    attention.output.dense; self_attn.out_proj     -> attn.proj                     [attention.o_proj]
    intermediate.dense / output.dense              -> mlp.fc1 / mlp.fc2             [mlp.fc1 / mlp.fc2]
    mlp.fc1 / mlp.fc2                              -> mlp.fc1 / mlp.fc2             DINOv2, CLIP, SigLIP
    layer_scale1.lambda1 / layer_scale2.lambda1    -> ls1.gamma / ls2.gamma         DINOv2, DINOv3
    mlp.weights_in / weights_out                   -> mlp.fc1 / mlp.fc2 (SwiGLU, rows [gate; value]) DINOv2 giant
    mlp.gate_proj + mlp.up_proj / mlp.down_proj    -> mlp.fc1 as [gate; up] / mlp.fc2; up_proj alone -> fc1
                                                      (DINOv3's plain MLP); AIMv2's ffn.* the same
  Final norm and heads
    layernorm; post_layernorm                      -> norm. CLIP norms the pooled class token only, which gives
                                                      the same pooled output (its last_hidden_state is before it);
                                                      SigLIP norms every token, as vitlab
    pooler.dense (Linear + tanh on the class token) -> pre_logits.0 (the paper's representation layer) ViT, DeiT
    classifier                                     -> head
    cls_classifier / distillation_classifier       -> head / head_dist              DeiT with teacher
    visual_projection (no bias)                    -> head, bias 0: num_classes = projection width  CLIP
    head.probe                                     -> attn_pool.latent              SigLIP
    head.attention.in_proj_weight / _bias [q; k; v] -> attn_pool.q (rows :D), attn_pool.kv (rows D:)
    head.attention.out_proj; head.layernorm        -> attn_pool.proj; attn_pool.norm
    head.mlp.fc1 / fc2                             -> attn_pool.mlp.fc1 / fc2
    rms_norm                                       -> norm                          AIMv2
    head.cls_token; head.k_proj + head.v_proj      -> attn_pool.latent (q: identity); attn_pool.kv as [k; v]  AIMv2
    head.output_proj                               -> attn_pool.proj                AIMv2
``embeddings.mask_token`` is dropped: it only replaces patches under ``bool_masked_pos`` (masked image modelling)
and never enters a plain forward pass; so is the ``position_ids`` buffer older CLIP and SigLIP files hold. A
``ViTForMaskedImageModeling`` decoder is passed through under its own names, so ``vitlab.load`` reports it as
unexpected (``strict=False`` loads the encoder). A pooler keeps its pooler_act (``representation_act``: tanh, relu,
gelu or silu); one of another activation is dropped, with a warning.

Position tables are resampled as the family's own ``interpolate_pos_encoding`` does (``pos_resample``): plain
bicubic for all but Dinov2WithRegisters, which antialiases; ``vitlab.load(..., pos_resample=...)`` overrides it.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from vitlab.config import REPRESENTATION_ACTS
from vitlab.convert import (
    HEADS_BY_WIDTH,
    AssumedSettingsNotice,
    CheckpointError,
    Converted,
    first_line,
    json_object,
    read_json,
)
from vitlab.convert.fit import weights_say
from vitlab.convert.hf_families import (
    FAMILIES,
    MODEL_TYPES,
    NESTED_MODEL_TYPES,
    Family,
    base_name,
    family_of_keys,
    rename,
)
from vitlab.preprocess import FAMILY_PREPROCESSING, INCEPTION_MEAN, INCEPTION_STD, Preprocessing

HF_ACTS = {"gelu": "gelu", "gelu_pytorch_tanh": "gelu_tanh", "gelu_new": "gelu_tanh", "quick_gelu": "quick_gelu",
           "relu": "relu", "silu": "silu"}
PIL_RESAMPLE = {0: "nearest", 2: "bilinear", 3: "bicubic"}  # PIL.Image.Resampling codes HF stores
_PATCH_KEYS = ("embeddings.patch_embeddings.projection.weight", "embeddings.patch_embedding.weight",
               "embeddings.patch_embeddings.weight", "embeddings.patch_embed.weight")
# config.json fields the weights state too: (config.json's name, the ViTConfig field the shapes give)
_ALSO_IN_WEIGHTS = (("hidden_size", "embed_dim"), ("num_hidden_layers", "depth"), ("patch_size", "patch_size"),
                    ("num_channels", "in_chans"), ("intermediate_size", "mlp_dim"),
                    ("num_register_tokens", "num_register_tokens"))


def is_format(sd: dict[str, Any]) -> bool:
    return any(base_name(k) in _PATCH_KEYS for k in sd)


def _pool(family: str, sd: dict[str, torch.Tensor]) -> str:
    """What transformers' model of these tensors pools (see the table in the module docstring)."""
    if family == "deit":
        return "distill" if "head_dist.weight" in sd else "token"
    if family in ("dinov2", "dinov2_with_registers"):
        return "token_gap" if "head.weight" in sd else "token"
    if family in ("siglip", "aimv2_vision_model"):
        return "map" if "attn_pool.latent" in sd else "gap"
    return "token"


def _convert(sd: dict[str, torch.Tensor], family: Family) -> dict[str, torch.Tensor]:
    """Rename, and say in one warning each what of a checkpoint vitlab leaves out."""
    renamed = rename(sd, family.name)
    if renamed.other_tower:
        warnings.warn(f"{family.title}: vitlab reads the vision tower; the text tower, text projection and logit "
                      f"scale ({len(renamed.other_tower)} tensors) are left out", stacklevel=4)
    if renamed.decoder:
        warnings.warn(f"{family.title}: the pixel decoder of ViTMAEForPreTraining ({len(renamed.decoder)} tensors) "
                      "is left out; vitlab reads the encoder", stacklevel=4)
    if renamed.unused_map_head:
        warnings.warn(f"SiglipForImageClassification: its attention-pooling head ({len(renamed.unused_map_head)} "
                      "tensors) is left out; its classifier reads the mean of the final tokens (pool='gap')",
                      stacklevel=4)
    return renamed.state_dict


def read_state_dict(sd: dict[str, torch.Tensor]) -> Converted:
    """A bare transformers state dict. The family comes from its names, the architecture from the shapes, and
    what only its config.json could say from transformers' defaults for the family, in a one-line notice."""
    family = FAMILIES[family_of_keys(sd)]
    out = _convert(sd, family)
    act = HF_ACTS[family.defaults["hidden_act"]]
    eps = family.defaults.get("layer_norm_eps", family.defaults.get("rms_norm_eps"))
    hints: dict[str, Any] = dict(norm_eps=eps, mlp_act=act, pos_resample=family.pos_resample,
                                 pool=_pool(family.name, out))
    if family.pos_prefix_rows:  # transformers gives the class (and distillation) token a row, always
        hints["no_embed_class"] = False
    norm = "LayerNorm" if "blocks.0.norm1.bias" in out else "RMSNorm"  # (no bias: AIMv2's RMSNorm)
    said = f"{norm} eps {hints['norm_eps']:g}, the {act} MLP activation"
    fields = ["norm_eps", "mlp_act"]
    fc1, fc2 = out.get("blocks.0.mlp.fc1.weight"), out.get("blocks.0.mlp.fc2.weight")
    if fc1 is not None and fc2 is not None and fc1.shape[0] == 2 * fc2.shape[-1]:  # use_swiglu_ffn: no activation
        said, fields = f"{norm} eps {hints['norm_eps']:g}, a SwiGLU MLP (SiLU gate)", ["norm_eps"]
    width = out["patch_embed.proj.weight"].shape[0] if "patch_embed.proj.weight" in out else None
    heads = family.heads_by_width.get(width) or HEADS_BY_WIDTH.get(width)
    if heads is None and width and width % 64 == 0:
        heads = width // 64
    if heads:  # else no rule: the load asks for num_heads
        hints["num_heads"] = heads
        said += f", {heads} heads for width {width}"
        fields.append("num_heads")
    if family.name == "aimv2_vision_model" and "pos_embed" not in out:  # is_native: no table, always MAE's sin-cos
        hints["pos_embed"] = "sincos2d_mae"
    if family.name == "dinov3_vit":  # DINOv3's RoPE, always; its base is the config's
        hints.update(rope="dinov3", rope_theta=family.defaults["rope_theta"])
        said += f", RoPE base rope_theta={family.defaults['rope_theta']:g}"
        fields.append("rope_theta")
    if "pre_logits.0.weight" in out:
        said += (" and a tanh pooler (transformers' pooler_act: representation_act='tanh'; one of another "
                 f"activation than {', '.join(REPRESENTATION_ACTS)} vitlab cannot run)")
        fields.append("representation_act")
    if family.name == "clip" and "head.weight" in out and "visual_projection.weight" not in {base_name(k) for k in sd}:
        raise CheckpointError("a bare transformers CLIPForImageClassification state dict: its classifier reads the "
                              "mean of the patch tokens before the final LayerNorm, which vitlab has no counterpart "
                              "for")
    conv = Converted(out, "hf", hints=hints)
    size = _table_size(out, family)
    if size is not None:
        conv.preprocessing = Preprocessing.for_family(family.preprocessing, size)
        mean, std, crop_pct, interp = FAMILY_PREPROCESSING[family.preprocessing]
        said += (f" and {family.preprocessing}'s preprocessing (mean {_floats(mean)}, std {_floats(std)}, "
                 f"crop_pct {crop_pct}, {interp})")
    warnings.warn(AssumedSettingsNotice(
        f"a bare transformers {family.title} state dict has no config.json: vitlab assumes {said}, transformers' "
        f"defaults for the family; pass {', '.join(f + '=' for f in fields)} to vitlab.load if they differ, or load "
        "its save_pretrained folder", tuple(fields)), stacklevel=3)
    return conv


def _floats(values: tuple[float, ...]) -> str:
    return "(" + ", ".join(f"{v:.3g}" for v in values) + ")"


def _table_size(sd: dict[str, torch.Tensor], family: Family) -> tuple[int, int] | None:
    """The image size a square position table is laid out for, or None (no table, or not a square grid)."""
    if "pos_embed" not in sd or "patch_embed.proj.weight" not in sd:
        return None
    n = sd["pos_embed"].shape[1] - family.pos_prefix_rows
    side, P = math.isqrt(max(n, 0)), sd["patch_embed.proj.weight"].shape[-1]
    return (side * P, side * P) if side and side * side == n else None


def _pair(value: Any, what: str) -> tuple[int, int]:
    if isinstance(value, int):
        return (value, value)
    if isinstance(value, (list, tuple)) and len(value) == 2:
        return (int(value[0]), int(value[1]))
    raise CheckpointError(f"config.json: {what}={value!r} is neither an int nor a (height, width) pair")


def family_config(hub_cfg: dict[str, Any]) -> tuple[Family, dict[str, Any], str]:
    """config.json -> the family, the vision config (CLIPModel's and SiglipModel's ``vision_config``) and the
    prefix that names its fields in messages. An unknown model_type or architecture is an error listing what is
    readable."""
    model_type = hub_cfg.get("model_type")
    if model_type not in MODEL_TYPES:
        raise CheckpointError(f"config.json has model_type={model_type!r}; vitlab reads transformers' "
                              f"{', '.join(repr(t) for t in MODEL_TYPES)}")
    family = FAMILIES[MODEL_TYPES[model_type]]
    archs = [a for a in hub_cfg.get("architectures") or [] if a not in family.architectures]
    if archs:
        raise CheckpointError(f"config.json names architecture(s) {archs}; of model_type {model_type!r} vitlab reads "
                              f"{', '.join(family.architectures)}")
    if model_type not in NESTED_MODEL_TYPES:
        return family, hub_cfg, ""
    return family, json_object(hub_cfg.get("vision_config") or {}, "config.json field 'vision_config'"), \
        "vision_config."


def hints_from_config(hub_cfg: dict[str, Any]) -> dict[str, Any]:
    """ViTConfig fields stated by a transformers ``config.json`` (or, for a field it omits, transformers' default
    for the family); unsupported settings raise."""
    family, cfg, where = family_config(hub_cfg)

    def get(key: str) -> Any:
        return cfg.get(key, family.defaults.get(key))

    act = get("hidden_act")
    # DINOv2 giant's SwiGLU (its hidden_act is unused), DINOv3's gated MLP (SiLU), AIMv2's: vitlab.layers.SwiGLU
    aimv2 = family.name == "aimv2_vision_model"
    swiglu = bool(cfg.get("use_swiglu_ffn")) or bool(cfg.get("use_gated_mlp")) or aimv2
    if (cfg.get("use_gated_mlp") or aimv2) and act != "silu":
        raise CheckpointError(f"config.json: use_gated_mlp with hidden_act={act!r}; vitlab's gated MLP is SwiGLU "
                              "(SiLU)")
    if swiglu:
        act = "gelu"  # mlp_act is unused with SwiGLU: its default
    if act not in HF_ACTS:
        raise CheckpointError(f"config.json: {where}hidden_act={act!r} is not supported; vitlab's MLP has "
                              f"{', '.join(HF_ACTS)} (exact, tanh-approximated or sigmoid-approximated GELU)")
    width, heads = get("hidden_size"), get("num_attention_heads")
    head_dim = cfg.get("head_dim")
    if head_dim is not None and head_dim * heads != width:
        raise CheckpointError(f"config.json: {where}head_dim={head_dim} x {heads} heads != hidden_size={width}; "
                              "vitlab's attention has width = heads x head width")
    patch = _pair(get("patch_size"), "patch_size")
    if patch[0] != patch[1]:
        raise CheckpointError(f"config.json: non-square patches {patch} are not supported")
    eps = get("rms_norm_eps") if family.name == "aimv2_vision_model" else get("layer_norm_eps")
    hints = dict(num_heads=heads, norm_eps=eps, img_size=_pair(get("image_size"), "image_size"),
                 in_chans=get("num_channels"), mlp_act=HF_ACTS[act], pos_resample=family.pos_resample)
    if "qkv_bias" in family.defaults:  # CLIP's and SigLIP's attention always has biases
        hints["qkv_bias"] = get("qkv_bias")
    if swiglu:
        hints["mlp_layer"] = "swiglu"
    if family.name == "dinov3_vit":
        hints.update(rope="dinov3", rope_theta=float(get("rope_theta")), qkv_bias=bool(cfg.get("query_bias", True)))
        if not cfg.get("apply_layernorm", True) or cfg.get("proj_bias") is False or cfg.get("mlp_bias") is False:
            raise CheckpointError("config.json: apply_layernorm=False, proj_bias=False or mlp_bias=False: vitlab's "
                                  "DINOv3 has the final norm and these biases")
    if aimv2:  # RMSNorm, also on the patch embeddings; the attention's output projection has a bias as q, k, v
        hints.update(norm_layer="rmsnorm", patch_norm=True, qkv_bias=bool(get("qkv_bias")),
                     proj_bias=bool(get("qkv_bias")), mlp_bias=bool(get("mlp_bias")))
        if get("is_native"):  # no table: MAE's sin-cos grid at each input size
            hints["pos_embed"] = "sincos2d_mae"
    return hints


def preprocessing_from_config(pre_cfg: dict[str, Any], img_size: tuple[int, int]) -> Preprocessing:
    """A ``preprocessor_config.json`` (ViT-, DeiT-, CLIP-, Bit- (DINOv2) or SiglipImageProcessor) -> Preprocessing.

    ``size`` is the resize: {height, width} resizes straight to it (vitlab resizes the shorter side and
    centre-crops instead, the same for square images), {shortest_edge} the shorter side. With ``do_center_crop``,
    ``crop_size`` is the model's input and crop_pct = crop / resize (DeiT: 224 / 256 = 0.875); without, the resize
    is, and crop_pct is 1. ``rescale_factor`` and ``do_rescale``/``do_normalize`` are folded into mean and std,
    since vitlab always scales to [0, 1].
    """
    size = tuple(img_size)
    if pre_cfg.get("do_resize", True):
        size = _processor_size(pre_cfg.get("size", {"height": 224, "width": 224}), "size", size)
    crop_pct = 1.0
    if pre_cfg.get("do_center_crop", "crop_size" in pre_cfg):
        crop = _processor_size(pre_cfg.get("crop_size", {"height": 224, "width": 224}), "crop_size", size)
        crop_pct, size = min(1.0, crop[0] / size[0]), crop
    resample = pre_cfg.get("resample", 2)
    if isinstance(resample, str):
        interp = resample.lower()
    else:
        interp = PIL_RESAMPLE.get(resample, "")
    if interp not in PIL_RESAMPLE.values():
        warnings.warn(f"preprocessor_config.json: resample={resample!r} is not one of vitlab's interpolations "
                      f"({', '.join(PIL_RESAMPLE.values())}); using bicubic", stacklevel=3)
        interp = "bicubic"
    # x_model = (x_uint8 * rescale - mean) / std = (x_01 - mean / (255 rescale)) / (std / (255 rescale))
    scale = 255.0 * (pre_cfg.get("rescale_factor", 1 / 255) if pre_cfg.get("do_rescale", True) else 1.0)
    if pre_cfg.get("do_normalize", True):
        mean, std = pre_cfg.get("image_mean", INCEPTION_MEAN), pre_cfg.get("image_std", INCEPTION_STD)
    else:
        n = len(pre_cfg.get("image_mean", INCEPTION_MEAN))
        mean, std = (0.0,) * n, (1.0,) * n
    return Preprocessing(img_size=size, mean=[m / scale for m in mean], std=[s / scale for s in std],
                         interpolation=interp, crop_pct=crop_pct)


def _processor_size(value: Any, what: str, fallback: tuple[int, int]) -> tuple[int, int]:
    """An image processor's size field: an int, {height, width} or {shortest_edge} -> (H, W)."""
    if isinstance(value, int):
        return (value, value)
    if "height" in value and "width" in value:
        return (int(value["height"]), int(value["width"]))
    if "shortest_edge" in value:
        return (int(value["shortest_edge"]),) * 2
    warnings.warn(f"preprocessor_config.json: {what}={value!r} has neither height and width nor shortest_edge; "
                  f"using {fallback}", stacklevel=4)
    return fallback


def _load_weights(path: Path) -> dict[str, torch.Tensor]:
    index = path / "model.safetensors.index.json"
    files = [path / "model.safetensors"] if (path / "model.safetensors").is_file() else []
    if not files and index.is_file():  # sharded: the index maps each tensor to its shard
        weight_map = json_object(read_json(index), str(index)).get("weight_map")
        if not isinstance(weight_map, dict):
            raise CheckpointError(f"{index} has no 'weight_map' object (tensor name -> shard file)")
        files = [path / f for f in dict.fromkeys(weight_map.values())]
    try:
        if files:
            sd: dict[str, torch.Tensor] = {}
            for f in files:
                sd.update(load_file(str(f)))
            return sd
        if (path / "pytorch_model.bin").is_file():
            obj = torch.load(path / "pytorch_model.bin", map_location="cpu", weights_only=True)
            return {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    except (SafetensorError, OSError, RuntimeError, EOFError, ValueError) as e:
        raise CheckpointError(f"{path}: the weights are not readable (truncated or corrupt?): {first_line(e)}") from e
    raise CheckpointError(f"{path} has a transformers config.json but no model.safetensors, sharded "
                          "model.safetensors.index.json or pytorch_model.bin")


def read_folder(path: str | Path, hub_cfg: dict[str, Any]) -> Converted:
    """A ``save_pretrained`` folder: config.json + model.safetensors (or shards, or pytorch_model.bin), and
    preprocessor_config.json when present (else the family's published preprocessing)."""
    path = Path(path)
    family, cfg, where = family_config(hub_cfg)
    hints = hints_from_config(hub_cfg)
    sd = _convert(_load_weights(path), family)
    check_config_against_weights(cfg, sd, family, where)
    if "pre_logits.0.weight" in sd and hub_cfg.get("pooler_act", "tanh") in REPRESENTATION_ACTS:
        hints["representation_act"] = hub_cfg.get("pooler_act", "tanh")
    elif "pre_logits.0.weight" in sd:
        warnings.warn(f"config.json: pooler_act={hub_cfg['pooler_act']!r}; the pooler is left out, since vitlab's "
                      f"pre-logits layer is Linear + one of {', '.join(REPRESENTATION_ACTS)} (the pooled output is the "
                      "class token)", stacklevel=3)
        sd = {k: v for k, v in sd.items() if not k.startswith("pre_logits.")}
    hints["pool"] = _pool(family.name, sd)
    conv = Converted(sd, "hf", hints=hints, stated_by="config.json", stated=frozenset(hints))
    if "head.weight" in sd and family.name != "clip":  # CLIP's head is its projection: no classes to name
        conv.class_names = _class_names(hub_cfg, sd["head.weight"].shape[0])
    pre_path = path / "preprocessor_config.json"
    if pre_path.is_file():
        pre_cfg = json_object(read_json(pre_path), str(pre_path))
        try:
            conv.preprocessing = preprocessing_from_config(pre_cfg, hints["img_size"])
        except (TypeError, ValueError, KeyError, AttributeError) as e:
            raise CheckpointError(f"{pre_path} is not a valid image processor config ({first_line(e)})") from e
    else:
        conv.preprocessing = Preprocessing.for_family(family.preprocessing, hints["img_size"])
    return conv


def _class_names(hub_cfg: dict[str, Any], n: int) -> list[str] | None:
    try:
        id2label = {int(k): v for k, v in (hub_cfg.get("id2label") or {}).items()}
    except (ValueError, TypeError, AttributeError):
        raise CheckpointError("config.json: id2label is not a map from class index to name") from None
    names = [id2label.get(i) for i in range(n)]
    # transformers writes LABEL_0, LABEL_1, ... when no labels were given: those name nothing.
    return None if None in names or names == [f"LABEL_{i}" for i in range(n)] else names


def check_config_against_weights(cfg: dict[str, Any], sd: dict[str, torch.Tensor], family: Family = FAMILIES["vit"],
                                 where: str = "") -> None:
    """A config.json field the (converted) weights contradict is an error: one line, with both values. ``cfg`` is
    the vision config (``where`` = "vision_config." for CLIPModel's and SiglipModel's nested one)."""
    says = weights_say(sd)
    for key, name in _ALSO_IN_WEIGHTS:
        if key == "intermediate_size" and "mlp_ratio" in family.defaults:
            continue  # DINOv2's MLP width is mlp_ratio x hidden_size; its config's intermediate_size is unused
        if key in cfg and name in says:
            stated = _pair(cfg[key], key)[0] if key == "patch_size" else cfg[key]
            if stated != says[name][0]:
                raise CheckpointError(f"config.json says {where}{key}={stated!r} but the weights have {key} "
                                      f"{says[name][0]}")
    width = says["embed_dim"][0] if "embed_dim" in says else None
    if "mlp_ratio" in family.defaults and "mlp_dim" in says and width is not None:
        ratio = cfg.get("mlp_ratio", family.defaults["mlp_ratio"])
        hidden = int(width * ratio)
        if cfg.get("use_swiglu_ffn"):  # two thirds, rounded up to a multiple of 8 (Dinov2SwiGLUFFN)
            hidden = (int(hidden * 2 / 3) + 7) // 8 * 8
        if hidden != says["mlp_dim"][0]:
            raise CheckpointError(f"config.json says mlp_ratio={ratio!r} (an MLP of {hidden}) but the "
                                  f"weights have an MLP of {says['mlp_dim'][0]}")
    heads = cfg.get("num_attention_heads", family.defaults["num_attention_heads"])
    if width is not None and (not isinstance(heads, int) or heads <= 0 or width % heads):
        said = "says" if "num_attention_heads" in cfg else "has no field for it, which means"
        raise CheckpointError(f"config.json {said} {where}num_attention_heads={heads!r}, which does not divide the "
                              f"weights' hidden_size {width}")
    if "image_size" in cfg and "pos_embed" in sd and "patch_size" in says:
        (h, w), P = _pair(cfg["image_size"], "image_size"), says["patch_size"][0]
        rows, expected = sd["pos_embed"].shape[1], family.pos_prefix_rows + (h // P) * (w // P)  # prefix rows, grid
        if rows != expected:
            raise CheckpointError(f"config.json says {where}image_size={cfg['image_size']!r} ({expected} position "
                                  f"rows at patch {P}) but the weights' position table has {rows} rows")
