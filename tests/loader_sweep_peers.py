"""The loader sweep's transformers and OpenCLIP parts (``tests/loader_sweep.py`` has the harness and timm's).

transformers: the ViT family vitlab reads (ViT, DeiT, DINOv2 with and without registers, CLIP, SigLIP, ViT-MAE),
with the variations a user meets (pooler or not, a task head, a non-square image, another activation, no qkv
bias, the real widths of a few released models), and the neighbours a user may try (ViT-MSN, I-JEPA, DINOv3,
SigLIP 2, BEiT, DPT, Chinese-CLIP, AIMv2, Swin). Each is tiny (two layers) and random, saved as a
``save_pretrained`` folder ("folder") and as a bare state dict ("bare"), and compared with the output vitlab's
``model(x)`` stands for (``vitlab.convert.hf``'s table): the logits of a task model, else the pooled output.

OpenCLIP: every distinct ViT image tower of ``open_clip.list_models()`` (its own VisionTransformer, or a timm ViT
trunk), two blocks, built with OpenCLIP's ``_build_vision_tower``, saved as a ``visual.``-prefixed state dict
("bare") and as the tower alone ("tower"), compared with ``tower(x)``: the image embedding before normalisation.

    python tests/loader_sweep_peers.py [hf|openclip]     # every case, one line each, and the counts
"""

from __future__ import annotations

import json
import math
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any
from unittest import mock

import torch

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))

from loader_sweep import MAX_PARAMS, Outcome, randomize_, run_case, save_bare  # noqa: E402

# --- transformers -----------------------------------------------------------------------------------------------

HF_FORMS = ("folder", "bare")
HF_ACTS = {"gelu": "gelu", "gelu_pytorch_tanh": "gelu_tanh", "gelu_new": "gelu_tanh", "quick_gelu": "quick_gelu"}
TINY = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128)  # 4 heads: not 64 // 64
TINY3 = dict(hidden_size=96, num_hidden_layers=2, num_attention_heads=3, intermediate_size=160)  # head width 32
P8 = dict(image_size=32, patch_size=8)  # a 4 x 4 grid
P14 = dict(image_size=56, patch_size=14)  # DINOv2's patch, a 4 x 4 grid
P16 = dict(image_size=64, patch_size=16)  # the released models' patch, a 4 x 4 grid
TEXT = dict(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=40,
            max_position_embeddings=16)
MAE_DECODER = dict(decoder_hidden_size=16, decoder_num_hidden_layers=1, decoder_num_attention_heads=2,
                   decoder_intermediate_size=32, mask_ratio=0.0)


@dataclass(frozen=True)
class Peer:
    """One transformers configuration: the class, its config and what of its output vitlab's ``model(x)`` is."""

    cls: str
    config: dict[str, Any]
    # "logits", "pooler_output", "image_embeds": that output field; "cls": last_hidden_state[:, 0] (the class token
    # after the final norm); "mean": last_hidden_state.mean(1); "features": get_image_features(x).pooler_output
    output: str = "pooler_output"
    pool: str | None = None  # vitlab's pool for it, where the module docstring of vitlab.convert.hf gives one
    init: dict[str, Any] = field(default_factory=dict)  # constructor arguments (add_pooling_layer=...)
    vision: bool = False  # the config's fields go in a vision_config (CLIPModel, SiglipModel), with a tiny text one
    encoder: str | None = None  # the submodule whose output is compared (ViTMAEForPreTraining's "vit")
    bare_output: str | None = None  # what a bare state dict stands for, where it differs (no config.json to say)


def _peers() -> dict[str, Peer]:
    labels = dict(num_labels=5)
    return {
        # ViT
        "ViTModel": Peer("ViTModel", {**TINY, **P8}, "cls", "token", dict(add_pooling_layer=False)),
        "ViTModel+pooler": Peer("ViTModel", {**TINY, **P8}, "pooler_output", "token"),
        "ViTForImageClassification": Peer("ViTForImageClassification", {**TINY, **P8, **labels}, "logits", "token"),
        "ViT non-square 80x112": Peer("ViTForImageClassification", {**TINY, "image_size": (80, 112), "patch_size": 16,
                                                                    **labels}, "logits", "token"),
        # the pooler keeps its activation (representation_act); one vitlab has not is dropped, in a warning
        "ViTModel pooler_act=relu": Peer("ViTModel", {**TINY, **P8, "pooler_act": "relu"}, "pooler_output", "token"),
        "ViTModel pooler_act=gelu_new": Peer("ViTModel", {**TINY, **P8, "pooler_act": "gelu_new"}, "cls", "token",
                                             bare_output="pooler_output"),
        "ViT hidden_act=relu": Peer("ViTModel", {**TINY, **P8, "hidden_act": "relu"}, "cls", "token",
                                    dict(add_pooling_layer=False)),
        "ViT hidden_act=silu": Peer("ViTModel", {**TINY, **P8, "hidden_act": "silu"}, "cls", "token",
                                    dict(add_pooling_layer=False)),
        "ViT hidden_act=gelu_new": Peer("ViTForImageClassification", {**TINY, **P8, "hidden_act": "gelu_new",
                                                                      **labels}, "logits", "token"),
        "ViT qkv_bias=False": Peer("ViTForImageClassification", {**TINY3, **P8, "qkv_bias": False, **labels},
                                   "logits", "token"),
        "ViT layer_norm_eps=1e-6": Peer("ViTModel", {**TINY3, **P8, "layer_norm_eps": 1e-6}, "cls", "token",
                                        dict(add_pooling_layer=False)),
        "ViT-B/16 (768, 12 heads)": Peer("ViTForImageClassification", dict(hidden_size=768, num_hidden_layers=2,
                                         num_attention_heads=12, intermediate_size=3072, **P16, **labels), "logits",
                                         "token"),
        "ViT 768 wide, 16 heads": Peer("ViTModel", dict(hidden_size=768, num_hidden_layers=2, num_attention_heads=16,
                                       intermediate_size=3072, **P16), "pooler_output", "token"),
        "ViTForMaskedImageModeling": Peer("ViTForMaskedImageModeling", {**TINY, **P8}, "cls", "token",
                                          encoder="vit"),
        # DeiT
        "DeiTModel": Peer("DeiTModel", {**TINY, **P8}, "cls", "token", dict(add_pooling_layer=False)),
        "DeiTModel+pooler": Peer("DeiTModel", {**TINY, **P8}, "pooler_output", "token"),
        "DeiTForImageClassification": Peer("DeiTForImageClassification", {**TINY, **P8, **labels}, "logits", "token"),
        "DeiTForImageClassificationWithTeacher": Peer("DeiTForImageClassificationWithTeacher",
                                                      {**TINY, **P8, **labels}, "logits", "distill"),
        "DeiT-S (384, 6 heads) with teacher": Peer("DeiTForImageClassificationWithTeacher", dict(
            hidden_size=384, num_hidden_layers=2, num_attention_heads=6, intermediate_size=1536, **P16, **labels),
            "logits", "distill"),
        # DINOv2
        "Dinov2Model": Peer("Dinov2Model", {**TINY, **P14, "mlp_ratio": 2}, "pooler_output", "token"),
        "Dinov2ForImageClassification": Peer("Dinov2ForImageClassification", {**TINY, **P14, "mlp_ratio": 2,
                                                                              **labels}, "logits", "token_gap"),
        "Dinov2 use_swiglu_ffn=True": Peer("Dinov2Model", {**TINY, **P14, "use_swiglu_ffn": True}, "pooler_output",
                                           "token"),
        "DINOv2-S/14 (384, 6 heads)": Peer("Dinov2Model", dict(hidden_size=384, num_hidden_layers=2,
                                           num_attention_heads=6, **P14), "pooler_output", "token"),
        "Dinov2WithRegistersModel": Peer("Dinov2WithRegistersModel", {**TINY, **P14, "mlp_ratio": 2,
                                                                      "num_register_tokens": 4}, "pooler_output",
                                         "token"),
        "Dinov2WithRegistersForImageClassification": Peer("Dinov2WithRegistersForImageClassification",
                                                          {**TINY, **P14, "num_register_tokens": 4, **labels},
                                                          "logits", "token_gap"),
        # CLIP
        "CLIPVisionModel": Peer("CLIPVisionModel", {**TINY, **P8}, "pooler_output", "token"),
        "CLIPVisionModelWithProjection": Peer("CLIPVisionModelWithProjection", {**TINY, **P8, "projection_dim": 24},
                                              "image_embeds", "token"),
        "CLIPModel": Peer("CLIPModel", {**TINY, **P8}, "features", "token", vision=True),
        "CLIP ViT-L/14 (1024, 16 heads) with projection": Peer("CLIPVisionModelWithProjection", dict(
            hidden_size=1024, num_hidden_layers=2, num_attention_heads=16, intermediate_size=4096, **P14,
            projection_dim=768), "image_embeds", "token"),
        # OpenCLIP-trained CLIPs converted to transformers (LAION's) say hidden_act "gelu"
        "CLIPVisionModel hidden_act=gelu": Peer("CLIPVisionModelWithProjection", {**TINY, **P8, "hidden_act": "gelu",
                                                                                  "projection_dim": 24},
                                                "image_embeds", "token"),
        "CLIPForImageClassification": Peer("CLIPForImageClassification", {**TINY, **P8}, "logits", vision=True),
        # SigLIP
        "SiglipVisionModel": Peer("SiglipVisionModel", {**TINY, **P8}, "pooler_output", "map"),
        "SiglipVisionModel vision_use_head=False": Peer("SiglipVisionModel", {**TINY, **P8, "vision_use_head": False},
                                                        "mean", "gap"),
        "SiglipModel": Peer("SiglipModel", {**TINY, **P8}, "features", "map", vision=True),
        "SiglipForImageClassification": Peer("SiglipForImageClassification", {**TINY, **P8}, "logits", "gap",
                                             vision=True),
        "SigLIP So400m/14 (1152, 16 heads)": Peer("SiglipVisionModel", dict(
            hidden_size=1152, num_hidden_layers=2, num_attention_heads=16, intermediate_size=4304, **P14),
            "pooler_output", "map"),
        "SigLIP B/16 (768, 12 heads)": Peer("SiglipVisionModel", dict(
            hidden_size=768, num_hidden_layers=2, num_attention_heads=12, intermediate_size=3072, **P16),
            "pooler_output", "map"),
        "Siglip2VisionModel": Peer("Siglip2VisionModel", {**TINY, "patch_size": 8, "num_patches": 16},
                                   "pooler_output", "map"),
        # ViT-MAE: no masking in vitlab; transformers' with mask_ratio=0 and noise in order keeps every patch
        "ViTMAEModel": Peer("ViTMAEModel", {**TINY, **P8, **MAE_DECODER}, "cls", "token"),
        "ViTMAEForPreTraining": Peer("ViTMAEForPreTraining", {**TINY, **P8, **MAE_DECODER}, "cls", "token",
                                     encoder="vit"),
        # neighbours: ViT's layout under another model_type, or another architecture
        "ViTMSNModel": Peer("ViTMSNModel", {**TINY, **P8}, "cls", "token"),
        "ViTMSNForImageClassification": Peer("ViTMSNForImageClassification", {**TINY, **P8, **labels}, "logits",
                                             "token"),
        "IJepaModel": Peer("IJepaModel", {**TINY, **P8}, "mean", "gap"),
        "IJepaForImageClassification": Peer("IJepaForImageClassification", {**TINY, **P8, **labels}, "logits",
                                            "gap"),
        "DINOv3ViTModel": Peer("DINOv3ViTModel", {**TINY, **P8}, "pooler_output", "token"),
        "DINOv3ViTModel gated, 4 registers, theta 50": Peer("DINOv3ViTModel", {
            **TINY, **P8, "use_gated_mlp": True, "hidden_act": "silu", "num_register_tokens": 4, "rope_theta": 50.0},
            "pooler_output", "token"),
        "ChineseCLIPVisionModel": Peer("ChineseCLIPVisionModel", {**TINY, **P8}, "pooler_output", "token"),
        "DPTModel": Peer("DPTModel", {**TINY, **P8}, "pooler_output", "token"),
        "BeitModel": Peer("BeitModel", {**TINY, **P8}, "pooler_output"),
        # AIMv2: RMSNorm, SwiGLU, its pool's query the token itself and no MLP after it; native: MAE's sin-cos
        "Aimv2VisionModel": Peer("Aimv2VisionModel", {**TINY, **P8}, "pooler_output", "map"),
        "Aimv2VisionModel native, biases": Peer("Aimv2VisionModel", {**TINY, **P8, "is_native": True,
                                                                      "qkv_bias": True, "mlp_bias": True},
                                                "pooler_output", "map"),
        "Aimv2VisionModel use_head=False": Peer("Aimv2VisionModel", {**TINY, **P8, "use_head": False}, "mean",
                                                "gap"),
        "Aimv2Model": Peer("Aimv2Model", {**TINY, **P8}, "features", "map", vision=True),
        "SwinModel": Peer("SwinModel", dict(embed_dim=32, depths=[2], num_heads=[2], window_size=4, image_size=32,
                                            patch_size=4), "pooler_output"),
    }


def hf_cases() -> list[tuple[str, str]]:
    return [(name, form) for name in _peers() for form in HF_FORMS]


def _build_hf(peer: Peer) -> torch.nn.Module:
    import transformers

    config_cls = getattr(transformers, peer.cls).config_class
    if peer.vision:
        cfg = config_cls(vision_config=peer.config, text_config=TEXT, **({"projection_dim": 24}
                                                                           if "CLIP" in peer.cls else {}))
    else:
        cfg = config_cls(**peer.config)
    return randomize_(getattr(transformers, peer.cls)(cfg, **peer.init))


def _image_size(peer: Peer) -> tuple[int, int]:
    if "num_patches" in peer.config:  # SigLIP 2: a square base grid of num_patches
        side = math.isqrt(peer.config["num_patches"]) * peer.config["patch_size"]
        return (side, side)
    size = peer.config["image_size"]
    return tuple(size) if isinstance(size, (tuple, list)) else (size, size)


def _patches(x: torch.Tensor, P: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Images -> SigLIP 2's inputs as Siglip2ImageProcessor makes them: patches in row order, each flattened
    (row, column, channel); every patch valid; the grid's shape."""
    B, C, H, W = x.shape
    h, w = H // P, W // P
    patches = x.permute(0, 2, 3, 1).reshape(B, h, P, w, P, C).permute(0, 1, 3, 2, 4, 5).reshape(B, h * w, P * P * C)
    return patches, torch.ones(B, h * w, dtype=torch.long), torch.tensor([[h, w]] * B)


def _hf_reference(model: torch.nn.Module, peer: Peer) -> Callable[[torch.Tensor], torch.Tensor]:
    module = getattr(model, peer.encoder) if peer.encoder else model
    mae = model.config.model_type == "vit_mae"

    def forward(x: torch.Tensor) -> Any:
        if peer.output == "features":
            return module.get_image_features(pixel_values=x)
        if peer.cls.startswith("Siglip2"):
            values, mask, shapes = _patches(x, peer.config["patch_size"])
            return module(pixel_values=values, pixel_attention_mask=mask, spatial_shapes=shapes)
        if mae:  # noise in increasing order keeps every patch in its place (random_masking keeps argsort(noise))
            n = (x.shape[-2] // peer.config["patch_size"]) * (x.shape[-1] // peer.config["patch_size"])
            return module(pixel_values=x, noise=torch.arange(n).expand(x.shape[0], -1).float())
        return module(pixel_values=x)

    def reference(x: torch.Tensor) -> torch.Tensor:
        out = forward(x)
        if peer.output in ("cls", "mean"):
            tokens = out.last_hidden_state
            return tokens[:, 0] if peer.output == "cls" else tokens.mean(dim=1)
        return out.pooler_output if peer.output == "features" else getattr(out, peer.output)

    return reference


def _hf_truth(model: torch.nn.Module, peer: Peer) -> dict[str, Any]:
    """The peer's values of the fields a notice or an error may ask for (an activation vitlab has no name for is
    given as transformers names it: its override fails, as it should)."""
    cfg = getattr(model.config, "vision_config", None) or model.config
    truth: dict[str, Any] = {}
    if isinstance(getattr(cfg, "num_attention_heads", None), int):
        truth["num_heads"] = cfg.num_attention_heads
    if isinstance(getattr(cfg, "hidden_act", None), str):
        truth["mlp_act"] = HF_ACTS.get(cfg.hidden_act, cfg.hidden_act)
    if getattr(cfg, "layer_norm_eps", None) is not None:
        truth["norm_eps"] = cfg.layer_norm_eps
    elif getattr(cfg, "rms_norm_eps", None) is not None:  # AIMv2
        truth["norm_eps"] = cfg.rms_norm_eps
    truth["img_size"] = _image_size(peer)
    if getattr(cfg, "rope_theta", None) is not None:
        truth["rope_theta"] = float(cfg.rope_theta)
    if getattr(cfg, "pooler_act", None) is not None:
        truth["representation_act"] = cfg.pooler_act
    if peer.pool is not None:
        truth["pool"] = peer.pool
    return truth


def hf_case(name: str, form: str, tmp: Path) -> Outcome:
    peer = _peers()[name]
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = _build_hf(peer)
        if form == "folder":
            model.save_pretrained(tmp / "hf")
            path = tmp / "hf"
        else:
            path = save_bare(model.state_dict(), tmp / "model.safetensors")
    if form == "bare" and peer.bare_output is not None:
        peer = replace(peer, output=peer.bare_output)
    reference = _hf_reference(model, peer)
    x = torch.randn(2, 3, *_image_size(peer))
    return run_case(path, reference, x, _hf_truth(model, peer))


# --- OpenCLIP ---------------------------------------------------------------------------------------------------

OPENCLIP_FORMS = ("bare", "tower")


@lru_cache(maxsize=1)
def _towers() -> dict[str, tuple[dict[str, Any], bool, int, list[str]]]:
    """Every distinct ViT image tower of OpenCLIP's model configs: name -> (vision_cfg, quick_gelu, embed_dim, the
    other names with the same tower). Towers that differ only in image size (the position table's, or a timm
    name's size suffix) count as one, named by the smallest; a timm trunk counts when it is in vitlab's table of
    timm's ViT family."""
    import re

    import open_clip

    from vitlab.convert.timm import known_architectures

    timm_vits = known_architectures()
    groups: dict[str, list[tuple[int, str, dict[str, Any], bool, int]]] = {}
    for name in open_clip.list_models():
        model_cfg = open_clip.get_model_config(name)
        vision = dict(model_cfg.get("vision_cfg") or {})
        timm_name = vision.get("timm_model_name")
        if timm_name is not None and timm_name not in timm_vits:
            continue  # ConvNeXt, FastViT, Swin, ViTamin: not a ViT
        if timm_name is None and not isinstance(vision.get("layers"), int):
            continue  # ModifiedResNet
        quick_gelu = bool(model_cfg.get("quick_gelu", False))
        size = vision.get("image_size", 224)
        size = size if isinstance(size, int) else max(size)
        shape = {k: v for k, v in vision.items() if k != "image_size"}
        if timm_name is not None:
            shape["timm_model_name"] = re.sub(r"_\d+$", "", timm_name)
        key = json.dumps([shape, quick_gelu, model_cfg["embed_dim"]], sort_keys=True)
        groups.setdefault(key, []).append((size, name, vision, quick_gelu, model_cfg["embed_dim"]))
    towers = {}
    for members in groups.values():
        members.sort(key=lambda m: (m[0], m[1]))
        _, name, vision, quick_gelu, embed_dim = members[0]
        towers[name] = (vision, quick_gelu, embed_dim, [m[1] for m in members[1:]])
    return dict(sorted(towers.items(), key=lambda kv: kv[0].lower()))


def openclip_cases() -> list[tuple[str, str]]:
    return [(name, form) for name in _towers() for form in OPENCLIP_FORMS]


def _build_tower(vision: dict[str, Any], quick_gelu: bool, embed_dim: int) -> torch.nn.Module:
    """OpenCLIP's own builder, with two blocks (a timm trunk gets depth=2 through timm.create_model)."""
    import timm
    from open_clip.model import _build_vision_tower

    create_model = timm.create_model

    def two_blocks(*args: Any, **kwargs: Any) -> torch.nn.Module:
        return create_model(*args, **kwargs, depth=2)

    with warnings.catch_warnings(), mock.patch.object(timm, "create_model", two_blocks):
        warnings.simplefilter("ignore")
        return _build_vision_tower(embed_dim, {**vision, "layers": 2}, quick_gelu=quick_gelu, cast_dtype=None)


def _openclip_truth(vision: dict[str, Any], quick_gelu: bool) -> dict[str, Any]:
    timm_name = vision.get("timm_model_name")
    if timm_name is not None:  # a timm trunk: what vitlab's table says of it, pooled as OpenCLIP asks
        from vitlab.convert.timm import TIMM_POOLS, entry_hints, known_architectures

        entry = known_architectures()[timm_name]
        truth = entry_hints(entry) if "num_heads" in entry else {}
        pool = vision.get("timm_pool", "avg")
        if pool in TIMM_POOLS:
            truth["pool"] = TIMM_POOLS[pool]
        return truth
    truth = dict(num_heads=vision.get("width", 768) // vision.get("head_width", 64),
                 mlp_act="quick_gelu" if quick_gelu else "gelu", norm_eps=1e-5,
                 pool="gap" if vision.get("pool_type", "tok") == "avg" else "token")
    if vision.get("final_ln_after_pool"):
        truth["fc_norm"] = True
    return truth


def openclip_case(name: str, form: str, tmp: Path) -> Outcome:
    vision, quick_gelu, embed_dim, _ = _towers()[name]
    with torch.device("meta"):
        n_params = sum(p.numel() for p in _build_tower(vision, quick_gelu, embed_dim).parameters())
    if n_params > MAX_PARAMS:
        return Outcome("skipped", f"{n_params / 1e6:.0f}M parameters with two blocks")
    torch.manual_seed(0)
    tower = randomize_(_build_tower(vision, quick_gelu, embed_dim))
    sd = tower.state_dict()
    if form == "bare":
        sd = {f"visual.{k}": v for k, v in sd.items()}
    path = save_bare(sd, tmp / "model.safetensors")
    size = tower.image_size  # (H, W), OpenCLIP's VisionTransformer's and TimmModel's

    def reference(x: torch.Tensor) -> torch.Tensor:
        out = tower(x)
        return out[0] if isinstance(out, tuple) else out  # CoCa's towers return (pooled, tokens)

    return run_case(path, reference, torch.randn(1, 3, *size), _openclip_truth(vision, quick_gelu))


if __name__ == "__main__":
    import tempfile
    import time
    from collections import Counter

    import transformers

    transformers.logging.set_verbosity_error()  # the tiny text configs' token ids, ...
    transformers.logging.disable_progress_bar()  # save_pretrained's
    torch.set_num_threads(1)
    which = sys.argv[1:] or ["hf", "openclip"]
    for source in which:
        cases, run = {"hf": (hf_cases, hf_case), "openclip": (openclip_cases, openclip_case)}[source]
        counts: Counter = Counter()
        start = time.perf_counter()
        for case in cases():
            with tempfile.TemporaryDirectory() as tmp:
                t0 = time.perf_counter()
                outcome = run(*case, Path(tmp))
            counts[outcome.kind] += 1
            print(f"{source:8s} {' '.join(case):60s} {time.perf_counter() - t0:5.1f}s {outcome}", flush=True)
        print(f"{source}: {dict(counts)} in {time.perf_counter() - start:.0f}s", flush=True)
