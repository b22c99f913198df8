"""The SwiGLU MLP (DINOv2 giant's, ``vitlab.layers.SwiGLU``) in every form its weights come in, against the peer's
outputs at the native size and at another: timm's ``vit_giant_patch14_dinov2`` (bare .safetensors, .pth, hub folder),
transformers' ``Dinov2Model(use_swiglu_ffn=True)`` (folder and bare), the original DINOv2 layout (``mlp.w12``/``w3``,
against timm's model loaded by timm's own converter), and back to timm with ``export_timm``; and AIMv2's SwiGLU
with RMSNorm (timm's ``aimv2_*``, transformers' ``Aimv2VisionModel`` with and without its pool, native or not).
Tiny: width 96, two blocks, four heads (timm's giant MLP ratio gives a gated width of 256).
"""

import importlib
import warnings

import pytest
import timm
import torch
from conftest import randomize_, save_state_dict
from safetensors.torch import load_file
from timm.models._hub import save_for_hf
from timm.models.vision_transformer import checkpoint_filter_fn

import vitlab
from vitlab.convert import AssumedSettingsNotice
from vitlab.convert.timm import timm_model_args, timm_model_class
from vitlab.layers import SwiGLU

pytestmark = pytest.mark.usefixtures("one_thread")
TOL = 1e-4
TINY = dict(embed_dim=96, depth=2, num_heads=4)
SIZE, OTHER = 56, 42  # 4 x 4 and 3 x 3 patches of 14


def _diff(ref, model, size):
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        return (ref(x) - model(x)).abs().max().item()


def _timm_giant():
    model = timm.create_model("vit_giant_patch14_dinov2", img_size=SIZE, dynamic_img_size=True, num_classes=7, **TINY)
    return randomize_(model, std=0.1)


def test_swiglu_is_the_papers_formula():
    mlp = SwiGLU(8, 6)
    x = torch.randn(3, 5, 8)
    W, V = mlp.fc1.weight[:6], mlp.fc1.weight[6:]  # rows [gate; value]
    b_w, b_v = mlp.fc1.bias[:6], mlp.fc1.bias[6:]
    expected = mlp.fc2(torch.nn.functional.silu(x @ W.T + b_w) * (x @ V.T + b_v))  # (SiLU(xW) * xV) W2
    assert torch.allclose(mlp(x), expected, atol=1e-6)


@pytest.mark.parametrize("form", ["safetensors", "pth", "hub"])
def test_timm_dinov2_giant(tmp_path, form):
    ref = _timm_giant().eval()
    if form == "hub":
        save_for_hf(ref, tmp_path / "hub", safe_serialization=True)
        path, args = tmp_path / "hub", {}
        model = vitlab.load(path)
    else:  # a width-96 layout is no timm architecture's: the notice names the heads and the gated MLP it assumes
        path, args = save_state_dict(ref.state_dict(), tmp_path / f"m.{form}"), dict(num_heads=4)
        with pytest.warns(AssumedSettingsNotice, match="SwiGLU"):
            model = vitlab.load(path, **args)
    model.eval()
    assert model.config.mlp_layer == "swiglu" and model.config.mlp_dim == 256
    d, d_other = _diff(ref, model, SIZE), _diff(ref, model, OTHER)
    print(f"timm vit_giant_patch14_dinov2 {form}: max |diff| {d:.2e} at {SIZE} px, {d_other:.2e} at {OTHER} px")
    assert d <= TOL and d_other <= TOL
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AssumedSettingsNotice)
        resampled = vitlab.load(path, img_size=OTHER, **args).eval()  # the table resampled once, at load
    assert _diff(ref, resampled, OTHER) <= TOL


def test_export_timm_round_trip(tmp_path):
    ref = _timm_giant().eval()
    save_for_hf(ref, tmp_path / "hub", safe_serialization=True)
    model = vitlab.load(tmp_path / "hub").eval()
    path = vitlab.export_timm(model, tmp_path / "export.safetensors")
    module, name = timm_model_class(model.config).rsplit(".", 1)
    back = getattr(importlib.import_module(module), name)(**timm_model_args(model.config), dynamic_img_size=True)
    back.load_state_dict(load_file(str(path)), strict=True)
    assert max(_diff(back.eval(), model, SIZE), _diff(back, model, OTHER)) <= TOL


@pytest.mark.parametrize("form", ["folder", "bare"])
def test_transformers_dinov2_swiglu(tmp_path, form):
    from transformers import Dinov2Config, Dinov2Model

    ref = randomize_(Dinov2Model(Dinov2Config(hidden_size=96, num_hidden_layers=2, num_attention_heads=4,
                                              image_size=SIZE, patch_size=14, use_swiglu_ffn=True)), std=0.1)
    if form == "folder":
        ref.save_pretrained(tmp_path / "hf")
        model = vitlab.load(tmp_path / "hf").eval()
    else:
        path = save_state_dict(ref.state_dict(), tmp_path / "m.safetensors")
        with pytest.warns(AssumedSettingsNotice, match="SwiGLU"):
            model = vitlab.load(path, num_heads=4).eval()
    assert model.config.mlp_layer == "swiglu"
    for size in (SIZE, OTHER):  # transformers resamples the table at forward time, plain bicubic (vitlab's rule too)
        x = torch.randn(2, 3, size, size)
        with torch.no_grad():
            d = (ref(pixel_values=x).pooler_output - model(x)).abs().max().item()
        print(f"transformers Dinov2Model use_swiglu_ffn {form}: max |diff| {d:.2e} at {size} px")
        assert d <= TOL


def test_original_dinov2_giant_layout(tmp_path):
    """facebookresearch/dinov2's names (mlp.w12 / w3, mask_token), against timm's model loaded by timm's converter."""
    peer = timm.create_model("vit_giant_patch14_dinov2", img_size=SIZE, num_classes=0, **TINY)
    sd = {k.replace(".mlp.fc1.", ".mlp.w12.").replace(".mlp.fc2.", ".mlp.w3."): v
          for k, v in randomize_(peer, std=0.1).state_dict().items()}
    sd["mask_token"] = torch.zeros(1, TINY["embed_dim"])
    peer.load_state_dict(checkpoint_filter_fn(dict(sd), peer))
    model = vitlab.load(save_state_dict(sd, tmp_path / "dinov2_vitg14.pth"), num_heads=4).eval()
    assert model.config.mlp_layer == "swiglu"
    assert _diff(peer.eval(), model, SIZE) <= TOL


@pytest.mark.parametrize("form", ["bare", "hub"])
def test_timm_aimv2(tmp_path, form):
    """AIMv2 (El-Nouby et al. 2024): RMSNorm everywhere, a norm on the patch embeddings, a SwiGLU of separate gate
    and value layers and no biases in the projections, as timm's aimv2_* build it."""
    ref = randomize_(timm.create_model("aimv2_large_patch14_224", img_size=SIZE, dynamic_img_size=True,
                                       num_classes=7, **TINY), std=0.1)
    if form == "hub":
        save_for_hf(ref, tmp_path / "hub", safe_serialization=True)
        model = vitlab.load(tmp_path / "hub").eval()
    else:
        path = save_state_dict(ref.state_dict(), tmp_path / "m.safetensors")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", AssumedSettingsNotice)
            model = vitlab.load(path, num_heads=4, norm_eps=1e-5, pool="gap").eval()
    cfg = model.config
    assert (cfg.norm_layer, cfg.patch_norm, cfg.proj_bias, cfg.mlp_bias, cfg.mlp_layer) == \
        ("rmsnorm", True, False, False, "swiglu")
    d, d_other = _diff(ref, model, SIZE), _diff(ref, model, OTHER)
    print(f"timm aimv2_large_patch14_224 {form}: max |diff| {d:.2e} at {SIZE} px, {d_other:.2e} at {OTHER} px")
    assert d <= TOL and d_other <= TOL


@pytest.mark.parametrize("form", ["folder", "bare"])
@pytest.mark.parametrize("native,head", [(False, True), (True, True), (True, False)])
def test_transformers_aimv2(tmp_path, form, native, head):
    """transformers' Aimv2VisionModel: RMSNorm, SwiGLU (gate_proj, up_proj), biases as qkv_bias and mlp_bias say;
    a learned table of the grid or, native, MAE's sin-cos grid at any size (pos_embed='sincos2d_mae'); use_head: a
    pool whose query is the learned token itself (vitlab's q projection the identity) with no MLP after it."""
    from transformers import Aimv2VisionConfig, Aimv2VisionModel

    cfg = Aimv2VisionConfig(hidden_size=TINY["embed_dim"], num_hidden_layers=2, num_attention_heads=4,
                            intermediate_size=128, image_size=SIZE, patch_size=14, is_native=native, use_head=head,
                            qkv_bias=native, mlp_bias=native)
    ref = randomize_(Aimv2VisionModel(cfg), std=0.1).eval()
    if form == "folder":
        ref.save_pretrained(tmp_path / "hf")
        model = vitlab.load(tmp_path / "hf").eval()
    else:  # a width-96 AIMv2 is no published size: the head count is asked for, the rest is in the notice
        path = save_state_dict(ref.state_dict(), tmp_path / "m.safetensors")
        with pytest.warns(AssumedSettingsNotice, match="RMSNorm eps 1e-05"):
            model = vitlab.load(path, num_heads=4).eval()
    c = model.config
    assert (c.norm_layer, c.patch_norm, c.mlp_layer, c.proj_bias, c.mlp_bias) == \
        ("rmsnorm", True, "swiglu", native, native)
    assert c.pool == ("map" if head else "gap") and c.attn_pool_mlp is not head
    assert c.pos_embed == ("sincos2d_mae" if native else "learned")

    def diff(size):
        x = torch.randn(2, 3, size, size)
        with torch.no_grad():
            out = ref(pixel_values=x)
            theirs = out.pooler_output if head else out.last_hidden_state.mean(dim=1)
            return (theirs - model.forward_head(model.forward_features(x), pre_logits=True)).abs().max().item()

    sizes = (SIZE, OTHER) if native else (SIZE,)  # transformers runs a learned table at its own size only
    diffs = [diff(s) for s in sizes]
    print(f"transformers Aimv2VisionModel native={native} head={head} {form}: max |diff| {diffs} at {sizes} px")
    assert max(diffs) <= TOL
