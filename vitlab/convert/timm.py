"""timm ``VisionTransformer`` state dicts and hub folders, both ways.

vitlab's parameter names are timm's, so reading is mostly unwrapping; the position table is brought to
vitlab's layout by ``canonical_pos_embed``. timm's ``VisionTransformerDistilled`` (DeiT's ``dist_token`` and
``head_dist``) reads the same way. A timm hub folder (``config.json`` with ``architecture``, ``model_args`` and
``pretrained_cfg``, beside ``model.safetensors`` or ``pytorch_model.bin``, as ``timm.models.save_for_hf`` writes it)
also gives the architecture and the preprocessing of the weights.

What the weights cannot show (heads, MLP activation, LayerNorm eps, pooling, norms before or after each branch
(``res_post_norm``), the RoPE scheme, and what vitlab cannot run: parallel blocks, grouped-query attention, hybrid
CNN stems, timm's Beit, NaFlexVit, ... classes) comes from
``timm_architectures.json``: every architecture of timm's vision_transformer, deit, eva, vision_transformer_relpos,
vision_transformer_hybrid, naflexvit, beit and vision_transformer_sam modules, read off timm itself by
``tests/timm_architectures.py`` (timm is not a runtime dependency) with its layout signature
(:func:`layout_signature`: tensor names and widths). ``tests/test_loader_sweep.py`` loads every one of them.

A hub folder (config.json names the ``architecture``), later places winning:
  1. the architecture's row in the table: its settings for certain, or an error naming what vitlab cannot run.
     An architecture the table does not have (a newer timm) falls back to the name rules below, in a notice:
        name                     ViTConfig fields
        deit_*distilled*         distill_token=True, pool="distill" (VisionTransformerDistilled)
        deit3_*                  no_embed_class=True, layer_scale_init=1e-6
        *_dinov2                 layer_scale_init=1e-5, img_size=518
        *_reg{R}_*               num_register_tokens=R; with _dinov2 also no_embed_class=True
        *_clip_*                 norm_pre=True, patch_bias=False (timm's pre_norm), norm_eps=1e-5, mlp_act="gelu"
        *_clip_quickgelu_*       ... and mlp_act="quick_gelu" (QuickGELU is not in the weights)
        *_siglip_*               class_token=False, pool="map" (``_siglip_gap_``: pool="gap")
        SigLIP 2's architectures mlp_act="gelu_tanh": vit_base_patch32_siglip*, vit_large_patch16_siglip[_gap]_512,
                                 vit_so400m_patch16_siglip*, vit_giantopt_patch16_siglip*
        vit_{giant,gigantic,so400m,giantopt}_*  num_heads=16 (not width / 64; a dinov2 giant has 24 = width / 64)
        *_{N} (last word)        img_size=N (``*_dinov2``: 518); every other head count comes from the width
  2. ``model_args``: num_heads, img_size, reg_tokens -> num_register_tokens, no_embed_class, class_token,
     pre_norm -> norm_pre and patch_bias=not pre_norm (timm ties them), act_layer ('gelu', 'gelu_tanh',
     'quick_gelu') -> mlp_act, init_values -> layer_scale_init, qkv_bias, qk_norm, fc_norm; shapes and drop rates
     are read or ignored, ``dynamic_img_size`` changes nothing in the weights. Layers vitlab does not have
     (``mlp_layer``, ``block_fn``, ``final_norm=False``, ...) are an error.
  3. ``global_pool`` ('token', 'avg' -> "gap", 'map'), and ``pretrained_cfg`` for the preprocessing. When timm's
     ``notes`` say the weights are "natively QuickGELU" but the architecture runs them with GELU, vitlab does as
     timm (parity) and says so in a notice.

A bare state dict (:func:`known_layout`): the architectures of the table with its layout signature. What they all
agree on is certain; a setting they disagree on is assumed (the most common value) in one
:class:`AssumedSettingsNotice` naming the others and their architectures (CLIP's QuickGELU variants, SigLIP 2's
tanh GELU), except the head count, which no rule may guess: the load asks for ``num_heads=``
(``vit_base_patch16_gap_224`` has 16 heads, the SigLIP base GAP models 12, with the same tensors). A layout only
architectures vitlab cannot run have is an error naming them; a layout no architecture has gets timm's defaults
(heads of 64, or the registry's for a standard width; GELU; eps 1e-6, CLIP's 1e-5 for CLIP's layout), each named in
the notice. A gated MLP (fc1 twice as wide as fc2's input) is SwiGLU (``vitlab.layers.SwiGLU``, DINOv2 giant's).
The preprocessing follows the family the tensors show, said in the same notice:
    CLIP's layout (norm_pre, no patch bias)  CLIP's preprocessing
    dist_token                               DeiT's preprocessing (ImageNet statistics)
    attn_pool (MAP head)                     SigLIP's preprocessing (mean = std = 0.5)
    layer scale with patch 14                DINOv2's preprocessing (ImageNet statistics)
    anything else                            the default preprocessing (mean = std = 0.5)
timm resamples every position table with antialiased bicubic (``pos_resample`` "bicubic_antialias", the default).

Writing (``to_timm``, ``timm_model_args``, ``timm_model_class``): a state dict that timm's class loads strictly,
with the same outputs. ``pool="token_gap"`` and a hybrid/conv stem, pre-logits layer or sincos2d table have no timm
counterpart (an error); a LayerNorm before the blocks needs timm's ``pre_norm``, which also drops the patch bias.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from vitlab.config import ViTConfig
from vitlab.convert import HEADS_BY_WIDTH, AssumedSettingsNotice, CheckpointError, Converted
from vitlab.preprocess import Preprocessing

TIMM_POOLS = {"token": "token", "avg": "gap", "map": "map"}
TIMM_ACTS = {"gelu": "gelu", "gelu_tanh": "gelu_tanh", "quick_gelu": "quick_gelu"}  # timm act_layer -> mlp_act
TIMM_NORM_EPS = 1e-6  # timm's VisionTransformer default LayerNorm eps (vitlab's too)
CLIP_NORM_EPS = 1e-5  # timm's vit_*_clip_*: partial(LayerNorm, eps=1e-5), nn.LayerNorm's default as in OpenAI CLIP
DEIT3_LAYER_SCALE = 1e-6  # deit3_*: init_values=1e-6 (only an init: the trained gammas are loaded)
DINOV2_LAYER_SCALE = 1e-5  # vit_*_dinov2: init_values=1e-5
DINOV2_IMG_SIZE = 518  # vit_*_dinov2: 37 x 37 patches of 14 (the pretrained_cfg input size)
HEADS_BY_SIZE_WORD = {"giant": 16, "gigantic": 16, "so400m": 16, "giantopt": 16}  # widths 1408, 1664, 1152, 1536
SIGLIP_GELU_TANH = re.compile(r"^vit_(?:base_patch32_siglip|large_patch16_siglip(?:_gap)?_512|so400m_patch16_siglip"
                              r"|giantopt_patch16_siglip)")
_ARCH = re.compile(r"^(?P<family>vit|deit3?)_(?P<size>[a-z0-9]+)_.*patch(?P<patch>\d+)")
_REGISTERS = re.compile(r"_reg(\d+)(?:_|$)")
_SIZE = re.compile(r"_(\d+)$")
# model_args -> the ViTConfig field they map to directly
_ARGS = {"num_heads": "num_heads", "reg_tokens": "num_register_tokens", "no_embed_class": "no_embed_class",
         "class_token": "class_token", "init_values": "layer_scale_init", "qkv_bias": "qkv_bias", "qk_norm": "qk_norm"}
# model_args vitlab has no counterpart for, with the value that is timm's default (any other is an error)
_UNSUPPORTED_ARGS = {"final_norm": True, "pool_include_prefix": False, "proj_bias": True, "mlp_layer": None,
                     "block_fn": None, "attn_layer": None, "embed_layer": None, "norm_layer": None,
                     "embed_norm_layer": None}
# model_args of an Eva architecture that change nothing vitlab reads (the rest would change its RoPE, blocks, ...)
# (and those the tensors show, or num_heads, read as for VisionTransformer)
_EVA_ARGS_READ = {"img_size", "dynamic_img_size", "num_classes", "global_pool", "drop_rate", "pos_drop_rate",
                  "proj_drop_rate", "attn_drop_rate", "drop_path_rate", "depth", "in_chans", "embed_dim",
                  "patch_size", "num_heads", "num_reg_tokens", "class_token"}
TIMM_VIT_CLASS = "timm.models.vision_transformer.VisionTransformer"
TIMM_DISTILLED_CLASS = "timm.models.deit.VisionTransformerDistilled"


ARCHITECTURES_FILE = Path(__file__).with_name("timm_architectures.json")
_BLOCK_INDEX = re.compile(r"^blocks\.\d+\.")
_NOT_LAYOUT = ("head.", "head_dist.")  # the classifier: present or not, of any width, in the same architecture


def layout_signature(sd: dict[str, Any]) -> str:
    """What a timm state dict's tensors show of its architecture, as a short key: the names of its tensors (every
    block's as block 0's, the classifier's left out) with the width, patch size and MLP width. Depth, image size
    and classes do not change it; ``ARCHITECTURES_FILE`` maps it to timm's architectures of that layout."""
    names = sorted({_BLOCK_INDEX.sub("blocks.*.", k) for k in sd if not k.startswith(_NOT_LAYOUT)})
    dims = [tuple(sd[k].shape) if k in sd else None
            for k in ("patch_embed.proj.weight", "blocks.0.mlp.fc1.weight")]
    text = json.dumps([dims, names])
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def is_format(sd: dict[str, Any]) -> bool:
    return "patch_embed.proj.weight" in sd and any(k.startswith("blocks.") for k in sd)


def table_size(sd: dict[str, torch.Tensor]) -> tuple[int, int] | None:
    """The image size a square position table is laid out for (timm's rows: class, distillation and register
    tokens may each have one), or None."""
    if "pos_embed" not in sd or "patch_embed.proj.weight" not in sd:
        return None
    P, rows = sd["patch_embed.proj.weight"].shape[-1], sd["pos_embed"].shape[1]
    n_embedded = int("cls_token" in sd) + int("dist_token" in sd)
    n_reg = sd["reg_token"].shape[1] if "reg_token" in sd else 0
    for prefix in (n_embedded + n_reg, n_embedded, 0):
        side = math.isqrt(max(rows - prefix, 0))
        if side and side * side == rows - prefix:
            return (side * P, side * P)
    return None


@functools.cache
def _table() -> dict[str, Any]:
    return json.loads(ARCHITECTURES_FILE.read_text())  # read once per process


def known_architectures() -> dict[str, dict[str, Any]]:
    """timm's ViT-family architectures as ``tests/timm_architectures.py`` read them off timm (the version in the
    file's ``timm_version``): name -> its layout signature and the settings its tensors cannot show."""
    return _table()["architectures"]


def entry_hints(entry: dict[str, Any]) -> dict[str, Any]:
    """A supported table entry -> the ViTConfig fields it settles."""
    pool = "distill" if entry["model"] == "VisionTransformerDistilled" else TIMM_POOLS[entry["global_pool"]]
    return dict(num_heads=entry["num_heads"], mlp_act=entry["mlp_act"], norm_eps=entry["norm_eps"], pool=pool,
                mlp_layer=entry.get("mlp_layer", "mlp"), rope=entry.get("rope", "none"),
                rope_theta=entry.get("rope_theta", 100.0), rope_axes=entry.get("rope_axes", "xy"),
                rope_ref_grid=tuple(entry["rope_ref_grid"]) if "rope_ref_grid" in entry else None,
                rope_offset=entry.get("rope_offset", 0.0), final_norm=entry.get("final_norm", True),
                attn_pool_heads=entry.get("attn_pool_heads", 0), attn_pool_prefix=entry.get("attn_pool_prefix", False),
                norm_layer=entry.get("norm_layer", "layernorm"), res_post_norm=entry.get("res_post_norm", False))


_Q_PROJ = re.compile(r"^(.*\.attn\.)q_proj\.(weight|bias)$")
_EVA_MARKS = (".gamma_1", ".attn.q_bias", ".mlp.fc1_g.", ".attn.q_proj.")  # names only timm's Eva class writes


def _qkv(q: torch.Tensor, k: torch.Tensor | None, v: torch.Tensor) -> torch.Tensor:
    """Rows [q; k; v] of a fused qkv weight or bias; a missing key bias is zeros."""
    return torch.cat([q, torch.zeros_like(q) if k is None else k, v])  # (3D, ...)


def from_eva(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """timm's Eva names -> vitlab's: gamma_1 / gamma_2 -> ls1.gamma / ls2.gamma; the separate q and v biases
    (k has none) -> one qkv bias [q; 0; v]; separate q, k, v projections (EVA-02 B/L) -> one qkv; SwiGLU's fc1_g
    and fc1_x -> one fc1, rows [gate; value]."""
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        if key.endswith((".attn.k_bias", ".attn.v_bias", ".mlp.fc1_x.weight", ".mlp.fc1_x.bias")) or \
                any(key.endswith(f".attn.{p}_proj.{t}") for p in "kv" for t in ("weight", "bias")):
            continue  # joined with their siblings below
        if (m := _Q_PROJ.match(key)) is not None:  # EVA-02 B/L: q_proj, k_proj (no bias), v_proj
            attn, param = m.groups()
            out[f"{attn}qkv.{param}"] = _qkv(value, sd.get(f"{attn}k_proj.{param}"), sd[f"{attn}v_proj.{param}"])
        elif key.endswith(".attn.q_bias"):  # q_bias, v_bias beside a bias-free qkv
            attn = key[:-len("q_bias")]
            out[attn + "qkv.bias"] = _qkv(value, sd.get(attn + "k_bias"), sd[attn + "v_bias"])
        elif ".mlp.fc1_g." in key:
            out[key.replace(".fc1_g.", ".fc1.")] = torch.cat([value, sd[key.replace(".fc1_g.", ".fc1_x.")]])
        else:
            out[key.replace(".gamma_1", ".ls1.gamma").replace(".gamma_2", ".ls2.gamma")] = value
    return out


def _names(names: list[str]) -> str:
    return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")


@dataclass
class Layout:
    """What the table says of a bare state dict's tensors: the fields every known architecture of the layout
    agrees on, the ones they disagree on (assumed: the most common value, with the others for the notice), and the
    head count when they disagree on it (no safe rule)."""

    certain: dict[str, Any]
    assumed: dict[str, Any]
    alternatives: dict[str, str]  # field -> "value for names; ..." of the values not assumed
    undetermined: dict[str, str]


def known_layout(sd: dict[str, torch.Tensor]) -> Layout | None:
    """The table's answer for a bare timm state dict, None for a layout no known architecture has; a layout that
    only architectures vitlab cannot run have is an error naming them and why."""
    signature = layout_signature(sd)
    entries = {name: e for name, e in known_architectures().items() if e.get("signature") == signature}
    if not entries:
        return None
    unsupported = {name: e["unsupported"] for name, e in entries.items() if "unsupported" in e}
    if unsupported:
        reason = next(iter(unsupported.values()))
        supported = [n for n in entries if n not in unsupported]
        also = f"; its tensors also fit {_names(supported)}: load that model's timm hub folder" if supported else ""
        raise CheckpointError(f"this timm state dict has the layout of timm's {_names(list(unsupported))} "
                              f"({reason}), which vitlab's VisionTransformer cannot run{also}")
    layout = Layout({}, {}, {}, {})
    values = {name: entry_hints(e) for name, e in entries.items()}
    for field_name in next(iter(values.values())):
        by_value: dict[Any, list[str]] = {}
        for name, hints in values.items():
            by_value.setdefault(hints[field_name], []).append(name)
        ranked = sorted(by_value.items(), key=lambda item: -len(item[1]))
        if len(ranked) == 1:
            layout.certain[field_name] = ranked[0][0]
            continue
        answers = "the architectures of this layout disagree: " + "; ".join(
            f"{value!r} for {_names(names)}" for value, names in ranked)
        if field_name in ("num_heads", "res_post_norm"):  # no safe guess: asked for
            layout.undetermined[field_name] = answers
        else:
            layout.assumed[field_name] = ranked[0][0]
            layout.alternatives[field_name] = "; ".join(f"{field_name}={value!r} for {_names(names)}"
                                                        for value, names in ranked[1:])
    return layout


def _generic_assumptions(sd: dict[str, torch.Tensor]) -> tuple[dict[str, Any], str]:
    """What vitlab assumes of a layout no known timm architecture has: heads of width 64 (or the registry's for a
    standard width; a qk-norm's width shows them), timm's GELU and LayerNorm eps (CLIP's eps for CLIP's layout)."""
    D = sd["patch_embed.proj.weight"].shape[0]
    if _family(sd)[0] == "clip":
        hints: dict[str, Any] = dict(mlp_act="gelu", norm_eps=CLIP_NORM_EPS)
        said = (f"GELU and LayerNorm eps {CLIP_NORM_EPS:g} (timm's vit_*_clip_*; OpenAI's weights want "
                "mlp_act='quick_gelu')")
    else:
        hints = dict(mlp_act="gelu", norm_eps=TIMM_NORM_EPS)
        said = "GELU and LayerNorm eps 1e-6 (timm's defaults)"
    if "blocks.0.attn.q_norm.weight" not in sd and "rope.freqs" not in sd:  # (RoPE-Mixed's show them: certain)
        heads = HEADS_BY_WIDTH.get(D, D // 64 if D % 64 == 0 else 0)
        if heads:
            hints["num_heads"] = heads
            said = f"num_heads={heads} ({'the standard size of width' if D in HEADS_BY_WIDTH else 'heads of 64 at'} " \
                   f"{D}), " + said
    if "pos_embed" in sd and "rope.freqs" not in sd:  # a position table: most likely no rotations too (timm's
        # *_rope_ape_* have both)
        hints["rope"] = "none"
        said += ", rope='none' (no rotary position embedding: EVA-02, PE and RoPE-ViT rotate q and k)"
    if "cls_token" in sd and "fc_norm.weight" not in sd and "attn_pool.latent" not in sd and "dist_token" not in sd:
        hints["pool"] = "token"  # timm's default; its *_gap_* and DINOv3 architectures average the patches
        said += ", pool='token' (the class token; 'gap' averages the patch tokens)"
    hints["res_post_norm"] = False
    said += ", pre-norm blocks (res_post_norm=False; timm's *_rpn_* and EVA-02 enormous norm each branch's output)"
    fc1, fc2 = sd.get("blocks.0.mlp.fc1.weight"), sd.get("blocks.0.mlp.fc2.weight")
    if fc1 is not None and fc2 is not None and fc2.ndim == 2 and fc1.shape[0] == 2 * fc2.shape[1]:
        said += ("; a gated MLP (fc1 twice fc2's width): SwiGLU, the gate first with SiLU (DINOv2 giant's); "
                 "another gate vitlab cannot run")
    return hints, said


def read_state_dict(sd: dict[str, torch.Tensor]) -> Converted:
    """A bare timm state dict. Its layout is looked up among timm's architectures (``known_layout``): what every
    architecture of the layout agrees on is certain; the rest, and everything for a layout timm does not have, is
    assumed in one :class:`AssumedSettingsNotice` naming each value and its override (a hub folder filters the
    notice out: its config.json states the settings). The family's preprocessing follows the module docstring."""
    layout = known_layout(sd)  # by timm's own names
    eva = any(mark in k for k in sd for mark in _EVA_MARKS)
    conv = Converted(from_eva(sd) if eva else dict(sd), "timm")
    # (a hub folder's config.json names the architecture)
    if (eva or "pos_embed" not in sd) and layout is None and "rope.freqs" not in sd:
        what = "Eva names (gamma_1, q_bias, q_proj or fc1_g)" if eva else "no position table"
        conv.undetermined["rope"] = (f"{what} in a layout none of timm {timm_version()}'s architectures has: its "
                                     "queries may turn with RoPE, 'axial' (vit_*_rope_*, EVA-02, PE) or 'dinov3', or "
                                     "not ('none'), at a base rope_theta")
    if layout is None:
        assumed, said = _generic_assumptions(sd)
        conv.hints.update(assumed)
        settings = (f"its layout is none of timm {timm_version()}'s ViT architectures, so vitlab assumes {said}; "
                    f"pass {', '.join(f + '=' for f in assumed)} to vitlab.load if they differ")
        fields = tuple(assumed)
    else:
        conv.hints.update(layout.certain, **layout.assumed)
        conv.undetermined = layout.undetermined
        settings = "; ".join(f"vitlab assumes {name}={value!r} ({layout.alternatives[name]})"
                             for name, value in layout.assumed.items())
        fields = tuple(layout.assumed)
    if "rope.freqs" in sd:  # RoPE-Mixed's learned frequencies (2, depth, heads, Dh/2): certain, whatever the layout
        conv.hints.update(rope="mixed", num_heads=int(sd["rope.freqs"].shape[2]))
    size = table_size(sd)
    family, said_family = _family(sd)
    if family is None and conv.hints.get("rope") == "dinov3":
        family, said_family = "dinov2", "DINOv3's RoPE: ImageNet statistics (DINOv2's preprocessing)"
    if family is not None and (size is not None or "pos_embed" not in sd):  # no table: RoPE, any size (224)
        conv.preprocessing = Preprocessing.for_family(family, size or (224, 224))
    parts = [p for p in (said_family, settings) if p]
    if parts:
        warnings.warn(AssumedSettingsNotice(f"a bare timm state dict: {'; '.join(parts)}. Or load its timm hub "
                                            "folder (config.json)", fields), stacklevel=4)
    return conv


def timm_version() -> str:
    return _table()["timm_version"]


def _family(sd: dict[str, torch.Tensor]) -> tuple[str | None, str]:
    """The family whose preprocessing a bare state dict gets, and the notice's words for it."""
    if "norm_pre.weight" in sd and "patch_embed.proj.bias" not in sd:
        return "clip", "CLIP's layout (norm_pre, no patch bias), so CLIP's preprocessing"
    if "dist_token" in sd:
        return "deit", "a distillation token: DeiT's preprocessing (ImageNet statistics)"
    if "attn_pool.latent" in sd:
        return "siglip", "an attention-pool head: SigLIP's preprocessing (mean = std = 0.5)"
    if "blocks.0.ls1.gamma" in sd and sd["patch_embed.proj.weight"].shape[-1] == 14:
        return "dinov2", ("layer scale with patch 14: DINOv2's preprocessing (ImageNet statistics) and timm's "
                          "resampling (the original facebookresearch code's, without registers, is "
                          "pos_resample='bicubic_offset')")
    return None, ""


def architecture_hints(arch: str) -> dict[str, Any]:
    """timm's defaults for an architecture name that its weights cannot show (the table in the module docstring)."""
    m = _ARCH.match(arch)
    if m is None:
        return {}
    words = arch.split("_")
    hints: dict[str, Any] = {}
    if m["family"] == "deit" and "distilled" in words:
        hints.update(distill_token=True, pool="distill")
    if m["family"] == "deit3":
        hints.update(no_embed_class=True, layer_scale_init=DEIT3_LAYER_SCALE)
    registers = _REGISTERS.search(arch)
    if registers:
        hints["num_register_tokens"] = int(registers[1])
    if "dinov2" in words:
        hints.update(layer_scale_init=DINOV2_LAYER_SCALE, img_size=(DINOV2_IMG_SIZE, DINOV2_IMG_SIZE))
        if registers:
            hints["no_embed_class"] = True
    elif m["size"] in HEADS_BY_SIZE_WORD:
        hints["num_heads"] = HEADS_BY_SIZE_WORD[m["size"]]
    if "clip" in words:
        hints.update(norm_pre=True, patch_bias=False, norm_eps=CLIP_NORM_EPS,
                     mlp_act="quick_gelu" if "quickgelu" in words else "gelu")
    if "siglip" in words:
        hints.update(class_token=False, pool="gap" if "gap" in words else "map",
                     mlp_act="gelu_tanh" if SIGLIP_GELU_TANH.match(arch) else "gelu")
    size = _SIZE.search(arch)
    if size and "dinov2" not in words:
        hints["img_size"] = (int(size[1]), int(size[1]))
    return hints


def _model_args_hints(args: dict[str, Any]) -> dict[str, Any]:
    hints: dict[str, Any] = {}
    for key, default in _UNSUPPORTED_ARGS.items():
        if key in args and args[key] != default:
            raise CheckpointError(f"model_args {key}={args[key]!r}: vitlab's VisionTransformer has no counterpart "
                                  f"(it reads timm models with {key}={default!r})")
    for timm_key, key in _ARGS.items():
        if timm_key in args and (args[timm_key] is not None or timm_key == "init_values"):  # None: no layer scale
            hints[key] = args[timm_key]
    if "img_size" in args:
        size = args["img_size"]
        hints["img_size"] = (size, size) if isinstance(size, int) else tuple(size)
    if "pre_norm" in args:
        hints.update(norm_pre=bool(args["pre_norm"]), patch_bias=not args["pre_norm"])  # timm: bias=not pre_norm
    if args.get("act_layer") is not None:
        if args["act_layer"] not in TIMM_ACTS:
            raise CheckpointError(f"model_args act_layer={args['act_layer']!r} is not supported (vitlab's MLP "
                                  f"activations: {', '.join(map(repr, TIMM_ACTS))})")
        hints["mlp_act"] = TIMM_ACTS[args["act_layer"]]
    if isinstance(args.get("fc_norm"), bool):
        hints["fc_norm"] = args["fc_norm"]
    return hints


def hints_from_hub_config(hub_cfg: dict[str, Any]) -> tuple[dict[str, Any], Preprocessing | None, list | None]:
    """Config fields, preprocessing and class names from a timm hub ``config.json`` (see the module docstring)."""
    arch = hub_cfg.get("architecture") or ""
    entry = known_architectures().get(arch, {})
    if "unsupported" in entry:
        raise CheckpointError(f"timm's {arch} has {entry['unsupported']}, which vitlab's VisionTransformer cannot run")
    hints = architecture_hints(arch)
    args = hub_cfg.get("model_args") or {}
    unread = sorted(set(args) - _EVA_ARGS_READ) if entry.get("model") == "Eva" else []
    if unread:
        raise CheckpointError(f"model_args {unread} of timm's Eva class ({arch}) are not read by vitlab, which knows "
                              "the architecture's defaults only; load a folder saved without them")
    if "num_heads" in entry:  # timm's own settings for the architecture (tests/timm_architectures.py)
        hints.update(entry_hints(entry))
    else:
        open_fields = _assumed_for_unknown(hub_cfg)
        if open_fields:
            warnings.warn(AssumedSettingsNotice(
                f"timm's architecture {arch!r} is not among the timm {timm_version()} ViT architectures vitlab knows "
                f"and its model_args do not state {', '.join(open_fields)}: vitlab assumes them from the name and "
                f"timm's defaults (heads of 64, GELU, LayerNorm eps 1e-6); pass "
                f"{', '.join(f + '=' for f in open_fields)} to vitlab.load if they differ", tuple(open_fields)),
                stacklevel=4)
    hints.update(_model_args_hints(args))
    pool = hub_cfg.get("global_pool", args.get("global_pool"))
    if pool is not None:
        if pool not in TIMM_POOLS:
            raise CheckpointError(f"timm global_pool={pool!r} is not supported (vitlab reads "
                                  f"{', '.join(map(repr, TIMM_POOLS))})")
        if hints.get("pool") != "distill":  # VisionTransformerDistilled says 'token' and averages its two heads
            hints["pool"] = TIMM_POOLS[pool]
    pre = None
    pcfg = hub_cfg.get("pretrained_cfg") or {}
    if "mean" in pcfg:
        size = pcfg.get("input_size", (3, 224, 224))[-2:]
        pre = Preprocessing(img_size=tuple(size), mean=pcfg["mean"], std=pcfg["std"],
                            interpolation=pcfg.get("interpolation", "bicubic"), crop_pct=pcfg.get("crop_pct", 0.9))
    if "input_size" in pcfg and "img_size" not in args and pcfg.get("fixed_input_size", True):
        hints["img_size"] = tuple(pcfg["input_size"][-2:])  # timm builds a fixed-size model at its pretrained size
    if "mlp_act" in hub_config_leaves_open(hub_cfg, hints):
        notes = " ".join(str(n) for n in pcfg.get("notes") or ())
        warnings.warn(f"timm's notes on these weights say {notes!r}; its architecture {arch} runs them with GELU and "
                      "so does vitlab (timm's outputs); pass mlp_act='quick_gelu' for the original model's",
                      AssumedSettingsNotice, stacklevel=4)
    names = hub_cfg.get("label_names") or None
    return hints, pre, names


def _assumed_for_unknown(hub_cfg: dict[str, Any]) -> list[str]:
    """The settings a hub config of an architecture not in the table leaves to assumption (its model_args state
    only what differs from the architecture's defaults)."""
    if "num_heads" in known_architectures().get(hub_cfg.get("architecture") or "", {}):
        return []
    args = hub_cfg.get("model_args") or {}
    return [f for f, arg in (("num_heads", "num_heads"), ("mlp_act", "act_layer"), ("norm_eps", "norm_layer"))
            if arg not in args]


def hub_config_leaves_open(hub_cfg: dict[str, Any], hints: dict[str, Any]) -> set[str]:
    """The fields of ``hints`` (:func:`hints_from_hub_config`'s) that a hub config does not settle, so that an
    argument may set them: the MLP activation of QuickGELU weights timm runs with GELU (its own notes put it in
    doubt), and what an architecture vitlab does not know leaves to assumption."""
    notes = " ".join(str(n) for n in (hub_cfg.get("pretrained_cfg") or {}).get("notes") or ())
    open_fields = set(_assumed_for_unknown(hub_cfg))
    if "quickgelu" in notes.lower().replace(" ", "") and hints.get("mlp_act") != "quick_gelu":
        open_fields.add("mlp_act")
    return open_fields


def _check_exportable(cfg: ViTConfig) -> None:
    if cfg.norm_layer != "layernorm" or cfg.patch_norm or not cfg.proj_bias or not cfg.mlp_bias:
        raise CheckpointError("RMSNorm, a patch norm or bias-free projections (AIMv2's) are not written for timm's "
                              "VisionTransformer by vitlab; save this model in vitlab's format instead")
    if cfg.res_post_norm:
        raise CheckpointError("res_post_norm=True (norms after each branch) is not written for timm's "
                              "VisionTransformer by vitlab; save this model in vitlab's format instead")
    if cfg.rope != "none":
        raise CheckpointError(f"rope={cfg.rope!r}: timm's VisionTransformer has no RoPE (timm runs it in its Eva "
                              "class, which vitlab does not write); save this model in vitlab's format instead")
    if cfg.stem != "patch" or cfg.representation_size or cfg.pos_embed.startswith("sincos2d"):
        raise CheckpointError("timm's VisionTransformer has no conv stem, pre-logits layer or sincos2d table; "
                              "save this model in vitlab's format instead")
    if cfg.attn_pool_mlp_dim or not cfg.attn_pool_mlp:
        raise CheckpointError("an attention pool whose MLP is narrower than the blocks' or absent (Perception Encoder "
                              "gigantic's, AIMv2's) is not written for timm's VisionTransformer by vitlab; save this "
                              "model in vitlab's format instead")
    if cfg.pool == "token_gap":
        raise CheckpointError("pool='token_gap' ([class token; mean patch token]) has no timm counterpart: timm's "
                              "VisionTransformer pools 'token', 'avg' or 'map'; save this model in vitlab's format")
    if cfg.norm_pre and cfg.patch_bias:
        raise CheckpointError("norm_pre=True with patch_bias=True has no timm counterpart: timm's pre_norm=True "
                              "drops the patch bias; save this model in vitlab's format")
    if cfg.distill_token and cfg.pool != "distill":
        raise CheckpointError(f"a distillation token with pool={cfg.pool!r} has no timm counterpart (timm's "
                              "VisionTransformerDistilled pools both tokens); save this model in vitlab's format")
    if cfg.pool == "distill" and (cfg.num_register_tokens or cfg.pos_embed != "learned"):
        raise CheckpointError("timm's VisionTransformerDistilled has no register tokens and needs a learned "
                              "position table; save this model in vitlab's format")


def to_timm(sd: dict[str, torch.Tensor], cfg: ViTConfig) -> dict[str, torch.Tensor]:
    """vitlab state dict -> one that ``timm_model_class(cfg)(**timm_model_args(cfg))`` loads strictly.

    Registers get zero position rows (they had none) unless ``no_embed_class`` (timm then gives no prefix token a
    row); a bias-free patch projection without norm_pre gets a zero bias; an attention pool without qkv biases
    gets zero ones (timm's always has them). timm resamples the table with antialiased bicubic at other sizes:
    a model whose ``pos_resample`` is another method exports the same weights, which timm resamples its own way.
    """
    _check_exportable(cfg)
    sd = {k: v.detach().clone() for k, v in sd.items()}
    if "pos_embed" in sd and cfg.num_register_tokens and not cfg.no_embed_class:
        n_cls, pos = int(cfg.class_token), sd["pos_embed"]  # timm's rows: [class, registers, grid]
        zeros = pos.new_zeros(1, cfg.num_register_tokens, pos.shape[-1])
        sd["pos_embed"] = torch.cat([pos[:, :n_cls], zeros, pos[:, n_cls:]], dim=1)
    if not cfg.patch_bias and not cfg.norm_pre:
        w = sd["patch_embed.proj.weight"]
        sd["patch_embed.proj.bias"] = w.new_zeros(w.shape[0])
    if cfg.pool == "map" and not cfg.qkv_bias:
        D = cfg.embed_dim
        sd["attn_pool.q.bias"] = torch.zeros(D)
        sd["attn_pool.kv.bias"] = torch.zeros(2 * D)
    return sd


def timm_model_class(cfg: ViTConfig) -> str:
    """The import path of the timm class ``to_timm``'s state dict is for: DeiT's distilled models (pool
    "distill") are ``timm.models.deit.VisionTransformerDistilled``, every other model timm's VisionTransformer.
    For example::

        module, name = timm_model_class(cfg).rsplit(".", 1)
        model = getattr(importlib.import_module(module), name)(**timm_model_args(cfg))
    """
    _check_exportable(cfg)
    return TIMM_DISTILLED_CLASS if cfg.pool == "distill" else TIMM_VIT_CLASS


def timm_model_args(cfg: ViTConfig) -> dict[str, Any]:
    """Keyword arguments for ``timm_model_class(cfg)`` of the same architecture. ``norm_layer`` is a
    ``functools.partial(torch.nn.LayerNorm, eps=...)`` when the eps is not timm's 1e-6, and a SwiGLU MLP is timm's
    ``SwiGLUPacked`` class (not JSON: give them to the class, not to a config.json; the latter imports timm)."""
    _check_exportable(cfg)
    hidden = 2 * cfg.mlp_dim if cfg.mlp_layer == "swiglu" else cfg.mlp_dim  # timm's SwiGLUPacked: fc1's width
    ratio = hidden / cfg.embed_dim
    if int(cfg.embed_dim * ratio) != hidden:  # timm's hidden width is int(D * mlp_ratio): no rounding down
        ratio = (hidden + 0.5) / cfg.embed_dim
    args: dict[str, Any] = dict(
        img_size=cfg.img_size, patch_size=cfg.patch_size, in_chans=cfg.in_chans, num_classes=cfg.num_classes,
        embed_dim=cfg.embed_dim, depth=cfg.depth, num_heads=cfg.num_heads, mlp_ratio=ratio,
        qkv_bias=cfg.qkv_bias, qk_norm=cfg.qk_norm, init_values=cfg.layer_scale_init,
        class_token=cfg.class_token, no_embed_class=cfg.no_embed_class, pre_norm=cfg.norm_pre,
        global_pool={"distill": "token", "gap": "avg"}.get(cfg.pool, cfg.pool), fc_norm=cfg.fc_norm,
        pos_embed="learn" if cfg.pos_embed == "learned" else "none",
    )
    if cfg.pool != "distill":  # VisionTransformerDistilled has no register tokens
        args["reg_tokens"] = cfg.num_register_tokens
    if cfg.mlp_layer == "swiglu":
        from timm.layers import SwiGLUPacked  # timm is the caller's: this builds a timm model

        args.update(mlp_layer=SwiGLUPacked, act_layer="silu")
    elif cfg.mlp_act != "gelu":
        args["act_layer"] = cfg.mlp_act  # timm's names: 'gelu_tanh', 'quick_gelu'
    if cfg.norm_eps != TIMM_NORM_EPS:
        args["norm_layer"] = functools.partial(torch.nn.LayerNorm, eps=cfg.norm_eps)
    return args
