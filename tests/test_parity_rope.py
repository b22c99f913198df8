"""Rotary position embeddings (``vitlab.layers.rope``) against the weights' own code, at the native size and at
another (RoPE has no table to resample: the rotations are computed for each grid): timm's DINOv3 (plain, ``_qkvb``
with separate q and v biases, ``_plus`` with a SwiGLU of separate gate and value layers), RoPE-ViT (``vit_*_rope_*``,
with and without a learned table), EVA-01 (Eva class, no RoPE) and EVA-02 (RoPE on a reference grid, q/k/v
projections, sub-LayerNorms in the attention and the SwiGLU), RoPE-Mixed (``vit_*_rope_mixed_*``: learned frequencies
per block and head) and Perception Encoder (RoPE from 1, an 8-head attention pool over every token, no final norm in
the spatial tower; gigantic's pool MLP narrower than the blocks'), as bare .safetensors and hub folders;
transformers' ``DINOv3ViTModel`` (plain and gated MLP, with registers) as a folder and bare; and what the tools need:
the attention maps of the explicit path equal to the fused one, a training step, the ONNX export.
"""

import warnings

import pytest
import timm
import torch
from conftest import randomize_, save_state_dict
from timm.models._hub import save_for_hf

import vitlab
from vitlab.config import ViTConfig
from vitlab.convert import AssumedSettingsNotice, CheckpointError
from vitlab.convert.timm import entry_hints, known_architectures
from vitlab.errors import ConfigError
from vitlab.layers.rope import RotaryEmbedding2d, apply_rope
from vitlab.model import VisionTransformer

pytestmark = pytest.mark.usefixtures("one_thread")
TOL = 1e-4
TINY = dict(embed_dim=64, depth=2, num_heads=4, num_classes=5)  # head width 16: 4 frequencies per axis
TIMM = {  # architecture: (native size, another size)
    "vit_small_patch16_dinov3": (64, 48),
    "vit_small_patch16_dinov3_qkvb": (64, 80),
    "vit_small_plus_patch16_dinov3": (64, 48),
    "vit_small_patch16_rope_224": (64, 48),
    "vit_small_patch16_rope_ape_224": (64, 48),
    "vit_small_patch16_rope_mixed_224": (64, 80),  # learned frequencies: rope.freqs shows the heads
    "vit_small_patch16_rope_mixed_ape_224": (64, 48),
    "eva_giant_patch14_224": (56, 42),
    "eva02_tiny_patch14_224": (56, 42),  # RoPE [y; x] on a 16 x 16 reference grid, packed SwiGLU
    "eva02_base_patch14_448": (56, 70),  # q, k, v projections, a LayerNorm inside the SwiGLU
    "eva02_base_patch16_clip_224": (64, 48),  # and a LayerNorm inside the attention
    "vit_pe_core_tiny_patch16_384": (64, 48),  # RoPE from 1, an 8-head attention pool over every token
    "vit_pe_spatial_tiny_patch16_512": (64, 48),  # no final norm
    "vit_pe_core_gigantic_patch14_448": (56, 42),  # the pool's MLP 4 D wide, the blocks' 5.8 D
}


def _diff(ref, model, size):
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        return (ref(x) - model(x)).abs().max().item()


@pytest.mark.parametrize("form", ["bare", "hub"])
@pytest.mark.parametrize("arch", TIMM)
def test_timm(tmp_path, arch, form):
    size, other = TIMM[arch]
    ref = randomize_(timm.create_model(arch, img_size=size, dynamic_img_size=True, **TINY), std=0.1)
    if form == "hub":
        save_for_hf(ref, tmp_path / "hub", safe_serialization=True)
        model = vitlab.load(tmp_path / "hub").eval()
    elif "rope.freqs" in ref.state_dict():  # RoPE-Mixed: its learned frequencies show the scheme and the heads
        path = save_state_dict(ref.state_dict(), tmp_path / "m.safetensors")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model = vitlab.load(path).eval()
        notices = [w.message for w in caught if isinstance(w.message, AssumedSettingsNotice)]
        assert not any({"rope", "num_heads"} & set(n.fields) for n in notices), notices
        assert model.config.rope == "mixed" and model.config.num_heads == 4
    else:  # a width-64 layout is no timm architecture's: the RoPE is asked for, or assumed in the notice
        path = save_state_dict(ref.state_dict(), tmp_path / "m.safetensors")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                vitlab.load(path, num_heads=4)
            except CheckpointError as e:
                assert "\n" not in str(e)
            else:
                assert any("rope" in w.message.fields for w in caught if isinstance(w.message, AssumedSettingsNotice))
        # what the architecture's config would state (the table's row), then it is exact
        stated = entry_hints(known_architectures()[arch]) | dict(num_heads=4)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", AssumedSettingsNotice)
            model = vitlab.load(path, **stated).eval()
    d, d_other = _diff(ref, model, size), _diff(ref, model, other)
    print(f"timm {arch} {form}: max |diff| {d:.2e} at {size} px, {d_other:.2e} at {other} px")
    assert d <= TOL and d_other <= TOL


@pytest.mark.parametrize("gated,registers", [(False, 0), (True, 4)])
@pytest.mark.parametrize("form", ["folder", "bare"])
def test_transformers_dinov3(tmp_path, form, gated, registers):
    from transformers import DINOv3ViTConfig, DINOv3ViTModel

    config = DINOv3ViTConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                             image_size=32, patch_size=8, num_register_tokens=registers, use_gated_mlp=gated,
                             hidden_act="silu" if gated else "gelu", layerscale_value=0.5, rope_theta=50.0)
    ref = randomize_(DINOv3ViTModel(config), std=0.1)
    if form == "folder":
        ref.save_pretrained(tmp_path / "hf")
        model = vitlab.load(tmp_path / "hf").eval()
    else:  # the RoPE base is in the config only: the notice names it
        path = save_state_dict(ref.state_dict(), tmp_path / "m.safetensors")
        with pytest.warns(AssumedSettingsNotice, match="rope_theta=100"):
            vitlab.load(path, num_heads=4)
        model = vitlab.load(path, num_heads=4, rope_theta=50.0).eval()
    assert model.config.rope == "dinov3" and model.config.num_register_tokens == registers
    for size in (32, 48):
        x = torch.randn(2, 3, size, size)
        with torch.no_grad():
            d = (ref(pixel_values=x).pooler_output - model(x)).abs().max().item()
        print(f"transformers DINOv3ViTModel gated={gated} registers={registers} {form}: {d:.2e} at {size} px")
        assert d <= TOL


def test_a_rotation_keeps_the_norm_and_depends_on_the_offset_only():
    """RoPE's two properties: each channel pair turns (lengths kept), and q . k depends on the offset alone."""
    for kind in ("axial", "dinov3"):
        sin, cos = RotaryEmbedding2d(kind, 16, 100.0)((1, 8))  # one row of 8 patches
        q, k = torch.randn(16), torch.randn(16)
        qs, ks = apply_rope(q.expand(8, 16), sin, cos, kind), apply_rope(k.expand(8, 16), sin, cos, kind)
        assert torch.allclose(qs.norm(dim=-1), q.norm().expand(8), atol=1e-5)
        if kind == "axial":  # integer coordinates: offsets (0 -> 2) and (3 -> 5) are the same
            assert torch.allclose(qs[0] @ ks[2], qs[3] @ ks[5], atol=1e-4)


def test_a_mixed_rotation_depends_on_the_offset_only():
    """RoPE-Mixed turns along learned directions of the grid: still lengths kept and q . k a function of the 2D
    offset alone, and at init each head's directions are the axial magnitudes at a random angle."""
    from vitlab.layers.rope import RotaryEmbeddingMixed

    rope = RotaryEmbeddingMixed(depth=2, num_heads=3, head_dim=16, theta=10.0)
    magnitude = rope.freqs.norm(dim=0)  # (depth, Nh, Dh/2): |(f_x, f_y)|
    assert torch.allclose(magnitude, (10.0 ** -(torch.arange(4) / 4)).repeat(2).expand_as(magnitude), atol=1e-6)
    sin, cos = rope((3, 4))[1]  # block 1: (Nh, 12, Dh)
    q, k = torch.randn(3, 1, 16), torch.randn(3, 1, 16)
    qs, ks = apply_rope(q.expand(3, 12, 16), sin, cos, "mixed"), apply_rope(k.expand(3, 12, 16), sin, cos, "mixed")
    assert torch.allclose(qs.norm(dim=-1), q.norm(dim=-1).expand(3, 12), atol=1e-5)
    # (row, col) (0, 0) -> (1, 2) and (1, 1) -> (2, 3): tokens 0 -> 6 and 5 -> 11 of the 3 x 4 grid
    assert torch.allclose((qs[:, 0] * ks[:, 6]).sum(-1), (qs[:, 5] * ks[:, 11]).sum(-1), atol=1e-4)


def _rope_model(rope="dinov3", **kw):
    cfg = ViTConfig(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, mlp_dim=64, num_classes=3,
                    rope=rope, pos_embed="none", num_register_tokens=2, layer_scale_init=1e-5, **kw)
    return randomize_(VisionTransformer(cfg), std=0.1)


@pytest.mark.parametrize("rope", ["dinov3", "mixed"])
def test_attention_maps_and_training_with_rope(rope):
    model = _rope_model(rope)
    x = torch.randn(2, 3, 32, 48)
    with torch.no_grad():
        inter = model.forward_intermediates(x, return_attention=True)
        fused = model.forward_features(x)
    assert inter.attention[1].shape == (2, 2, 3 + 4 * 6, 3 + 4 * 6)
    assert torch.allclose(model.norm(inter.tokens[1]), fused, atol=1e-5)  # explicit path == fused kernel
    model.train()
    loss = model(x).logsumexp(dim=-1).mean()
    loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_rope_config_errors():
    with pytest.raises(ConfigError, match="head width 6 must be divisible by 4"):
        ViTConfig(embed_dim=12, num_heads=2, mlp_dim=8, rope="axial")
    with pytest.raises(ConfigError, match="patch_drop_rate with rope"):
        ViTConfig(rope="dinov3", patch_drop_rate=0.5)
    with pytest.raises(CheckpointError, match="no RoPE"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            vitlab.convert.timm.timm_model_args(_rope_model().config)


@pytest.mark.parametrize("rope,method", [("dinov3", "raw"), ("dinov3", "rollout"), ("dinov3", "grad-rollout"),
                                         ("mixed", "rollout")])
def test_the_attention_command_on_a_rope_model(tmp_path, capsys, rope, method):
    """A DINOv3-style model (RoPE, registers, no table) through `vitlab attention`: the maps come from the same
    rotated queries and keys as the fused forward pass."""
    import numpy as np
    from PIL import Image

    from vitlab.cli import main

    ckpt = vitlab.save(_rope_model(rope), tmp_path / "rope.safetensors")
    png = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 56, 3), dtype=np.uint8)).save(png)
    code = main(["attention", str(png), "--model", str(ckpt), "--method", method, "--out", str(tmp_path / "a.png")])
    out, err = capsys.readouterr()
    assert code == 0 and "Traceback" not in err and (tmp_path / "a.png").is_file(), err


@pytest.mark.parametrize("rope", ["dinov3", "mixed"])
def test_the_explorer_on_a_rope_model(rope):
    """The explorer's model panel, maps and hover rows on a DINOv3-style model (RoPE, registers, no table)."""
    from vitlab.explore.compute import Explorer, MapParams

    explorer = Explorer(_rope_model(rope), "rope", shapes_samples=1)
    info = explorer.model_info()
    assert "rotations" in info["position"]["reason"] and info["num_prefix"] == 3
    analysis = explorer.analyze("s0")
    assert analysis["top"]
    for method in ("raw", "rollout"):
        saliency, _ = explorer.saliency("s0", MapParams(method=method))
        assert saliency.numel() == explorer.grid[0] * explorer.grid[1] and torch.isfinite(saliency).all()
    assert explorer.row("s0", 1, "mean", 0)
