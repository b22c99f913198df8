"""The loader sweep (``tests/loader_sweep.py``) in the suite: no checkpoint of the ViT family loads silently wrong.

Every case is exact, refused in one line, or loaded with a notice whose override (the peer's values of the fields
it names) makes it exact. The non-slow suite runs a sample (the cases a sweep on 017cab9 found silently wrong, and
a spread of the rest); the slow tier runs the rest of every architecture of timm's ViT modules, the transformers
configurations and the OpenCLIP towers. ``test_the_table_is_the_installed_timms`` fails when a timm release adds
or changes an architecture, until ``python tests/timm_architectures.py`` rewrites the table (and the sweep checks
the new rows).
"""

import json
import shutil

import pytest
from loader_sweep import timm_case, timm_cases
from loader_sweep_peers import hf_case, hf_cases, openclip_case, openclip_cases
from timm_architectures import table

from vitlab.convert.timm import ARCHITECTURES_FILE

pytestmark = pytest.mark.usefixtures("one_thread")

# The cases issue 26's sweep found silently wrong or failing outside vitlab, and one of each kind that loads.
TIMM_QUICK = [(name, "bare") for name in (
    "vit_so400m_patch14_siglip_gap_224", "vit_base_patch16_gap_224", "vit_base_patch16_siglip_gap_224",
    "vit_base_patch16_rpn_224", "vit_pe_core_small_patch16_384", "vit_base_patch16_18x2_224",
    "vit_base_patch16_siglip_gap_256", "eva02_tiny_patch14_224", "vit_small_patch14_reg4_dinov2",
    "vit_base_patch32_clip_quickgelu_224", "deit_tiny_distilled_patch16_224", "vit_small_patch16_rope_mixed_224",
    "vit_pe_core_gigantic_patch14_448")] + [
    ("vit_base_patch16_gap_224", "hub"), ("vit_base_patch16_rpn_224", "hub"), ("vit_small_patch14_dinov2", "hub")]


@pytest.fixture(autouse=True)
def _no_files_left(tmp_path):
    """Each case's checkpoints go when it ends: the slow tier writes gigabytes (pytest keeps every tmp_path)."""
    yield
    shutil.rmtree(tmp_path, ignore_errors=True)


def _check(outcome):
    print(outcome)
    assert outcome.kind in ("exact", "refused", "override", "noticed", "skipped"), outcome.detail


@pytest.mark.slow
def test_the_table_is_the_installed_timms():
    shipped = json.loads(ARCHITECTURES_FILE.read_text())
    now = table()
    assert shipped["timm_version"] == now["timm_version"], (
        f"the table is timm {shipped['timm_version']}'s; timm {now['timm_version']} is installed: run "
        "python tests/timm_architectures.py and the slow sweep")
    changed = sorted(n for n in set(shipped["architectures"]) | set(now["architectures"])
                     if shipped["architectures"].get(n) != now["architectures"].get(n))
    assert not changed, f"timm's architectures differ from the table: {changed[:10]}"


def _tiered(cases, quick):
    """Every case: those in ``quick`` run in the non-slow suite, the rest are slow-marked."""
    return [pytest.param(*case, marks=() if case in quick else pytest.mark.slow) for case in cases]


@pytest.mark.parametrize("name,form", _tiered(timm_cases(), TIMM_QUICK))
def test_timm_architecture(tmp_path, name, form):
    _check(timm_case(name, form, tmp_path))


@pytest.mark.parametrize("name,form", _tiered(hf_cases(), hf_cases()[::9]))
def test_transformers_configuration(tmp_path, name, form):
    _check(hf_case(name, form, tmp_path))


@pytest.mark.parametrize("name,form", _tiered(openclip_cases(), openclip_cases()[::15]))
def test_openclip_tower(tmp_path, name, form):
    _check(openclip_case(name, form, tmp_path))


def test_an_image_size_that_leaves_a_remainder_runs_as_timm_runs_it(tmp_path):
    """timm's vit_so400m_patch14_siglip_384 sees 27 patches of 14 in 384 px (its convolution drops 6 rows and
    columns): its hub folder loads, and the model takes 384-px images as timm does (other sizes must divide)."""
    import timm
    import torch
    from timm.models._hub import save_for_hf

    import vitlab
    from vitlab.errors import UsageError

    ref = timm.create_model("vit_so400m_patch14_siglip_384", img_size=48, embed_dim=64, depth=1, num_heads=4,
                            mlp_ratio=2, num_classes=3).eval()  # 3 patches of 14 in 48 px
    save_for_hf(ref, tmp_path / "hub", safe_serialization=True)
    model = vitlab.load(tmp_path / "hub").eval()
    assert model.config.img_size == (48, 48) and model.config.grid_size == (3, 3)
    x = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        assert (ref(x) - model(x)).abs().max().item() <= 1e-5
    with pytest.raises(UsageError, match="not divisible by the patch size 14.*e.g. 42x42"):
        model(torch.randn(1, 3, 50, 50))


def test_a_hub_config_outside_the_table_or_with_eva_model_args():
    """An architecture the table does not have (a newer timm's) falls back to the name rules and says which
    settings it assumes; model_args of an Eva architecture that would change what vitlab reads are refused."""
    from vitlab.convert import AssumedSettingsNotice, CheckpointError
    from vitlab.convert.timm import hints_from_hub_config

    with pytest.warns(AssumedSettingsNotice, match="not among the timm .* mlp_act=, norm_eps=") as caught:
        hints, _, _ = hints_from_hub_config({"architecture": "vit_newer_patch16_224", "model_args": {"num_heads": 6}})
    assert caught[0].message.fields == ("mlp_act", "norm_eps") and hints["num_heads"] == 6
    with pytest.raises(CheckpointError, match=r"model_args \['rope_temperature'\] of timm's Eva class"):
        hints_from_hub_config({"architecture": "vit_small_patch16_dinov3", "model_args": {"rope_temperature": 10}})


def test_an_error_of_no_reader_is_one_line_naming_the_file(tmp_path, monkeypatch):
    """Any other exception while a layout is read (here a KeyError a reader might raise) is one CheckpointError."""
    import torch

    import vitlab
    import vitlab.checkpoint as checkpoint
    from vitlab.convert import CheckpointError

    def config_of(conv, overrides):
        raise KeyError("blocks.0.mlp.fc1.weight")

    path = tmp_path / "m.pth"
    torch.save(vitlab.create_model("Ti/4@32", depth=1).state_dict(), path)
    monkeypatch.setattr(checkpoint, "config_of", config_of)
    with pytest.raises(CheckpointError, match=r"m\.pth: vitlab cannot read this checkpoint's layout "
                                              r"\(KeyError: 'blocks\.0\.mlp\.fc1\.weight'\)") as e:
        vitlab.load(path, num_heads=3)
    assert "\n" not in str(e.value)
