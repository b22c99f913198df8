"""Hugging Face transformers ViT (``ViTForImageClassification``, ``ViTModel``) -> vitlab.

Two entry points: a bare state dict (``read_state_dict``: the architecture is inferred from shapes,
so the head count of an unusual width must be passed to ``vitlab.load``), and a ``save_pretrained``
folder (``read_folder``: ``config.json`` states heads, LayerNorm eps, image size, activation and
labels; ``preprocessor_config.json``, when present, the preprocessing).

Name mapping (``vit.`` prefix on a classifier, none on a headless ``ViTModel``; layer names as
``save_pretrained`` writes them, with transformers 5's in-memory names in brackets):
    embeddings.cls_token / position_embeddings  -> cls_token / pos_embed (class row first, as vitlab's)
    embeddings.patch_embeddings.projection      -> patch_embed.proj
    encoder.layer.{i}.                          -> blocks.{i}.                      [layers.{i}.]
      layernorm_before / layernorm_after        ->   norm1 / norm2
      attention.attention.query, key, value     ->   attn.qkv, rows [q; k; v]       [attention.q_proj, ...]
      attention.output.dense                    ->   attn.proj                      [attention.o_proj]
      intermediate.dense / output.dense         ->   mlp.fc1 / mlp.fc2              [mlp.fc1 / mlp.fc2]
    layernorm                                   -> norm
    pooler.dense (Linear + tanh on the class token) -> pre_logits.0 (the paper's representation layer)
    classifier                                  -> head
``embeddings.mask_token`` is dropped: it only replaces patches under ``bool_masked_pos`` (masked image
modelling) and never enters a plain forward pass. A ``ViTForMaskedImageModeling`` decoder is passed
through under its own names, so ``vitlab.load`` reports it as unexpected (``strict=False`` loads the encoder).
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from vitlab.convert import CheckpointError, Converted, first_line, json_object, read_json
from vitlab.convert.fit import weights_say
from vitlab.preprocess import INCEPTION_MEAN, INCEPTION_STD, Preprocessing

HF_LAYER_NORM_EPS = 1e-12  # transformers' ViTConfig default (the official JAX code uses 1e-6)
HF_ACTS = {"gelu": "gelu", "gelu_pytorch_tanh": "gelu_tanh", "gelu_new": "gelu_tanh"}
PIL_RESAMPLE = {0: "nearest", 2: "bilinear", 3: "bicubic"}  # PIL.Image.Resampling codes HF stores
HF_ARCHITECTURES = ("ViTForImageClassification", "ViTModel", "ViTForMaskedImageModeling")
_PATCH_KEY = "embeddings.patch_embeddings.projection.weight"
# config.json fields the weights state too: (config.json's name, the ViTConfig field the shapes give)
_ALSO_IN_WEIGHTS = (("hidden_size", "embed_dim"), ("num_hidden_layers", "depth"), ("patch_size", "patch_size"),
                    ("num_channels", "in_chans"), ("intermediate_size", "mlp_dim"))

# Per-layer names, as saved by save_pretrained (transformers 4 and 5) and as held in memory by transformers 5.
_LAYER = re.compile(r"^(?:encoder\.layer|layers)\.(\d+)\.(.+)$")
_LAYER_NAMES = {
    "layernorm_before": "norm1",
    "layernorm_after": "norm2",
    "attention.output.dense": "attn.proj",
    "attention.o_proj": "attn.proj",
    "intermediate.dense": "mlp.fc1",
    "output.dense": "mlp.fc2",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
}
_QKV_NAMES = {"attention.attention.query": "q", "attention.attention.key": "k", "attention.attention.value": "v",
              "attention.q_proj": "q", "attention.k_proj": "k", "attention.v_proj": "v"}
_TOP_NAMES = {
    "embeddings.cls_token": "cls_token",
    "embeddings.position_embeddings": "pos_embed",
    "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
    "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
    "layernorm.weight": "norm.weight",
    "layernorm.bias": "norm.bias",
    "pooler.dense.weight": "pre_logits.0.weight",
    "pooler.dense.bias": "pre_logits.0.bias",
    "classifier.weight": "head.weight",
    "classifier.bias": "head.bias",
}


def is_format(sd: dict[str, Any]) -> bool:
    return f"vit.{_PATCH_KEY}" in sd or _PATCH_KEY in sd


def read_state_dict(sd: dict[str, torch.Tensor]) -> Converted:
    """A bare transformers ViT state dict. Without its config.json the head count is inferred from the
    width (pass num_heads=... to vitlab.load for other widths) and LayerNorm eps is HF's default 1e-12."""
    out: dict[str, torch.Tensor] = {}
    qkv: dict[int, dict[str, dict[str, torch.Tensor]]] = {}  # layer -> "weight"/"bias" -> "q"/"k"/"v" -> tensor
    for key, value in sd.items():
        name = key[len("vit."):] if key.startswith("vit.") else key
        if name == "embeddings.mask_token":
            continue  # masked image modelling only; see the module docstring
        if name == "embeddings.distillation_token":
            raise CheckpointError("this checkpoint has a distillation token (a distilled DeiT): not supported; "
                                  "vitlab reads ViTs with a class token (and optional registers) only")
        if name in _TOP_NAMES:
            out[_TOP_NAMES[name]] = value
            continue
        m = _LAYER.match(name)
        if m is None:
            out[key] = value  # not a ViT tensor: vitlab.load reports it as unexpected
            continue
        i, rest = int(m.group(1)), m.group(2)
        module, _, param = rest.rpartition(".")
        if module in _QKV_NAMES:
            qkv.setdefault(i, {}).setdefault(param, {})[_QKV_NAMES[module]] = value
        elif module in _LAYER_NAMES:
            out[f"blocks.{i}.{_LAYER_NAMES[module]}.{param}"] = value
        else:
            out[key] = value
    for i, params in qkv.items():
        for param, parts in params.items():
            if set(parts) != {"q", "k", "v"}:
                raise CheckpointError(f"layer {i} has attention {param}s for {sorted(parts)} only; expected query, "
                                      "key and value")
            out[f"blocks.{i}.attn.qkv.{param}"] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)  # (3D, ...)
    return Converted(out, "hf", hints=dict(norm_eps=HF_LAYER_NORM_EPS))


def _pair(value: Any, what: str) -> tuple[int, int]:
    if isinstance(value, int):
        return (value, value)
    if isinstance(value, (list, tuple)) and len(value) == 2:
        return (int(value[0]), int(value[1]))
    raise CheckpointError(f"config.json: {what}={value!r} is neither an int nor a (height, width) pair")


def hints_from_config(hub_cfg: dict[str, Any]) -> dict[str, Any]:
    """ViTConfig fields stated by a transformers ViT ``config.json``; unsupported settings raise."""
    model_type = hub_cfg.get("model_type")
    if model_type != "vit":
        raise CheckpointError(f"config.json has model_type={model_type!r}; vitlab reads transformers' 'vit' only "
                              "(DeiT, BEiT, DINOv2, ... have other architectures)")
    archs = [a for a in hub_cfg.get("architectures") or [] if a not in HF_ARCHITECTURES]
    if archs:
        raise CheckpointError(f"config.json names architecture(s) {archs}; vitlab reads {', '.join(HF_ARCHITECTURES)}")
    act = hub_cfg.get("hidden_act", "gelu")
    if act not in HF_ACTS:
        raise CheckpointError(f"config.json: hidden_act={act!r} is not supported; vitlab's MLP has "
                              f"{', '.join(HF_ACTS)} (exact or tanh-approximated GELU)")
    width, heads = hub_cfg.get("hidden_size", 768), hub_cfg.get("num_attention_heads", 12)
    head_dim = hub_cfg.get("head_dim")
    if head_dim is not None and head_dim * heads != width:
        raise CheckpointError(f"config.json: head_dim={head_dim} x {heads} heads != hidden_size={width}; vitlab's "
                              "attention has width = heads x head width")
    patch = _pair(hub_cfg.get("patch_size", 16), "patch_size")
    if patch[0] != patch[1]:
        raise CheckpointError(f"config.json: non-square patches {patch} are not supported")
    return dict(
        num_heads=heads,
        norm_eps=hub_cfg.get("layer_norm_eps", HF_LAYER_NORM_EPS),
        img_size=_pair(hub_cfg.get("image_size", 224), "image_size"),
        in_chans=hub_cfg.get("num_channels", 3),
        qkv_bias=hub_cfg.get("qkv_bias", True),
        mlp_act=HF_ACTS[act],
    )


def preprocessing_from_config(pre_cfg: dict[str, Any], img_size: tuple[int, int]) -> Preprocessing:
    """A ``preprocessor_config.json`` (ViTImageProcessor) -> Preprocessing.

    HF resizes straight to (height, width) without a crop: crop_pct 1.0 (for non-square source images
    vitlab resizes the shorter side and centre-crops instead of squashing). ``rescale_factor`` and
    ``do_rescale``/``do_normalize`` are folded into mean and std, since vitlab always scales to [0, 1].
    """
    size = img_size
    if pre_cfg.get("do_resize", True):
        s = pre_cfg.get("size", {"height": 224, "width": 224})
        if isinstance(s, int):
            size = (s, s)
        elif "height" in s and "width" in s:
            size = (s["height"], s["width"])
        elif "shortest_edge" in s:
            size = (s["shortest_edge"], s["shortest_edge"])
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
                         interpolation=interp, crop_pct=1.0)


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
    """A ``save_pretrained`` folder: config.json (model_type 'vit') + model.safetensors or pytorch_model.bin,
    and preprocessor_config.json when present."""
    path = Path(path)
    hints = hints_from_config(hub_cfg)
    conv = read_state_dict(_load_weights(path))
    conv.hints.update(hints)
    conv.stated_by = "config.json"
    sd = conv.state_dict
    check_config_against_weights(hub_cfg, sd)
    if "pre_logits.0.weight" in sd and hub_cfg.get("pooler_act", "tanh") != "tanh":
        raise CheckpointError(f"config.json: pooler_act={hub_cfg['pooler_act']!r}; vitlab's pre-logits layer "
                              "(HF's pooler) is Linear + tanh")
    if "head.weight" in sd:
        n = sd["head.weight"].shape[0]
        try:
            id2label = {int(k): v for k, v in (hub_cfg.get("id2label") or {}).items()}
        except (ValueError, TypeError, AttributeError):
            raise CheckpointError("config.json: id2label is not a map from class index to name") from None
        names = [id2label.get(i) for i in range(n)]
        # transformers writes LABEL_0, LABEL_1, ... when no labels were given: those name nothing.
        if None not in names and names != [f"LABEL_{i}" for i in range(n)]:
            conv.class_names = names
    pre_path = path / "preprocessor_config.json"
    if pre_path.is_file():
        pre_cfg = json_object(read_json(pre_path), str(pre_path))
        try:
            conv.preprocessing = preprocessing_from_config(pre_cfg, hints["img_size"])
        except (TypeError, ValueError, KeyError) as e:
            raise CheckpointError(f"{pre_path} is not a valid ViTImageProcessor config ({first_line(e)})") from e
    return conv


def check_config_against_weights(hub_cfg: dict[str, Any], sd: dict[str, torch.Tensor]) -> None:
    """A config.json field the (converted) weights contradict is an error: one line, with both values."""
    says = weights_say(sd)
    for key, name in _ALSO_IN_WEIGHTS:
        if key in hub_cfg and name in says:
            stated = _pair(hub_cfg[key], key)[0] if key == "patch_size" else hub_cfg[key]
            if stated != says[name][0]:
                raise CheckpointError(f"config.json says {key}={stated!r} but the weights have {key} {says[name][0]}")
    width = says["embed_dim"][0] if "embed_dim" in says else None
    heads = hub_cfg.get("num_attention_heads", 12)  # transformers' default
    if width is not None and (not isinstance(heads, int) or heads <= 0 or width % heads):
        said = "says" if "num_attention_heads" in hub_cfg else "has no field for it, which means"
        raise CheckpointError(f"config.json {said} num_attention_heads={heads!r}, which does not divide the weights' "
                              f"hidden_size {width}")
    if "image_size" in hub_cfg and "pos_embed" in sd and "patch_size" in says:
        (h, w), P = _pair(hub_cfg["image_size"], "image_size"), says["patch_size"][0]
        rows, expected = sd["pos_embed"].shape[1], 1 + (h // P) * (w // P)  # HF: a class row, then the grid
        if rows != expected:
            raise CheckpointError(f"config.json says image_size={hub_cfg['image_size']!r} ({expected} position rows at "
                                  f"patch {P}) but the weights' position table has {rows} rows")
