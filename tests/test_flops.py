import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import vitlab
from vitlab.flops import count_flops, count_params
from vitlab.registry import MODELS

# (alias, overrides): the variants whose FLOPs differ in kind. depth=2 keeps the forward passes fast;
# the count is linear in depth, and the full-depth Ti/16 checks that.
FLOP_CASES = {
    "Ti/16": ("Ti/16", {}),
    "non-square": ("Ti/16", dict(depth=2, img_size=(160, 224))),
    "conv-stem": ("Ti/16", dict(depth=2, stem="conv")),
    "conv-stem-width": ("Ti/16", dict(depth=2, stem="conv", stem_width=24, img_size=(96, 128))),
    "conv-stem-depth": ("Ti/4@32", dict(depth=2, stem="conv", stem_depth=3)),
    "representation": ("S/16", dict(depth=2, representation_size=256)),
    "registers": ("Ti/16", dict(depth=2, num_register_tokens=4)),
    "gap-fc-norm-qk-norm-ls": ("Ti/16", dict(depth=2, pool="gap", fc_norm=True, qk_norm=True, layer_scale_init=1e-5)),
    "small-image": ("Ti/4@32", dict(depth=2)),
    "no-head": ("Ti/16", dict(depth=2, num_classes=0)),
    "deit-distilled": ("Ti/16", dict(depth=2, distill_token=True, pool="distill")),
    "siglip-map": ("Ti/16", dict(depth=2, class_token=False, pool="map")),
    "dinov2-token-gap": ("Ti/16", dict(depth=2, pool="token_gap", layer_scale_init=1e-5, no_embed_class=True,
                                       num_register_tokens=4)),
}


def measured_flops(model: vitlab.VisionTransformer, img_size: tuple[int, int]) -> int:
    # On CPU the fused kernel runs as aten._scaled_dot_product_flash_attention_for_cpu, which
    # flop_counter has no formula for (it counts the CUDA flash / efficient / cudnn kernels only), so
    # the explicit q @ k^T, softmax, @ v path is measured instead: same FLOPs, counted as two bmm.
    model.set_fused_attn(False)
    x = torch.randn(1, model.config.in_chans, *img_size, device=next(model.parameters()).device)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model.eval()(x)
    return counter.get_total_flops()


@pytest.mark.parametrize("case", list(FLOP_CASES))
@pytest.mark.parametrize("other_size", [False, True], ids=["native", "other-size"])
def test_count_flops_matches_flop_counter(case, other_size):
    # On the meta device: flop_counter counts from the shapes, the same ops as on real tensors (the by-part test
    # below counts real ones) without initialising or computing anything.
    name, overrides = FLOP_CASES[case]
    model = build_on_meta(vitlab.get_config(name).replace(**overrides))
    cfg = model.config
    size = cfg.img_size
    if other_size:  # 4 more patch rows, 2 more columns (the position table is resampled in 2D)
        size = (cfg.img_size[0] + 4 * cfg.patch_size, cfg.img_size[1] + 2 * cfg.patch_size)
    analytic = count_flops(cfg, img_size=None if not other_size else size)
    measured = measured_flops(model, size)
    assert abs(analytic - measured) / measured < 0.02, (case, size, analytic, measured)


def test_count_flops_known_values():
    # Ti/16 at 224: 2 * (196 * 192 * 768 [patches] + 12 * (197 * 442368 + 2 * 197^2 * 192) + 192 * 1000)
    assert count_flops(vitlab.get_config("Ti/16")) == 2_507_366_400
    # ViT-B/16: timm and fvcore list 17.6 GMACs, i.e. 35.1 GFLOPs at 2 FLOPs per multiply-add.
    assert round(count_flops(vitlab.get_config("B/16")) / 1e9, 1) == 35.1
    # An int img_size means a square image; the default is the config's own.
    cfg = vitlab.get_config("Ti/16")
    assert count_flops(cfg, 224) == count_flops(cfg) == count_flops(cfg, (224, 224))
    assert count_flops(cfg, 384) > count_flops(cfg)


def test_count_flops_rejects_indivisible_size():
    with pytest.raises(ValueError, match="not divisible by the patch size 16"):
        count_flops(vitlab.get_config("Ti/16"), 100)


def build_on_meta(cfg: vitlab.ViTConfig) -> vitlab.VisionTransformer:
    with torch.device("meta"):
        return vitlab.VisionTransformer(cfg)


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", list(MODELS))
def test_count_params_registered(name):
    cfg = MODELS[name]
    assert count_params(cfg) == n_params(build_on_meta(cfg))


@pytest.mark.parametrize("overrides", [
    dict(stem="conv"), dict(stem="conv", stem_width=24, patch_size=8, img_size=64),
    dict(stem="conv", stem_depth=2, patch_size=8, img_size=64),
    dict(qk_norm=True, layer_scale_init=1e-5, qkv_bias=False), dict(num_register_tokens=4),
    dict(representation_size=100), dict(pool="gap", fc_norm=True), dict(pool="gap", class_token=False),
    dict(pos_embed="sincos2d"), dict(pos_embed="none"), dict(num_classes=0), dict(in_chans=1, img_size=(64, 96)),
    dict(distill_token=True, pool="distill"), dict(distill_token=True, no_embed_class=True),
    dict(class_token=False, pool="map"), dict(class_token=False, pool="map", qkv_bias=False),
    dict(pool="token_gap"), dict(norm_pre=True, patch_bias=False, mlp_act="quick_gelu"),
    dict(mlp_layer="swiglu"), dict(mlp_layer="swiglu", mlp_inner_norm=True, attn_inner_norm=True),
    dict(rope="dinov3", pos_embed="none"), dict(rope="mixed"),
    dict(class_token=False, pool="map", attn_pool_mlp_dim=96, mlp_bias=False),  # PE gigantic's narrower pool MLP
    dict(class_token=False, pool="map", attn_pool_mlp=False, pos_embed="sincos2d_mae"),  # AIMv2's pool, native
    dict(res_post_norm=True),
    dict(norm_layer="rmsnorm", patch_norm=True, proj_bias=False, mlp_bias=False, mlp_layer="swiglu", pool="gap",
         class_token=False),  # AIMv2
    dict(class_token=False, pool="map", attn_pool_heads=2, final_norm=False, norm_layer="rmsnorm", qk_norm=True),
], ids=str)
def test_count_params_variants(overrides):
    # Real tensors: the meta path is not involved. Narrower than Ti/16, so that initialising them is quick.
    model = vitlab.create_model("Ti/16", depth=2, embed_dim=64, num_heads=4, mlp_dim=128, **overrides)
    assert count_params(model.config) == n_params(model)


@pytest.mark.parametrize("alias, millions", [
    ("Ti/16", 5.72), ("S/16", 22.05), ("B/16", 86.57), ("L/16", 304.33),  # DeiT Table 1 / timm
])
def test_count_params_published(alias, millions):
    assert round(count_params(vitlab.get_config(alias)) / 1e6, 2) == millions


def test_count_params_huge():
    assert round(count_params(vitlab.get_config("H/14")) / 1e6) == 632  # ViT paper Table 1: 632M


@pytest.mark.parametrize("case", ["registers", "conv-stem", "representation"])
def test_flops_breakdown_matches_flop_counter_by_part(case):
    from vitlab.flops import flops_breakdown

    name, overrides = FLOP_CASES[case]
    model = vitlab.create_model(name, **overrides).eval()
    model.set_fused_attn(False)  # see measured_flops
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.randn(1, 3, *model.config.img_size))
    counts = counter.get_flop_counts()  # {module path: {op: flops}}

    def measured(suffix: str) -> int:
        return sum(sum(ops.values()) for path, ops in counts.items() if path.endswith(suffix) and "blocks" in path)

    parts = flops_breakdown(model.config)
    depth = model.config.depth
    assert parts["qkv"] == sum(measured(f"blocks.{i}.attn.qkv") for i in range(depth))
    assert parts["proj"] == sum(measured(f"blocks.{i}.attn.proj") for i in range(depth))
    assert parts["mlp"] == sum(measured(f"blocks.{i}.mlp") for i in range(depth))
    attn_total = sum(measured(f"blocks.{i}.attn") for i in range(depth))
    assert parts["attention_matrix"] == attn_total - parts["qkv"] - parts["proj"]  # q @ k^T and attn @ v
    stem = sum(sum(ops.values()) for path, ops in counts.items() if path.endswith("patch_embed"))
    assert abs(parts["patch_embed"] - stem) / stem < 0.02
    total = counter.get_total_flops()  # the whole model: blocks, stem, head (norms and softmax count 0 here)
    assert abs(count_flops(model.config) - total) / total < 0.02


def test_swin_attention_cost_and_attention_memory():
    from vitlab.flops import attention_macs, attention_matrix_bytes

    cfg = vitlab.get_config("B/16")  # 14 x 14 = 196 patches, C = 768
    hw, c = 196, 768
    assert attention_macs(cfg) == 4 * hw * c * c + 2 * hw * hw * c
    assert attention_macs(cfg, window=7) == 4 * hw * c * c + 2 * 49 * hw * c
    assert attention_macs(cfg, 448, window=7) > 3.9 * attention_macs(cfg, window=7)  # W-MSA: linear in pixels
    assert attention_macs(cfg, 448) > 5 * attention_macs(cfg)  # global MSA: more than linear
    assert attention_matrix_bytes(cfg, batch=2) == 2 * 12 * 197 * 197 * 4


def test_cost_at_adds_up_to_count_flops_and_windowed_attention_is_cheaper():
    from vitlab.flops import COST_PARTS, attention_macs, cost_at

    cfg = vitlab.get_config("B/16", representation_size=768)
    cost = cost_at(cfg, 384, window=7)
    assert cost.img_size == (384, 384) and cost.tokens == 24 * 24 + 1
    assert cost.flops == count_flops(cfg, 384)
    assert sum(cost.share[p] for p in COST_PARTS) == pytest.approx(100.0)  # pre_logits is counted in the head
    assert cost.msa_macs == 12 * attention_macs(cfg, 384) and cost.wmsa_macs < cost.msa_macs
    assert cost.attention_matrix_bytes == 12 * 577 * 577 * 4
