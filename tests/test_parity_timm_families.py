"""The ViT family's weights as their own code saves them -> vitlab.load -> that code's outputs, at the native size and
at another size; and vitlab -> export_timm -> timm.

Families and forms: timm's deit (plain, distilled, DeiT III), dinov2 (with and without registers), .dino, CLIP
(OpenAI's QuickGELU and LAION's GELU), SigLIP (1 and 2) and .mae, each as a bare .safetensors, a bare .pth and a hub
folder (timm.models.save_for_hf); OpenAI CLIP and OpenCLIP ``visual.*`` state dicts (peer: open_clip); the original
DINOv2 layout (peer: timm's model loaded by timm's own DINOv2 converter, and the original code's resampling rule
written out). Each case prints its max |difference| (``pytest -s`` gives the parity table).
"""

import importlib
import json
import math
import warnings

import pytest
import timm
import torch
import torch.nn.functional as F
from conftest import randomize_, save_state_dict
from timm.models._hub import save_for_hf
from timm.models.vision_transformer import checkpoint_filter_fn

import vitlab
from vitlab.convert import HEADS_BY_WIDTH, AssumedSettingsNotice, CheckpointError, OverriddenSetting
from vitlab.convert.timm import hints_from_hub_config, timm_model_args, timm_model_class
from vitlab.preprocess import CLIP_MEAN, IMAGENET_MEAN, INCEPTION_MEAN

pytestmark = pytest.mark.usefixtures("one_thread")
TOL = 1e-4
TINY = dict(embed_dim=64, depth=2, num_heads=4)

# id: (timm name.tag, kwargs beyond TINY, native size, other size, a bare dict's notice (None: none), what a bare
# dict needs besides num_heads (what timm's architecture states and its weights cannot), the preprocessing's mean)
FAMILIES = {
    "deit": ("deit_tiny_patch16_224.fb_in1k", dict(patch_size=8, num_classes=10), 32, 48, None, {}, IMAGENET_MEAN),
    "deit_distilled": ("deit_tiny_distilled_patch16_224.fb_in1k", dict(patch_size=8, num_classes=10), 32, 48,
                       "distillation token", {}, IMAGENET_MEAN),
    "deit3": ("deit3_small_patch16_224.fb_in1k", dict(patch_size=8, num_classes=10), 32, 48, None, {}, IMAGENET_MEAN),
    "dinov2": ("vit_small_patch14_dinov2.lvd142m", {}, 56, 42, "DINOv2", {}, IMAGENET_MEAN),
    "dinov2_reg4": ("vit_small_patch14_reg4_dinov2.lvd142m", {}, 56, 84, "DINOv2", {}, IMAGENET_MEAN),
    "dino": ("vit_small_patch16_224.dino", dict(patch_size=8), 32, 48, None, {}, IMAGENET_MEAN),
    "clip_openai_quickgelu": ("vit_base_patch16_clip_quickgelu_224.openai", dict(patch_size=8, num_classes=16), 32,
                              48, "CLIP's layout", dict(mlp_act="quick_gelu"), CLIP_MEAN),
    "clip_laion_gelu": ("vit_base_patch16_clip_224.laion2b", dict(patch_size=8, num_classes=16), 32, 48,
                        "CLIP's layout", {}, CLIP_MEAN),
    "siglip": ("vit_base_patch16_siglip_224.webli", dict(patch_size=8), 32, 48, "attention-pool", {}, INCEPTION_MEAN),
    "siglip2": ("vit_base_patch32_siglip_256.v2_webli", dict(patch_size=8), 32, 48, "attention-pool",
                dict(mlp_act="gelu_tanh"), INCEPTION_MEAN),
    "mae": ("vit_base_patch16_224.mae", dict(patch_size=8), 32, 48, None, {}, IMAGENET_MEAN),
}
FORMS = ("safetensors", "pth", "hub")


def _diff(ref, model, size):
    """Max |difference| of the final tokens and of what the head makes of them (logits, or the pooled features of a
    model without a head): forward_features, then forward_head, on each side."""
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        theirs, ours = ref.forward_features(x), model.forward_features(x)
        d_out = (ref.forward_head(theirs) - model.forward_head(ours)).abs().max().item()
        return max(d_out, (theirs - ours).abs().max().item())


def _timm_peer(family):
    name, kwargs, size, *_ = FAMILIES[family]
    # dynamic_img_size: timm resamples the table at forward time (antialiased bicubic, as vitlab's default); it is
    # recorded in the hub config's model_args and changes nothing in the weights.
    # std 0.1 off init: large enough activations that a wrong activation or eps shows (test_the_rules_matter).
    return randomize_(timm.create_model(name, img_size=size, dynamic_img_size=True, **TINY, **kwargs), std=0.1)


def _load_timm_form(family, form, ref, tmp_path):
    """Save ``ref`` in ``form``, load it with vitlab as a user would, checking the notice a bare dict gives."""
    *_, notice, needs, _ = FAMILIES[family]
    if form == "hub":  # config.json states the architecture: no notice, nothing to pass
        save_for_hf(ref, tmp_path / "hub", safe_serialization=True)
        with warnings.catch_warnings():
            warnings.simplefilter("error", AssumedSettingsNotice)
            return vitlab.load(tmp_path / "hub"), tmp_path / "hub", {}
    path = save_state_dict(ref.state_dict(), tmp_path / f"model.{form}")
    args = dict(num_heads=4, **needs)  # a bare dict: the head count of a width-64 model is not in its weights
    # A width-64 layout is no timm architecture's: the notice says what is assumed (and the family, if any).
    with pytest.warns(AssumedSettingsNotice, match=notice or "none of timm") as notices:
        model = vitlab.load(path, **args)
    assert "num_heads" in notices[0].message.fields
    return model, path, args


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("family", FAMILIES)
def test_timm_family_loads_to_timms_outputs(tmp_path, family, form):
    *_, size, other, notice, _, mean = FAMILIES[family]
    ref = _timm_peer(family).eval()
    model, path, args = _load_timm_form(family, form, ref, tmp_path)
    model.eval()
    assert model.source_format == "timm"
    pre_size = (size, size)
    if form == "hub":  # timm's data config: a dynamic-size model keeps its weights' pretrained input size
        pre_size = tuple(json.loads((path / "config.json").read_text())["pretrained_cfg"]["input_size"][1:])
    elif notice is None:  # a bare dict of no recognisable family: the default preprocessing
        mean = INCEPTION_MEAN
    assert model.preprocessing.mean == pytest.approx(mean) and model.preprocessing.img_size == pre_size
    d = _diff(ref, model, size)
    print(f"timm {family} {form} {size}px: max |diff| {d:.2e}")
    assert d <= TOL
    d_other = _diff(ref, model, other)  # both resample at forward time
    print(f"timm {family} {form} {other}px: max |diff| {d_other:.2e}")
    assert d_other <= TOL
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AssumedSettingsNotice)
        resampled = vitlab.load(path, img_size=other, **args).eval()  # resampled once, at load
    assert _diff(ref, resampled, other) <= TOL


@pytest.mark.parametrize("family", FAMILIES)
def test_export_timm_round_trip(tmp_path, family):
    *_, size, other, _, needs, _ = FAMILIES[family]
    ref = _timm_peer(family).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AssumedSettingsNotice)
        model = vitlab.load(save_state_dict(ref.state_dict(), tmp_path / "in.safetensors"), num_heads=4, **needs).eval()
    back = _timm_from_export(model, tmp_path)
    d = max(_diff(back, model, size), _diff(back, model, other))
    print(f"export_timm {family} ({timm_model_class(model.config).rsplit('.', 1)[1]}): max |diff| {d:.2e}")
    assert d <= TOL


def _timm_from_export(model, tmp_path):
    """vitlab.export_timm -> the class timm_model_class names, built from timm_model_args, loaded strictly."""
    path = vitlab.export_timm(model, tmp_path / "export.safetensors")
    module, name = timm_model_class(model.config).rsplit(".", 1)
    theirs = getattr(importlib.import_module(module), name)(**timm_model_args(model.config), dynamic_img_size=True)
    from safetensors.torch import load_file

    theirs.load_state_dict(load_file(str(path)), strict=True)
    return theirs.eval()


@pytest.mark.parametrize("family,wrong", [("clip_openai_quickgelu", dict(mlp_act="gelu")),
                                          ("clip_laion_gelu", dict(norm_eps=1e-6)),
                                          ("siglip", dict(mlp_act="gelu_tanh")), ("siglip2", dict(mlp_act="gelu"))])
def test_the_rules_matter(tmp_path, family, wrong):
    """What the rules decide (QuickGELU, CLIP's eps, SigLIP 2's tanh GELU) moves these outputs well past TOL."""
    *_, size, _, _, needs, _ = FAMILIES[family]
    ref = _timm_peer(family).eval()
    save_for_hf(ref, tmp_path / "hub", safe_serialization=True)
    with pytest.warns(OverriddenSetting, match="overrides it, so the model is not the one the file describes"):
        wrong_model = vitlab.load(tmp_path / "hub", **wrong).eval()  # said loudly (issue 25)
    d = _diff(ref, wrong_model, size)
    print(f"timm {family} hub {size}px with {wrong}: max |diff| {d:.2e}")
    assert d > 3 * TOL


# What timm's architectures state beyond their weights: hub configs as timm's hub repos hold them (no model_args).
@pytest.mark.parametrize("arch,expected", [
    ("vit_base_patch16_clip_quickgelu_224", dict(mlp_act="quick_gelu", norm_eps=1e-5, norm_pre=True, patch_bias=False)),
    ("vit_large_patch14_clip_336", dict(mlp_act="gelu", norm_eps=1e-5, img_size=(336, 336))),
    ("vit_so400m_patch14_siglip_384", dict(mlp_act="gelu", num_heads=16, class_token=False, pool="map")),
    ("vit_so400m_patch16_siglip_256", dict(mlp_act="gelu_tanh", num_heads=16, pool="map")),
    ("vit_base_patch16_siglip_gap_224", dict(mlp_act="gelu", pool="gap")),
    ("deit_base_distilled_patch16_384", dict(distill_token=True, pool="distill", img_size=(384, 384))),
    ("deit3_large_patch16_224", dict(no_embed_class=True, layer_scale_init=1e-6)),
    ("vit_large_patch14_reg4_dinov2", dict(num_register_tokens=4, no_embed_class=True, img_size=(518, 518))),
    ("vit_gigantic_patch14_clip_quickgelu_224", dict(num_heads=16, mlp_act="quick_gelu")),
])
def test_hub_architecture_defaults(arch, expected):
    global_pool = "map" if "siglip" in arch and "gap" not in arch else "avg" if "gap" in arch else "token"
    hints, _, _ = hints_from_hub_config({"architecture": arch, "global_pool": global_pool})
    assert {k: hints.get(k) for k in expected} == expected


def test_hub_errors_and_notes():
    with pytest.raises(CheckpointError, match="parallel blocks"):
        hints_from_hub_config({"architecture": "vit_base_patch16_18x2_224"})
    hints, _, _ = hints_from_hub_config({"architecture": "vit_base_patch16_rpn_224"})
    assert hints["res_post_norm"] is True
    with pytest.raises(CheckpointError, match="mlp_layer"):
        hints_from_hub_config({"architecture": "vit_base_patch16_224", "model_args": {"mlp_layer": "swiglu"}})
    with pytest.raises(CheckpointError, match="act_layer='silu'"):
        hints_from_hub_config({"architecture": "vit_base_patch16_224", "model_args": {"act_layer": "silu"}})
    hints, _, _ = hints_from_hub_config({"architecture": "vit_base_patch16_224",
                                         "model_args": {"pre_norm": True, "act_layer": "quick_gelu"}})
    assert (hints["norm_pre"], hints["patch_bias"], hints["mlp_act"]) == (True, False, "quick_gelu")
    # timm's note on GELU architectures given QuickGELU weights: vitlab runs them as timm does, and says so.
    notes = {"notes": ["natively QuickGELU, use quickgelu model variant for original results"]}
    with pytest.warns(AssumedSettingsNotice, match="mlp_act='quick_gelu'"):
        hints, _, _ = hints_from_hub_config({"architecture": "vit_base_patch16_clip_224", "pretrained_cfg": notes})
    assert hints["mlp_act"] == "gelu"


@pytest.mark.slow
def test_architecture_rules_match_every_timm_family_architecture():
    """The name rules of vitlab.convert.timm against timm's own models (built on the meta device)."""
    from timm.models.vision_transformer import VisionTransformer as TimmViT

    names = [n for n in timm.list_models(["deit*", "*dinov2*", "*_clip_*", "*siglip*"])
             if "giant" not in n or "dinov2" not in n]
    checked = 0
    for name in names:
        with torch.device("meta"):
            m = timm.create_model(name)
        if not isinstance(m, TimmViT) or not hasattr(m.blocks[0], "mlp"):
            continue
        hints, _, _ = hints_from_hub_config({"architecture": name, "global_pool": m.global_pool})
        act = m.blocks[0].mlp.act
        found = dict(mlp_act={"QuickGELU": "quick_gelu", "GELUTanh": "gelu_tanh"}.get(
                         type(act).__name__, "gelu_tanh" if getattr(act, "approximate", "") == "tanh" else "gelu"),
                     norm_eps=m.norm.eps if hasattr(m.norm, "eps") else m.fc_norm.eps,
                     num_heads=m.blocks[0].attn.num_heads, img_size=tuple(m.patch_embed.img_size),
                     norm_pre=not isinstance(m.norm_pre, torch.nn.Identity),
                     class_token=m.cls_token is not None)
        stated = {k: hints.get(k) for k in found}
        stated["mlp_act"] = stated["mlp_act"] or "gelu"
        stated["norm_eps"] = stated["norm_eps"] or 1e-6
        stated["norm_pre"] = bool(stated["norm_pre"])
        stated["class_token"] = True if stated["class_token"] is None else stated["class_token"]
        if stated["num_heads"] is None:  # from the width, as infer_config reads it
            stated["num_heads"] = HEADS_BY_WIDTH.get(m.embed_dim, m.embed_dim // 64)
        assert stated == found, name
        checked += 1
    assert checked > 60


# OpenAI CLIP / OpenCLIP: open_clip is the peer (its encode_image is the tower's output).

def _open_clip(image_size, quick_gelu, width=64, heads=4, ls=None):
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    vision = CLIPVisionCfg(layers=2, width=width, head_width=width // heads, patch_size=8, image_size=image_size,
                           ls_init_value=ls)
    text = CLIPTextCfg(context_length=8, vocab_size=64, width=64, heads=1, layers=1)
    return CLIP(embed_dim=16, vision_cfg=vision, text_cfg=text, quick_gelu=quick_gelu)


def _open_clip_at(sd, image_size, quick_gelu, **kw):
    """open_clip's model at another size, its table resized by open_clip's own loader (resize_pos_embed)."""
    from open_clip.model import resize_pos_embed

    peer = _open_clip(image_size, quick_gelu, **kw)
    sd = {k: v.float() for k, v in sd.items() if k not in ("input_resolution", "context_length", "vocab_size")}
    resize_pos_embed(sd, peer)
    peer.load_state_dict(sd)
    return peer.eval()


def _clip_diff(peer, model, size):
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        return (peer.encode_image(x) - model(x)).abs().max().item()


OPEN_CLIP_CASES = {  # id: (quick_gelu, kwargs, suffix, what vitlab.load needs)
    "openclip_gelu": (False, {}, ".safetensors", dict(num_heads=4)),
    "openclip_quickgelu_layerscale": (True, dict(ls=0.1), ".pth", dict(num_heads=4, mlp_act="quick_gelu")),
}


@pytest.mark.parametrize("case", OPEN_CLIP_CASES)
def test_openclip_visual_tower_loads_to_encode_image(tmp_path, case):
    pytest.importorskip("open_clip")
    quick_gelu, kw, suffix, needs = OPEN_CLIP_CASES[case]
    peer = randomize_(_open_clip(32, quick_gelu, **kw))
    sd = peer.state_dict()  # both towers and logit_scale, as OpenCLIP saves them
    path = save_state_dict(sd, tmp_path / f"open_clip{suffix}")
    with pytest.warns(AssumedSettingsNotice, match="mlp_act='quick_gelu'"):  # not OpenAI's own file: GELU, unsure
        model = vitlab.load(path, **needs).eval()
    assert model.source_format == "openclip" and model.config.mlp_act == needs.get("mlp_act", "gelu")
    assert model.config.norm_eps == 1e-5 and model.preprocessing.mean == pytest.approx(CLIP_MEAN)
    d = _clip_diff(peer, model, 32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AssumedSettingsNotice)
        other_act = vitlab.load(path, **{**needs, "mlp_act": "gelu" if quick_gelu else "quick_gelu"}).eval()
    d_wrong = _clip_diff(peer, other_act, 32)
    print(f"{case} {suffix[1:]} 32px: max |diff| {d:.2e} (with the other activation: {d_wrong:.2e})")
    assert d <= TOL and d_wrong > 3 * TOL
    peer_48 = _open_clip_at(sd, 48, quick_gelu, **kw)
    d_48 = _clip_diff(peer_48, model, 48)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AssumedSettingsNotice)
        d_48_load = _clip_diff(peer_48, vitlab.load(path, img_size=48, **needs).eval(), 48)
    print(f"{case} 48px: max |diff| {d_48:.2e} (resampled at load: {d_48_load:.2e})")
    assert max(d_48, d_48_load) <= TOL


def test_openai_clip_state_dict_is_quickgelu_for_certain(tmp_path):
    """OpenAI's own files carry input_resolution, context_length and vocab_size and half-precision weights; heads are
    width / 64 (here 128 / 64 = 2): nothing to pass, no notice."""
    open_clip = pytest.importorskip("open_clip")
    sd = randomize_(_open_clip(32, True, width=128, heads=2)).state_dict()
    sd = {k: v.half() for k, v in sd.items()}
    sd.update(input_resolution=torch.tensor(32), context_length=torch.tensor(8), vocab_size=torch.tensor(64))
    peer = open_clip.model.build_model_from_openai_state_dict(dict(sd)).float().eval()  # OpenAI's loader
    path = save_state_dict(sd, tmp_path / "ViT-tiny.pt")
    with warnings.catch_warnings():
        warnings.simplefilter("error", AssumedSettingsNotice)
        model = vitlab.load(path).eval()
    assert (model.source_format, model.config.mlp_act, model.config.num_heads) == ("openai-clip", "quick_gelu", 2)
    d = _clip_diff(peer, model, 32)
    d_48 = _clip_diff(_open_clip_at(sd, 48, True, width=128, heads=2), model, 48)
    print(f"openai_clip pt 32px: max |diff| {d:.2e}\nopenai_clip pt 48px: max |diff| {d_48:.2e}")
    assert max(d, d_48) <= TOL


def test_openclip_timm_trunk_reads_as_timm(tmp_path):
    """OpenCLIP's TimmModel (SigLIP towers): a timm state dict under visual.trunk., its projection in visual.head.proj.
    The peer is timm's model loaded by timm's own OpenCLIP filter."""
    trunk = randomize_(timm.create_model("vit_base_patch16_siglip_224", img_size=32, patch_size=8, num_classes=0,
                                         **TINY))
    sd = {f"visual.trunk.{k}": v for k, v in trunk.state_dict().items()}
    sd["visual.head.proj.weight"] = torch.randn(16, 64) * 0.1
    sd.update({"text.token_embedding.weight": torch.randn(64, 16), "logit_scale": torch.tensor(2.0)})
    peer = timm.create_model("vit_base_patch16_siglip_224", img_size=32, patch_size=8, num_classes=16, **TINY).eval()
    peer.load_state_dict(checkpoint_filter_fn(dict(sd), peer))
    with pytest.warns(AssumedSettingsNotice, match="attention-pool"):
        model = vitlab.load(save_state_dict(sd, tmp_path / "siglip.safetensors"), num_heads=4).eval()
    d = _diff(peer, model, 32)
    print(f"openclip_timm_trunk safetensors 32px: max |diff| {d:.2e}")
    assert model.source_format == "openclip" and d <= TOL


@pytest.mark.parametrize("key,match", [("visual.attn_pool.query", "attentional pooler"),
                                       ("visual.layer1.0.conv1.weight", "ModifiedResNet")])
def test_openclip_towers_vitlab_cannot_run_are_named(tmp_path, key, match):
    sd = {"visual.conv1.weight": torch.zeros(64, 3, 8, 8), "visual.class_embedding": torch.zeros(64),
          key: torch.zeros(4, 4)}
    if "layer1" in key:
        del sd["visual.conv1.weight"]
    with pytest.raises(CheckpointError, match=match):
        vitlab.load(save_state_dict(sd, tmp_path / "clip.safetensors"))


# The original DINOv2 (facebookresearch/dinov2's DinoVisionTransformer; the package is not on PyPI, so its layout is
# written out from its names) -> vitlab, against timm's model loaded by timm's own converter (_convert_dinov2).
# Width 128 and 2 heads: DINOv2's head width is 64, which is how vitlab reads the head count.
DINO = dict(embed_dim=128, depth=2, num_heads=2)


def _timm_dinov2(registers, size):
    name = "vit_small_patch14_reg4_dinov2" if registers else "vit_small_patch14_dinov2"
    return timm.create_model(name, img_size=size, **DINO)


def _original_dinov2(registers, size, chunks=0):
    """A random state dict in the original layout, and timm's dinov2 model loaded from it by timm."""
    peer = randomize_(_timm_dinov2(registers, size))
    D, grid = DINO["embed_dim"], (size // 14) ** 2
    sd = {k: v for k, v in peer.state_dict().items() if k not in ("cls_token", "pos_embed", "reg_token")}
    sd.update(cls_token=torch.randn(1, 1, D) * 0.1, pos_embed=torch.randn(1, 1 + grid, D) * 0.1,
              mask_token=torch.randn(1, D))
    if registers:
        sd["register_tokens"] = torch.randn(1, registers, D) * 0.1
    peer.load_state_dict(checkpoint_filter_fn(dict(sd), peer))
    if chunks:  # block_chunks > 0: blocks.{chunk}.{global index}. (each chunk a list padded with Identity)
        per_chunk = DINO["depth"] // chunks
        sd = {(f"blocks.{int(k.split('.')[1]) // per_chunk}.{k[len('blocks.'):]}" if k.startswith("blocks.") else k): v
              for k, v in sd.items()}
    return sd, peer.eval()


def original_interpolate_pos_encoding(pos_embed, h, w, offset, antialias):
    """The original code's rule (DinoVisionTransformer.interpolate_pos_encoding), written out: the M x M grid after
    the class row is resampled bicubically, to the scale factor ((h + offset) / M, (w + offset) / M) when
    interpolate_offset is set (0.1 without registers, antialias off), else to the size (h, w) (registers:
    interpolate_offset 0, interpolate_antialias True). h, w: the new grid, in patches. Returns the grid rows."""
    M, D = math.isqrt(pos_embed.shape[1] - 1), pos_embed.shape[-1]
    grid = pos_embed[:, 1:].float().reshape(1, M, M, D).permute(0, 3, 1, 2)  # (1, D, M, M)
    if offset:
        grid = F.interpolate(grid, scale_factor=((h + offset) / M, (w + offset) / M), mode="bicubic",
                             antialias=antialias)
    else:
        grid = F.interpolate(grid, size=(h, w), mode="bicubic", antialias=antialias)
    assert grid.shape[-2:] == (h, w)
    return grid.permute(0, 2, 3, 1).reshape(1, h * w, D)  # (1, h*w, D)


def _timm_with_original_resampling(sd, peer, registers, size):
    """timm's dinov2 model at ``size`` holding ``peer``'s weights, its table the original code's resampling of the
    original table."""
    g = size // 14
    grid = original_interpolate_pos_encoding(sd["pos_embed"], g, g, offset=0.0 if registers else 0.1,
                                             antialias=bool(registers))
    weights = dict(peer.state_dict())
    # timm's layout: without registers [class row, grid]; with them no_embed_class, the class row in the class token
    weights["pos_embed"] = grid if registers else torch.cat([sd["pos_embed"][:, :1], grid], dim=1)
    ref = _timm_dinov2(registers, size).eval()
    ref.load_state_dict(weights)
    return ref


@pytest.mark.parametrize("registers,suffix", [(0, ".pth"), (4, ".safetensors")])
def test_original_dinov2_loads_to_the_original_outputs(tmp_path, registers, suffix):
    """The released tables are 37 x 37 (518 px). At 224 px the models without registers resample with the original's
    offset rule, those with registers with antialias; each reads back with its own (pos_resample), and the other
    rule is far off (the difference vitlab had when it resampled every table with antialias)."""
    sd, peer = _original_dinov2(registers, 518)
    path = save_state_dict(sd, tmp_path / f"dinov2{suffix}")
    model = vitlab.load(path).eval()  # nothing to pass: heads = width / 64
    cfg = model.config
    assert (model.source_format, cfg.img_size, cfg.num_heads, cfg.num_register_tokens, cfg.num_classes) == \
        ("dinov2", (518, 518), 2, registers, 0)
    assert cfg.pos_resample == ("bicubic_antialias" if registers else "bicubic_offset")
    assert model.preprocessing.mean == pytest.approx(IMAGENET_MEAN)
    d = _diff(peer, model, 518)
    print(f"original_dinov2 reg{registers} {suffix[1:]} 518px: max |diff| {d:.2e}")
    assert d <= TOL
    ref = _timm_with_original_resampling(sd, peer, registers, 224)
    d_224 = _diff(ref, model, 224)
    other_rule = vitlab.load(path, pos_resample="bicubic_offset" if registers else "bicubic_antialias").eval()
    d_wrong = _diff(ref, other_rule, 224)
    print(f"original_dinov2 reg{registers} {suffix[1:]} 224px: max |diff| {d_224:.2e} "
          f"(with the other rule: {d_wrong:.2e})")
    assert d_224 <= TOL and d_wrong > 100 * TOL
    assert _diff(ref, vitlab.load(path, img_size=224).eval(), 224) <= TOL  # resampled once, at load


def test_original_dinov2_chunked_blocks(tmp_path):
    sd, peer = _original_dinov2(4, 56, chunks=2)
    assert "blocks.1.1.attn.qkv.weight" in sd
    model = vitlab.load(save_state_dict(sd, tmp_path / "chunked.pth")).eval()
    d = _diff(peer, model, 56)
    print(f"original_dinov2 chunked pth 56px: max |diff| {d:.2e}")
    assert d <= TOL


def test_export_timm_of_an_original_dinov2_and_the_errors(tmp_path):
    """Registers without position rows, the class row kept: timm gets zero register rows."""
    sd, _ = _original_dinov2(4, 56)
    model = vitlab.load(save_state_dict(sd, tmp_path / "dinov2.pth")).eval()
    back = _timm_from_export(model, tmp_path)
    d = _diff(back, model, 56)
    print(f"export_timm original_dinov2 reg4: max |diff| {d:.2e}")
    assert d <= TOL
    bias_free = randomize_(vitlab.create_model("Ti/16", img_size=32, patch_size=8, depth=2, patch_bias=False))
    assert _diff(_timm_from_export(bias_free, tmp_path), bias_free, 32) <= TOL  # a zero bias for timm
    for bad, match in ((dict(pool="token_gap"), "token_gap"), (dict(norm_pre=True), "pre_norm")):
        model = vitlab.create_model("Ti/16", img_size=32, patch_size=8, depth=2, **bad)
        with pytest.raises(CheckpointError, match=match):
            vitlab.export_timm(model, tmp_path / "bad.safetensors")


def test_an_unknown_state_dict_lists_what_is_readable(tmp_path):
    with pytest.raises(CheckpointError, match="OpenCLIP visual.* state dict, original DINOv2"):
        vitlab.load(save_state_dict({"foo.weight": torch.zeros(2)}, tmp_path / "foo.safetensors"))


@pytest.mark.parametrize("form", ["bare", "hub"])
@pytest.mark.parametrize("arch", ["vit_base_patch16_rpn_224", "eva02_enormous_patch14_clip_224"])
def test_res_post_norm(tmp_path, arch, form):
    """Norms after each branch (x + norm(f(x)): timm's ResPostBlock and EvaBlockPostNorm) have a pre-norm block's
    tensors: the hub folder's architecture says which; a bare file of a layout timm does not have is assumed
    pre-norm in the notice, and res_post_norm=True makes it exact."""
    ref = randomize_(timm.create_model(arch, img_size=32, patch_size=8, dynamic_img_size=True, num_classes=5,
                                       **TINY), std=0.1).eval()
    if form == "hub":
        save_for_hf(ref, tmp_path / "hub", safe_serialization=True)
        model = vitlab.load(tmp_path / "hub").eval()
    else:
        path = save_state_dict(ref.state_dict(), tmp_path / "m.safetensors")
        with pytest.warns(AssumedSettingsNotice, match="res_post_norm=False") as caught:
            vitlab.load(path, num_heads=4)
        assert any("res_post_norm" in w.message.fields for w in caught if isinstance(w.message, AssumedSettingsNotice))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", AssumedSettingsNotice)
            pool = "gap" if "rpn" in arch else "token"
            model = vitlab.load(path, num_heads=4, res_post_norm=True, pool=pool).eval()
    assert model.config.res_post_norm
    for size in (32, 48):
        x = torch.randn(2, 3, size, size)
        with torch.no_grad():
            d = (ref(x) - model(x)).abs().max().item()
        print(f"timm {arch} {form}: max |diff| {d:.2e} at {size} px")
        assert d <= TOL
