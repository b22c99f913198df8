"""The ViT family's options (DeiT, DINOv2, CLIP, SigLIP, MAE) through vitlab's own tools: save/load, resampling
like the source, fine-tuning heads, attention maps, Figure 7, ONNX export. Parity with the peers' own code is in
test_parity_timm_families.py and test_parity_hf_families.py; here tiny random models stand for each family."""

import pytest
import torch
import torch.nn.functional as F
from conftest import randomize_

import vitlab
from vitlab.analysis import figure7
from vitlab.analysis.attention import METHODS, attention_maps
from vitlab.config import POS_RESAMPLES
from vitlab.flops import count_params
from vitlab.pos_embed import resample_pos_embed
from vitlab.train.optim import layer_id

# Each family's options, on a tiny model (vitlab.create_model("Ti/4@32", **TINY, **options)).
FAMILIES = {
    "deit-distilled": dict(distill_token=True, pool="distill"),
    "deit3": dict(no_embed_class=True, layer_scale_init=1e-6),
    "dinov2": dict(layer_scale_init=1e-5, pos_resample="bicubic_offset"),
    "dinov2-probe-head": dict(layer_scale_init=1e-5, pool="token_gap", pos_resample="bicubic"),
    "dinov2-registers": dict(layer_scale_init=1e-5, num_register_tokens=2, no_embed_class=True),
    "clip-openai": dict(norm_pre=True, patch_bias=False, mlp_act="quick_gelu", norm_eps=1e-5),
    "siglip": dict(class_token=False, pool="map", mlp_act="gelu_tanh", pos_resample="bicubic"),
    "mae": dict(pos_resample="bicubic"),
}
TINY = dict(depth=2, embed_dim=32, num_heads=4, mlp_dim=64, num_classes=5)


def family_model(name: str) -> vitlab.VisionTransformer:
    return randomize_(vitlab.create_model("Ti/4@32", **TINY, **FAMILIES[name]), std=0.2).eval()


@pytest.mark.parametrize("family", FAMILIES)
def test_save_load_round_trip_keeps_every_option(family, tmp_path):
    model = family_model(family)
    vitlab.save(model, tmp_path / "m.safetensors")
    back = vitlab.load(tmp_path / "m.safetensors").eval()
    assert back.config == model.config
    x = torch.randn(2, 3, 40, 24)  # another size: the table is resampled by the family's own rule
    with torch.no_grad():
        torch.testing.assert_close(back(x), model(x), atol=1e-6, rtol=0)
    assert count_params(model.config) == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("method", POS_RESAMPLES)
def test_load_at_another_size_resamples_as_the_forward_pass_does(method, tmp_path):
    model = family_model("dinov2").eval()
    model.config = model.config.replace(pos_resample=method)
    vitlab.save(model, tmp_path / "m.safetensors")
    at48 = vitlab.load(tmp_path / "m.safetensors", img_size=48).eval()
    x = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        torch.testing.assert_close(at48(x), model(x), atol=1e-5, rtol=0)
    other = vitlab.load(tmp_path / "m.safetensors", pos_resample="bicubic_antialias" if method != "bicubic_antialias"
                        else "bicubic").eval()  # the caller can set the rule
    with torch.no_grad():
        assert (other(x) - model(x)).abs().max() > 1e-4  # and it matters


def test_the_resampling_rules_differ_and_follow_their_sources():
    torch.manual_seed(0)
    pos = torch.randn(1, 1 + 37 * 37, 8)  # a DINOv2 table (518 px at patch 14), to 16x16 (224 px)
    grid = pos[:, 1:].reshape(1, 37, 37, 8).permute(0, 3, 1, 2)
    out = {m: resample_pos_embed(pos, (16, 16), (37, 37), num_prefix=1, method=m)[:, 1:] for m in POS_RESAMPLES}

    def flat(g: torch.Tensor) -> torch.Tensor:
        return g.permute(0, 2, 3, 1).reshape(1, -1, 8)

    expected = {
        "bicubic_antialias": F.interpolate(grid, size=(16, 16), mode="bicubic", antialias=True),
        "bicubic": F.interpolate(grid, size=(16, 16), mode="bicubic"),
        "bicubic_offset": F.interpolate(grid, scale_factor=(16.1 / 37, 16.1 / 37), mode="bicubic"),  # DINOv2's rule
        "bicubic_align_corners": F.interpolate(grid, size=(16, 16), mode="bicubic", align_corners=True),
    }
    for m in POS_RESAMPLES:
        torch.testing.assert_close(out[m], flat(expected[m]), atol=2e-5, rtol=0)
    assert (out["bicubic_antialias"] - out["bicubic"]).abs().max() > 0.1  # what a wrong rule costs
    assert (out["bicubic_offset"] - out["bicubic"]).abs().max() > 1e-3
    with pytest.raises(ValueError, match="not one of"):
        resample_pos_embed(pos, (16, 16), (37, 37), method="bilinear")


@pytest.mark.parametrize("family", FAMILIES)
def test_fine_tuning_gets_fresh_heads_and_layer_ids(family, tmp_path):
    model = family_model(family)
    vitlab.save(model, tmp_path / "m.safetensors")
    with pytest.warns(UserWarning, match="the head is new"):
        tuned = vitlab.create_model(str(tmp_path / "m.safetensors"), num_classes=3, img_size=48)
    assert tuned.config.num_classes == 3 and tuned.config.img_size == (48, 48)
    for head in (tuned.head, tuned.head_dist):
        if head is not None:  # DeiT's distillation head is fresh too
            assert head.weight.shape[0] == 3 and not head.weight.any()
    loss = F.cross_entropy(tuned.train()(torch.randn(4, 3, 48, 48)), torch.tensor([0, 1, 2, 0]))
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in tuned.parameters() if p.requires_grad)
    ids = {name: layer_id(name, tuned.config.depth) for name, _ in tuned.named_parameters()}
    for name in ("dist_token", "norm_pre.weight", "reg_token", "cls_token"):
        if name in ids:
            assert ids[name] == 0  # embeddings: the smallest learning rate under layer-wise decay
    assert all(ids[n] == tuned.config.depth + 1 for n in ids if n.startswith(("head", "attn_pool")))


@pytest.mark.parametrize("family", FAMILIES)
def test_attention_maps_and_figure7_for_every_family(family):
    model = family_model(family)
    x = torch.randn(2, 3, 32, 40)
    for method in METHODS + (("pool",) if model.config.pool == "map" else ()):
        maps = attention_maps(model, x, method).maps
        assert maps.shape == (2, 8, 10)
        torch.testing.assert_close(maps.sum(dim=(1, 2)), torch.ones(2))
    sim = figure7.model_position_similarity(model)  # the table's grid rows, whatever prefix rows it has
    assert sim.shape == (8, 8, 8, 8)
    torch.testing.assert_close(sim[2, 3, 2, 3], torch.tensor(1.0))
    out = model.forward_intermediates(torch.randn(2, 3, 32, 32), return_attention=True)
    dist = figure7.mean_attention_distance(out.attention[1], out.grid_size, model.config.patch_size,
                                           out.num_prefix_tokens)
    assert dist.shape == (4,) and (dist > 0).all()


def test_distillation_head_averages_the_two_tokens():
    model = family_model("deit-distilled")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        tokens = model.forward_features(x)
        cls_logits, dist_logits = model.head(tokens[:, 0]), model.head_dist(tokens[:, 1])
        torch.testing.assert_close(model(x), (cls_logits + dist_logits) / 2)
        torch.testing.assert_close(model.forward_head(tokens, pre_logits=True), (tokens[:, 0] + tokens[:, 1]) / 2)
    as_token = vitlab.create_model("Ti/4@32", **TINY, distill_token=True, pool="token")  # transformers' classifier
    assert as_token.head_dist is None


@pytest.mark.parametrize("bad, match", [
    (dict(pool="distill"), "distill_token=True"),
    (dict(distill_token=True, class_token=False, pool="gap"), "needs class_token"),
    (dict(pool="map", representation_size=16), "not supported"),
    (dict(pool="token_gap", class_token=False), "needs class_token"),
    (dict(pos_resample="nearest"), "pos_resample"),
    (dict(mlp_act="mish"), "mlp_act"),
], ids=str)
def test_config_rejects_inconsistent_family_options(bad, match):
    with pytest.raises(ValueError, match=match):
        vitlab.get_config("Ti/16").replace(**bad)


@pytest.mark.slow  # an ONNX export each (about 5 s)
@pytest.mark.parametrize("family", ["deit-distilled", "dinov2", "clip-openai", "siglip", "dinov2-registers"])
def test_every_family_exports_to_onnx(family, tmp_path):
    from vitlab.export import export_onnx

    report = export_onnx(family_model(family), tmp_path / "m.onnx", dynamic=True)
    assert len(report.checks) == 2 and max(c.max_abs_diff for c in report.checks) <= 1e-4


def _saved(family: str, path, **overrides) -> str:
    model = randomize_(vitlab.create_model("Ti/4@32", **{**TINY, **FAMILIES[family], **overrides}), std=0.2)
    vitlab.save(model, path)
    return str(path)


def test_attention_command_shows_the_pool_map_of_a_siglip_model(tmp_path, capsys):
    from PIL import Image

    from vitlab.cli import main

    image = tmp_path / "noise.png"
    Image.fromarray(torch.randint(0, 256, (40, 40, 3), dtype=torch.uint8).numpy()).save(image)
    ckpt = _saved("siglip", tmp_path / "siglip.safetensors")
    assert main(["attention", str(image), "--model", ckpt, "--method", "pool", "--head", "1",
                 "--out", str(tmp_path / "pool.png")]) == 0
    assert (tmp_path / "pool.png").is_file()
    deit = _saved("deit-distilled", tmp_path / "deit.safetensors")
    assert main(["attention", str(image), "--model", deit, "--method", "pool"]) == 2
    assert "pools with 'distill', not 'map'" in capsys.readouterr().err


@pytest.mark.slow  # a report each (about 15 s)
@pytest.mark.parametrize("family", ["deit-distilled", "siglip"])
def test_analyze_report_for_a_family(family, tmp_path):
    import json

    from vitlab.cli import main
    from vitlab.data.shapes import CLASS_NAMES

    ckpt = _saved(family, tmp_path / "m.safetensors", num_classes=len(CLASS_NAMES), num_register_tokens=1)
    assert main(["analyze", "--checkpoint", ckpt, "--data", "shapes", "--images", "32", "--probe-images", "64",
                 "--out", str(tmp_path / "report"), "--no-progress"]) == 0
    numbers = json.loads((tmp_path / "report" / "report.json").read_text())
    methods = set(numbers["faithfulness"])
    assert methods == ({"raw", "rollout", "grad-rollout", "pool"} if family == "siglip" else
                       {"raw", "rollout", "grad-rollout"})


def test_convert_command_sets_what_a_bare_state_dict_cannot_say_and_prints_the_timm_class(tmp_path, capsys):
    from vitlab.checkpoint import export_timm
    from vitlab.cli import main

    clip = family_model("clip-openai")
    export_timm(clip, tmp_path / "bare.safetensors")  # a bare timm dict: QuickGELU is not in the weights
    assert main(["convert", str(tmp_path / "bare.safetensors"), str(tmp_path / "clip.safetensors"),
                 "--set", "mlp_act=quick_gelu", "--set", "num_heads=4"]) == 0
    back = vitlab.load(tmp_path / "clip.safetensors").eval()
    assert back.config == clip.config
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(back(x), clip(x), atol=1e-5, rtol=0)
    deit = _saved("deit-distilled", tmp_path / "deit.safetensors")
    assert main(["convert", deit, str(tmp_path / "deit.pth")]) == 0
    assert "timm model: timm.models.deit.VisionTransformerDistilled(img_size=(32, 32)" in capsys.readouterr().out
    assert main(["convert", deit, str(tmp_path / "x.pth"), "--set", "heads=4"]) == 2
    assert "FIELD a ViTConfig field" in capsys.readouterr().err
