"""timm -> saved file -> vitlab.load -> the same logits, at the native size and at another size.

Runs in CI (timm is a dev dependency), never skipped there.
"""

import pytest
import timm  # noqa: E402
import torch
from conftest import randomize_, save_state_dict
from timm.layers import resample_abs_pos_embed  # noqa: E402
from timm.models.vision_transformer import VisionTransformer as TimmViT  # noqa: E402
from timm.models.vision_transformer import checkpoint_filter_fn  # noqa: E402

import vitlab
from vitlab.convert.timm import timm_model_args
from vitlab.pos_embed import resample_pos_embed

TOL = 1e-4
# timm's architectures at their own widths (the head count is read off the width) with 2 of their blocks: every
# tensor name the converter maps, at a fraction of the time.
TWO_BLOCKS = dict(depth=2)
MODELS = [
    ("vit_tiny_patch16_224", TWO_BLOCKS, 224, 288),
    ("vit_base_patch16_224", TWO_BLOCKS, 224, 160),
    ("vit_base_patch32_224", TWO_BLOCKS, 224, 384),
    ("vit_base_patch16_reg4_gap_256", TWO_BLOCKS, 256, 192),  # registers + GAP + fc_norm, no class token
    ("vit_small_patch16_224", dict(qk_norm=True, init_values=1e-5, class_token=True, reg_tokens=2, **TWO_BLOCKS),
     224, 256),
]


@pytest.mark.parametrize("name,kwargs,size,other", MODELS,
                         ids=[m[0] + ("" if m[1] == TWO_BLOCKS else "+") for m in MODELS])
def test_timm_checkpoint_loads_to_identical_logits(tmp_path, name, kwargs, size, other):
    ref = randomize_(timm.create_model(name, **kwargs))
    suffix = ".pth" if "tiny" in name else ".safetensors"
    path = save_state_dict(ref.state_dict(), tmp_path / f"model{suffix}")
    model = vitlab.load(path).eval()
    assert model.source_format == "timm"
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        diff = (ref(x) - model(x)).abs().max().item()
    assert diff <= TOL, f"native size: max |logit diff| {diff:.2e}"

    # Another input size: timm resamples the table in its checkpoint filter, vitlab in load.
    ref_other = timm.create_model(name, img_size=other, **kwargs).eval()
    ref_other.load_state_dict(checkpoint_filter_fn(ref.state_dict(), ref_other))
    model_other = vitlab.load(path, img_size=other).eval()
    x = torch.randn(2, 3, other, other)
    with torch.no_grad():
        diff_other = (ref_other(x) - model_other(x)).abs().max().item()
        diff_dynamic = (ref_other(x) - model(x)).abs().max().item()  # resampled at forward time
    assert diff_other <= TOL, f"{other}px: max |logit diff| {diff_other:.2e}"
    assert diff_dynamic <= TOL, f"{other}px at forward time: max |logit diff| {diff_dynamic:.2e}"


def test_export_timm_loads_strictly_into_timm(tmp_path):
    model = randomize_(vitlab.create_model("S/16", depth=2, num_register_tokens=3, qk_norm=True,
                                           layer_scale_init=0.1, img_size=(96, 128)))
    path = vitlab.export_timm(model, tmp_path / "timm.safetensors")
    ref = TimmViT(**timm_model_args(model.config)).eval()
    from safetensors.torch import load_file

    ref.load_state_dict(load_file(str(path)), strict=True)
    x = torch.randn(2, 3, 96, 128)
    with torch.no_grad():
        assert (ref(x) - model(x)).abs().max() <= TOL


@pytest.mark.parametrize("old,new,prefix", [((14, 14), (18, 18), 1), ((16, 16), (8, 12), 1), ((7, 9), (14, 5), 0)])
def test_pos_embed_resampling_agrees_with_timm(old, new, prefix):
    pos = torch.randn(1, prefix + old[0] * old[1], 32)
    ours = resample_pos_embed(pos, new, old, num_prefix=prefix)
    theirs = resample_abs_pos_embed(pos, list(new), list(old), num_prefix_tokens=prefix)
    assert ours.shape == (1, prefix + new[0] * new[1], 32)
    torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(ours[:, :prefix], pos[:, :prefix])  # class row untouched
