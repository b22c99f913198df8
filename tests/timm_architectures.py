"""What timm's ViT-family architectures are, read off timm itself: the source of
``vitlab/convert/timm_architectures.json``, the table vitlab reads bare timm state dicts and timm hub folders with.

For every architecture of the modules in ``MODULES``: the layout signature of its tensors (``vitlab.convert.timm.
layout_signature``: names and the shapes that do not depend on depth, image size or classes) and what the tensors
cannot show: heads, MLP activation, LayerNorm eps, pooling, and, when vitlab's model cannot run it, why not. The
model is built on the meta device with two blocks, so the whole table takes seconds.

    python tests/timm_architectures.py      # rewrite the table from the installed timm

``tests/test_loader_sweep.py`` checks that the shipped table is the one the installed timm gives: a timm release
that adds or changes an architecture fails there until the table is rewritten (and the sweep says what loads).
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import timm
import timm.models._registry as timm_registry
import torch
from torch import nn

from vitlab.convert.timm import ARCHITECTURES_FILE, layout_signature

MODULES = ("vision_transformer", "deit", "eva", "vision_transformer_relpos", "vision_transformer_hybrid", "naflexvit",
           "beit", "vision_transformer_sam")
SUPPORTED_MODELS = ("VisionTransformer", "VisionTransformerDistilled", "Eva")
# timm classes vitlab's block has no counterpart for, by what they do
UNSUPPORTED_PARTS = {
    "ParallelScalingBlock": "parallel blocks (attention and MLP side by side, timm's ParallelScalingBlock)",
    "ParallelThingsBlock": "parallel blocks (several attention and MLP branches, timm's ParallelThingsBlock)",
    "DiffParallelScalingBlock": "parallel blocks with differential attention (timm's DiffParallelScalingBlock)",
    "HybridEmbed": "a CNN backbone before the patch embedding (hybrid ViT)",
}


def architectures() -> list[str]:
    return sorted(n for n in timm.list_models() if timm_registry._model_to_module[n] in MODULES)


def build(name: str) -> nn.Module:
    """The architecture with two blocks (its own depth where two do not build), on the meta device."""
    with torch.device("meta"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return timm.create_model(name, depth=2)
        except Exception:  # noqa: BLE001 (a class without depth, or one whose per-block settings need its own)
            return timm.create_model(name)


def _act(module: nn.Module) -> str:
    kind = type(module).__name__
    if kind == "GELU":
        return "gelu_tanh" if getattr(module, "approximate", "none") == "tanh" else "gelu"
    return {"GELUTanh": "gelu_tanh", "QuickGELU": "quick_gelu"}.get(kind, kind)


def rope_of(rope: nn.Module | None) -> dict | str:
    """vitlab's RoPE fields (ViTConfig.rope, rope_theta, rope_axes, rope_ref_grid) for timm's RoPE module, or why
    vitlab has no counterpart."""
    if rope is None:
        return {}
    kind, a = type(rope).__name__, vars(rope)
    if kind == "RotaryEmbeddingDinoV3" and a["min_period"] is None and a["normalize_coords"] == "separate" \
            and a["grid_offset"] == 0 and a["grid_indexing"] == "ij" and a["rotate_half"]:
        return dict(rope="dinov3", rope_theta=float(a["temperature"]))
    if kind == "RotaryEmbeddingCat" and a["grid_type"] == "index" and not a["rotate_half"] and not a["in_pixels"]:
        fields = dict(rope="axial", rope_theta=float(a["temperature"]))
        if a["grid_offset"]:
            fields["rope_offset"] = float(a["grid_offset"])
        if a["grid_indexing"] == "ij":
            fields["rope_axes"] = "yx"
        if a["ref_feat_shape"] is not None:
            fields["rope_ref_grid"] = list(a["ref_feat_shape"])
        return fields
    if kind == "RotaryEmbeddingMixed" and a["grid_indexing"] == "xy":
        return dict(rope="mixed", rope_theta=float(a["temperature"]))
    return (f"timm's {kind} (grid {a.get('grid_type')}, indexing {a.get('grid_indexing')}, reference shape "
            f"{a.get('ref_feat_shape')}), a RoPE vitlab does not have")


def _unsupported(model: nn.Module) -> str | None:
    """Why vitlab's VisionTransformer cannot run ``model`` (a timm model), or None."""
    kind = type(model).__name__
    rope = rope_of(getattr(model, "rope", None))
    if isinstance(rope, str):
        return rope
    for module in model.modules():
        if type(module).__name__ in UNSUPPORTED_PARTS:
            return UNSUPPORTED_PARTS[type(module).__name__]
    if kind not in SUPPORTED_MODELS:
        return f"timm's {kind} class"
    block = model.blocks[0]
    blocks = ("Block", "EvaBlock", "ResPostBlock", "EvaBlockPostNorm")
    attentions = ("Attention", "EvaAttention", "AttentionRope")
    if type(block).__name__ not in blocks or type(block.attn).__name__ not in attentions:
        return f"timm's {type(block).__name__} with {type(block.attn).__name__}"
    if getattr(block.attn, "qkv", None) is None and getattr(block.attn, "q_proj", None) is None:
        return f"timm's {type(block.attn).__name__} without q, k and v projections"
    for b in model.blocks:  # per-block settings (timm's sapiens2 vary them by depth)
        if getattr(b.attn, "gate", None) is not None or getattr(b.attn, "num_kv_groups", 1) != 1:
            return "gated or grouped-query attention"
        if (getattr(b, "gamma_1", None) is None) != (getattr(b, "gamma_2", None) is None):
            return "layer scale on one branch only (timm's attn_only_layer_scale)"
    if type(block.attn.norm).__name__ not in ("Identity", "LayerNorm"):
        return f"a {type(block.attn.norm).__name__} inside the attention"
    gated = type(block.mlp).__name__ in ("GluMlp", "SwiGLU")
    if not isinstance(block.mlp.norm, nn.Identity) and not (gated and type(block.mlp.norm).__name__ == "LayerNorm"):
        return "a norm inside the MLP (timm's scale_mlp_norm) other than EVA-02's LayerNorm in its SwiGLU"
    if type(block.mlp).__name__ == "GluMlp":  # vitlab's SwiGLU: the gate first, SiLU
        if block.mlp.gate_last or type(block.mlp.act).__name__ != "SiLU":
            return f"a gated MLP with {type(block.mlp.act).__name__} (vitlab's SwiGLU gates the first half with SiLU)"
    elif type(block.mlp).__name__ == "SwiGLU":  # separate gate and value layers: vitlab packs them
        if type(block.mlp.act).__name__ != "SiLU":
            return f"a gated MLP with {type(block.mlp.act).__name__} (vitlab's SwiGLU gates with SiLU)"
    elif type(block.mlp).__name__ != "Mlp":
        return f"timm's {type(block.mlp).__name__} MLP"
    elif _act(block.mlp.act) not in ("gelu", "gelu_tanh", "quick_gelu"):
        return f"the MLP activation {type(block.mlp.act).__name__}"
    if model.global_pool not in ("token", "avg", "map", ""):
        return f"timm's global_pool={model.global_pool!r}"
    if getattr(model, "pool_include_prefix", False):
        return "average pooling over the prefix tokens too (timm's pool_include_prefix)"
    norms = {type(m).__name__ for m in model.modules() if type(m).__name__ in ("LayerNorm", "RmsNorm")}
    if len(norms) > 1:
        return f"both {' and '.join(sorted(norms))}"
    if type(model.patch_embed.norm).__name__ not in ("Identity", *norms):
        return f"a {type(model.patch_embed.norm).__name__} after the patch embedding"
    pool = getattr(model, "attn_pool", None)
    if pool is not None and (pool.latent_len != 1 or pool.pos_embed is not None or pool.pool != "token"
                             or not isinstance(pool.q_norm, nn.Identity)):
        return f"an attention pool of {pool.latent_len} queries, a position table or a q/k norm"
    eps = {m.eps for m in model.modules() if type(m).__name__ in ("LayerNorm", "RmsNorm")}
    if len(eps) > 1:
        return f"LayerNorms of different eps ({sorted(eps)})"
    return None


def describe(name: str) -> dict:
    """One architecture's entry in the table."""
    model = build(name)
    entry = {"signature": layout_signature(model.state_dict()), "model": type(model).__name__}
    unsupported = _unsupported(model)
    if unsupported:
        entry["unsupported"] = unsupported
        return entry
    block = model.blocks[0]
    swiglu = type(block.mlp).__name__ in ("GluMlp", "SwiGLU")
    entry.update(num_heads=block.attn.num_heads, mlp_act="gelu" if swiglu else _act(block.mlp.act),
                 norm_eps=block.norm1.eps, global_pool=model.global_pool or "token")
    if swiglu:
        entry["mlp_layer"] = "swiglu"  # mlp_act is then unused: its default
    entry.update(rope_of(getattr(model, "rope", None)))
    if type(block).__name__ in ("ResPostBlock", "EvaBlockPostNorm"):
        entry["res_post_norm"] = True  # x + norm(f(x)): the same tensors as pre-norm blocks
    if type(block.norm1).__name__ == "RmsNorm":
        entry["norm_layer"] = "rmsnorm"  # AIMv2 (the tensors show no bias, which a bias-free LayerNorm would too)
    if isinstance(model.norm, nn.Identity) and isinstance(getattr(model, "fc_norm", nn.Identity()), nn.Identity):
        entry["final_norm"] = False  # Perception Encoder's spatial and language towers
    pool = getattr(model, "attn_pool", None)
    if pool is not None and pool.num_heads != block.attn.num_heads:
        entry["attn_pool_heads"] = pool.num_heads  # Perception Encoder: 8
    if pool is not None and model.num_prefix_tokens and type(model).__name__ == "Eva":  # Eva's pool reads every
        entry["attn_pool_prefix"] = True  # token; VisionTransformer's the patches (or refused: pool_include_prefix)
    return entry


def table() -> dict:
    archs = {}
    for name in architectures():
        try:
            archs[name] = describe(name)
        except Exception as e:  # noqa: BLE001 (timm cannot build a few with two blocks: say which and why)
            archs[name] = {"unbuildable": f"{type(e).__name__}: {str(e).splitlines()[0]}"}
    return {"timm_version": timm.__version__, "modules": list(MODULES), "architectures": archs}


if __name__ == "__main__":
    data = table()
    Path(ARCHITECTURES_FILE).write_text(json.dumps(data, indent=0, sort_keys=True) + "\n")
    print(f"{len(data['architectures'])} architectures of timm {timm.__version__} -> {ARCHITECTURES_FILE}",
          file=sys.stderr)
