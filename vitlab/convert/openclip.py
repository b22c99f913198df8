"""OpenAI CLIP and OpenCLIP image towers (``visual.*`` state dicts) -> vitlab.

A CLIP state dict holds both towers; vitlab reads the image tower, and its output is CLIP's image embedding
(``encode_image`` before normalisation): the projection becomes the head, so ``forward`` returns the (B, E)
embedding. The text tower (``transformer.*``, ``token_embedding``, ``ln_final``, ``text_projection``, ``text.*``)
and ``logit_scale`` / ``logit_bias`` are left out. A tower saved on its own (``model.visual.state_dict()``, no
``visual.`` prefix) reads the same way.

Name mapping (OpenAI's ``VisionTransformer`` and OpenCLIP's ``open_clip.transformer.VisionTransformer``):
    visual.conv1.weight (no bias)                         -> patch_embed.proj.weight (patch_bias=False)
    visual.class_embedding (D,)                           -> cls_token (1, 1, D)
    visual.positional_embedding (1 + h*w, D)              -> pos_embed (1, 1 + h*w, D), class row first
    visual.ln_pre                                         -> norm_pre (absent with OpenCLIP's no_ln_pre)
    visual.transformer.resblocks.{i}.                     -> blocks.{i}.
      ln_1 / ln_2                                         ->   norm1 / norm2
      attn.in_proj_weight / in_proj_bias, rows [q; k; v]  ->   attn.qkv.weight / attn.qkv.bias
      attn.out_proj                                       ->   attn.proj
      mlp.c_fc / mlp.c_proj                               ->   mlp.fc1 / mlp.fc2
      ls_1.gamma / ls_2.gamma (OpenCLIP's layer scale)    ->   ls1.gamma / ls2.gamma
    visual.ln_post                                        -> norm (on every token, then the class token: pool="token");
                                                             fc_norm for CLIPA (after the mean)
    visual.proj (D, E)                                    -> head.weight = proj.T (E, D), head.bias = 0
What the weights cannot show:
    activation   OpenAI's own state dicts (they carry ``input_resolution``, ``context_length`` and ``vocab_size``
                 entries) were trained with QuickGELU: mlp_act="quick_gelu", for certain. Any other (OpenCLIP-trained)
                 is read with GELU, OpenCLIP's default, in a one-line notice: its ``*-quickgelu`` models (and
                 OpenAI weights re-saved by OpenCLIP) want mlp_act='quick_gelu'.
    heads        OpenAI: width / 64. OpenCLIP: ``OPENCLIP_HEADS``, the head count of every OpenCLIP ViT config by width
                 (head width 64 but for ViT-H 1280, ViT-g 1408, ViT-bigG 1664, ViT-e 1792: 16 heads); another
                 width gets width / 64 in the notice (``num_heads=`` if it differs).
    norm eps     1e-5 (torch's nn.LayerNorm default, which both use); CLIP's preprocessing at the table's size.
    pooling      the class token (OpenCLIP's default pool_type 'tok'). A tower without ln_pre is CLIPA's (the only
                 OpenCLIP ViT config with no_ln_pre): pool_type 'avg' (the mean of the patch tokens) and
                 final_ln_after_pool, so ln_post becomes fc_norm and vitlab pools "gap" (said in the notice).
OpenCLIP resizes the position table with antialiased bicubic (``resize_pos_embed``), vitlab's default.

Other OpenCLIP image towers:
    visual.trunk.* + visual.head.proj   a timm model inside OpenCLIP (``TimmModel``: SigLIP, ...): read as a timm
                                        state dict (``vitlab.convert.timm``, with its notices); the Linear
                                        ``visual.head.proj`` (bias 0 when absent) is the head
    visual.attn_pool.* (CoCa), visual.layer1.* (ModifiedResNet), visual.head.mlp.*   not supported: an error
"""

from __future__ import annotations

import re
import warnings
from typing import Any

import torch

from vitlab.convert import AssumedSettingsNotice, CheckpointError, Converted
from vitlab.convert import timm as timm_convert
from vitlab.preprocess import Preprocessing

CLIP_NORM_EPS = 1e-5  # OpenAI's and OpenCLIP's LayerNorm: torch's default eps
OPENAI_KEYS = ("input_resolution", "context_length", "vocab_size")  # in OpenAI's released (JIT) state dicts only
# Heads by width of every OpenCLIP ViT config (open_clip 3.3's model_configs: each width has one answer; checked by
# tests/test_loader_sweep.py): head width 64 but for ViT-H 1280, ViT-g 1408, ViT-bigG 1664, ViT-e 1792 (16 heads).
OPENCLIP_HEADS = {384: 6, 512: 8, 768: 12, 896: 14, 1024: 16, 1280: 16, 1408: 16, 1664: 16, 1792: 16}
OPENAI_HEAD_WIDTH = 64

_TOP_NAMES = {
    "conv1.weight": "patch_embed.proj.weight",
    "class_embedding": "cls_token",
    "positional_embedding": "pos_embed",
    "ln_pre.weight": "norm_pre.weight",
    "ln_pre.bias": "norm_pre.bias",
    "ln_post.weight": "norm.weight",
    "ln_post.bias": "norm.bias",
}
_BLOCK = re.compile(r"^transformer\.resblocks\.(\d+)\.(.+)$")
_BLOCK_NAMES = {
    "ln_1.weight": "norm1.weight",
    "ln_1.bias": "norm1.bias",
    "attn.in_proj_weight": "attn.qkv.weight",
    "attn.in_proj_bias": "attn.qkv.bias",
    "attn.out_proj.weight": "attn.proj.weight",
    "attn.out_proj.bias": "attn.proj.bias",
    "ln_2.weight": "norm2.weight",
    "ln_2.bias": "norm2.bias",
    "mlp.c_fc.weight": "mlp.fc1.weight",
    "mlp.c_fc.bias": "mlp.fc1.bias",
    "mlp.c_proj.weight": "mlp.fc2.weight",
    "mlp.c_proj.bias": "mlp.fc2.bias",
    "ls_1.gamma": "ls1.gamma",
    "ls_2.gamma": "ls2.gamma",
}


def _tower(sd: dict[str, Any]) -> dict[str, Any] | None:
    """The image tower's tensors without their ``visual.`` prefix, or None if this is no CLIP state dict."""
    visual = {k[len("visual."):]: v for k, v in sd.items() if k.startswith("visual.")}
    if visual:
        return visual
    if "conv1.weight" in sd and "class_embedding" in sd:  # a tower saved on its own
        return dict(sd)
    if any(k.startswith("trunk.") for k in sd) and any(k.startswith("head.proj.") for k in sd):  # TimmModel's own
        return dict(sd)
    return None


def is_format(sd: dict[str, Any]) -> bool:
    tower = _tower(sd)
    return tower is not None and (any(k in tower for k in ("conv1.weight", "layer1.0.conv1.weight"))
                                  or any(k.startswith("trunk.") for k in tower))


def read_state_dict(sd: dict[str, torch.Tensor]) -> Converted:
    tower = _tower(sd)
    if tower is None:
        raise CheckpointError("not a CLIP state dict: no visual.* tensors")
    if any(k.startswith("layer1.") for k in tower):
        raise CheckpointError("this CLIP image tower is a ModifiedResNet (visual.layer1.*, CLIP's RN50 family), not "
                              "a ViT; vitlab reads CLIP's ViT towers")
    if any(k.startswith("attn_pool.") for k in tower):
        raise CheckpointError("this OpenCLIP image tower pools with an attentional pooler (visual.attn_pool.*, "
                              "CoCa); vitlab has no counterpart for it")
    if any(k.startswith("trunk.") for k in tower):
        return _read_trunk(tower)
    out: dict[str, torch.Tensor] = {}
    for key, value in tower.items():
        m = _BLOCK.match(key)
        if key in _TOP_NAMES:
            out[_TOP_NAMES[key]] = value
        elif m is not None and m[2] in _BLOCK_NAMES:
            out[f"blocks.{m[1]}.{_BLOCK_NAMES[m[2]]}"] = value
        elif key == "proj":  # (D, E): pooled @ proj
            out["head.weight"] = value.t().contiguous()  # (E, D)
            out["head.bias"] = value.new_zeros(value.shape[1])
        else:
            out[key] = value  # not a tensor vitlab has: vitlab.load reports it as unexpected
    if "cls_token" in out:
        out["cls_token"] = out["cls_token"].reshape(1, 1, -1)  # (D,) -> (1, 1, D)
    if "pos_embed" in out:
        out["pos_embed"] = out["pos_embed"].unsqueeze(0)  # (N, D) -> (1, N, D)
    width = out["patch_embed.proj.weight"].shape[0]
    openai = all(k in sd for k in OPENAI_KEYS)
    hints: dict[str, Any] = dict(norm_eps=CLIP_NORM_EPS, pool="token",
                                 mlp_act="quick_gelu" if openai else "gelu")
    if "norm_pre.weight" not in out and not openai:  # CLIPA, the one OpenCLIP ViT without ln_pre
        hints.update(pool="gap", fc_norm=True)  # mean of the patch tokens, then ln_post
        out = {("fc_norm" + k[len("norm"):] if k.startswith("norm.") else k): v for k, v in out.items()}
    assumed = ["mlp_act"]
    if openai:
        heads = width // OPENAI_HEAD_WIDTH
    elif width in OPENCLIP_HEADS:
        heads = OPENCLIP_HEADS[width]
    else:
        heads = width // OPENAI_HEAD_WIDTH
        assumed.append("num_heads")
    if heads and width % heads == 0:
        hints["num_heads"] = heads
    conv = Converted(out, "openai-clip" if openai else "openclip", hints=hints)
    size = timm_convert.table_size(out)
    if size is not None:
        conv.preprocessing = Preprocessing.for_family("clip", size)
    if not openai:
        heads_said = (f"; and {heads} heads of 64 (width {width} is none of OpenCLIP's ViT configs'), else pass "
                      "num_heads=" if "num_heads" in assumed else "")
        clipa = "; no ln_pre: CLIPA's layout (mean of the patch tokens, then ln_post)" if hints["pool"] == "gap" else ""
        warnings.warn(AssumedSettingsNotice(
            "an OpenCLIP image tower (no input_resolution/context_length/vocab_size entries, so not OpenAI's own "
            "file): vitlab assumes GELU, OpenCLIP's default; for OpenAI's weights and OpenCLIP's *-quickgelu models "
            f"pass mlp_act='quick_gelu' to vitlab.load{heads_said}{clipa}", tuple(assumed)), stacklevel=4)
    return conv


def _read_trunk(tower: dict[str, torch.Tensor]) -> Converted:
    """OpenCLIP's TimmModel: a timm state dict under ``trunk.``, its projection in ``head.proj``."""
    if any(k.startswith("head.mlp.") for k in tower):
        raise CheckpointError("this OpenCLIP timm tower projects with an MLP (visual.head.mlp.*); vitlab reads a "
                              "Linear projection (visual.head.proj) or none")
    sd = {k[len("trunk."):]: v for k, v in tower.items() if k.startswith("trunk.")}
    if "head.proj.weight" in tower:
        if "head.weight" in sd:
            raise CheckpointError("this OpenCLIP timm tower has both a trunk head and visual.head.proj; vitlab reads "
                                  "one head")
        w = tower["head.proj.weight"]  # (E, D)
        sd["head.weight"] = w
        sd["head.bias"] = tower.get("head.proj.bias", w.new_zeros(w.shape[0]))
    sd.update({k: v for k, v in tower.items() if not k.startswith(("trunk.", "head.proj."))})  # reported unexpected
    conv = timm_convert.read_state_dict(sd)
    conv.format = "openclip"
    return conv
