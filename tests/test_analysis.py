"""Every analysis on a hand-built case whose answer is known."""

import math
from pathlib import Path

import pytest
import torch
from conftest import randomize_

import vitlab
from vitlab.analysis import (
    block_representations,
    cka,
    deletion_insertion_curves,
    faithfulness,
    hsic_unbiased,
    linear_probe_accuracy,
    mean_attention_distance,
    patch_embedding_components,
    pointing_game,
    position_similarity,
    probe_blocks,
    residual_ablation,
    soft_nearest_neighbor_loss,
    uniform_attention_distance,
)
from vitlab.analysis.attention import (
    attention_maps,
    fuse_heads,
    head_query,
    layer_map,
    patch_rows,
    pool_map,
    query_row,
    rollout,
)
from vitlab.analysis.figure7 import attention_distances, model_position_similarity


def softmax_rows(b, h, n):
    return torch.randn(b, h, n, n).softmax(dim=-1)


# --- rollout and attention maps ---------------------------------------------------------------------------------

def test_rollout_of_identity_attention_is_the_identity():
    eye = torch.eye(5).expand(2, 3, 5, 5)
    torch.testing.assert_close(rollout([eye, eye, eye]), torch.eye(5).expand(2, 5, 5))


def test_rollout_of_one_layer_is_half_attention_half_residual():
    a = softmax_rows(2, 4, 6)
    expected = 0.5 * a.mean(dim=1) + 0.5 * torch.eye(6)  # rows already sum to 1
    torch.testing.assert_close(rollout([a]), expected)
    two = rollout([a, a])
    torch.testing.assert_close(two, expected @ expected)
    torch.testing.assert_close(two.sum(-1), torch.ones(2, 6))  # still a row-stochastic matrix


def test_head_fusion_and_discard():
    a = softmax_rows(1, 3, 4)
    assert torch.equal(fuse_heads(a, "max"), a.amax(1)) and torch.equal(fuse_heads(a, "min"), a.amin(1))
    with pytest.raises(ValueError, match="head_fusion='median' is not one of mean, max, min"):
        fuse_heads(a, "median")
    uniform = torch.full((1, 1, 4, 4), 0.25)
    uniform[0, 0, 1, 2] = 0.01  # the weakest weight of the 16
    r = rollout([uniform], discard_ratio=1 / 16)
    assert r[0, 1, 2] == 0  # discarded before the residual: 0.5 * 0 + 0.5 * 0 (off-diagonal)
    assert r[0, 0, 0] > 0.5  # the class token's self-attention is never discarded


def test_query_row_uses_the_class_token_or_the_mean_patch_query():
    a = softmax_rows(1, 1, 5)[:, 0]  # (1, 5, 5), 1 prefix token + 4 patches
    cls = query_row(a, 1, torch.tensor([[1.0, 0, 0, 0, 0]]))
    torch.testing.assert_close(cls, a[:, 0, 1:] / a[:, 0, 1:].sum(-1, keepdim=True))
    gap = query_row(a, 1, torch.tensor([[0.0, 0.25, 0.25, 0.25, 0.25]]))
    mean = a[:, 1:, 1:].mean(1)
    torch.testing.assert_close(gap, mean / mean.sum(-1, keepdim=True))
    per_head = query_row(softmax_rows(1, 3, 5), 1, torch.tensor([[1.0, 0, 0, 0, 0]]))  # (1, 3, 4): every head
    assert per_head.shape == (1, 3, 4)


@pytest.mark.parametrize("pool, expected", [
    ("token", [1, 0, 0, 0, 0, 0, 0]),
    ("distill", [0.5, 0.5, 0, 0, 0, 0, 0]),  # both heads are averaged
    ("gap", [0, 0, 0, 0.25, 0.25, 0.25, 0.25]),  # registers are prefix tokens, not patches
    ("token_gap", [0.5, 0, 0, 0.125, 0.125, 0.125, 0.125]),
])
def test_head_query_weights_the_tokens_as_the_head_reads_them(pool, expected):
    model = vitlab.create_model("Ti/4@32", img_size=8, depth=1, embed_dim=16, num_heads=2, mlp_dim=32,
                                distill_token=True, num_register_tokens=1, pool=pool)
    out = model.forward_intermediates(torch.randn(1, 3, 8, 8), return_attention=True)  # 2x2 grid, 3 prefix tokens
    torch.testing.assert_close(head_query(model, out), torch.tensor([expected], dtype=torch.float32))


def test_map_model_reads_the_attention_pool():
    model = randomize_(vitlab.create_model("Ti/4@32", num_classes=5, depth=2, embed_dim=48, num_heads=3, mlp_dim=96,
                                           class_token=False, pool="map"), std=0.2).eval()
    x = torch.randn(2, 3, 32, 32)
    out = model.forward_intermediates(x, return_attention=True)
    pool = attention_maps(model, x, "pool")
    torch.testing.assert_close(pool.maps.flatten(1), out.pool_attention.mean(1))  # the pool's own map
    torch.testing.assert_close(pool.head_maps.flatten(2), out.pool_attention)
    raw = attention_maps(model, x, "raw")  # the last block's rows, weighted by the pool's attention
    a = out.attention[1]
    expected = torch.einsum("bn,bnm->bm", out.pool_attention.mean(1), a.mean(1)[:, :, :])
    torch.testing.assert_close(raw.maps.flatten(1), expected / expected.sum(-1, keepdim=True))
    with pytest.raises(ValueError, match="pools with 'token'"):
        attention_maps(vitlab.create_model("Ti/4@32", depth=1), x, "pool")


@pytest.mark.parametrize("overrides", [
    dict(), dict(pool="gap", class_token=False), dict(num_register_tokens=2),
    dict(distill_token=True, pool="distill", num_register_tokens=2), dict(pool="map", class_token=False),
    dict(pool="token_gap", no_embed_class=True),
], ids=str)
@pytest.mark.parametrize("method", ["raw", "rollout", "grad-rollout"])
def test_attention_maps_on_any_model_and_non_square_images(overrides, method):
    model = randomize_(vitlab.create_model("Ti/4@32", num_classes=5, depth=3, embed_dim=48, num_heads=3,
                                           mlp_dim=96, **overrides), std=0.2)
    x = torch.randn(2, 3, 32, 48)  # non-square: an 8x12 grid
    out = attention_maps(model, x, method, layer=-1, discard_ratio=0.1 if method != "raw" else 0.0)
    assert out.maps.shape == (2, 8, 12)
    torch.testing.assert_close(out.maps.sum(dim=(1, 2)), torch.ones(2))
    assert (out.maps >= 0).all()
    torch.testing.assert_close(out.logits, model(x))
    if method == "raw":
        assert out.head_maps.shape == (2, 3, 8, 12)
        one = attention_maps(model, x, "raw", head=1)
        torch.testing.assert_close(one.maps, out.head_maps[:, 1])
    if method == "grad-rollout":
        assert torch.equal(out.target, model(x).argmax(-1))


def test_raw_attention_is_the_explicit_softmax_and_fused_attention_stays_on():
    model = randomize_(vitlab.create_model("Ti/4@32", num_classes=5, depth=2), std=0.2)
    x = torch.randn(1, 3, 32, 32)
    out = model.forward_intermediates(x, layers=[0], return_attention=True)
    expected = out.attention[0][0, :, 0, 1:].mean(0)
    torch.testing.assert_close(attention_maps(model, x, "raw", layer=0).maps.flatten(), expected / expected.sum())
    assert all(blk.attn.fused for blk in model.blocks)


def test_attention_figure_draws_the_image_its_map_and_the_heads(tmp_path, monkeypatch):
    import vitlab.analysis.attention as attention

    model = randomize_(vitlab.create_model("Ti/4@32", num_classes=3, depth=2, embed_dim=48, num_heads=3,
                                           mlp_dim=96), std=0.2)
    model.class_names = ["cat", "dog", "bird"]
    image = torch.rand(1, 3, 32, 48)
    x = model.preprocessing.normalize(image)
    drawn = {}
    monkeypatch.setattr(attention, "plot_attention_figure", lambda *args: drawn.update(args=args) or Path(args[-1]))
    fig = attention.attention_figure(model, x, tmp_path / "a.png", method="grad-rollout", target=1, title="x.png")
    shown, saliency, heads, title, map_title, heads_title, path = drawn["args"]
    assert torch.equal(torch.from_numpy(shown), (image[0] * 255).round().byte().permute(1, 2, 0))  # denormalised
    assert saliency.shape == (32, 48) and heads.shape == (3, 32, 48)  # upsampled; heads of the last block
    p, c = model(x).softmax(-1)[0].max(0)
    assert fig.prediction == f"{model.class_names[c]} ({p:.2f})" and title == f"x.png\npredicted: {fig.prediction}"
    assert map_title == "grad-rollout, blocks 0-1\nfor class dog" and heads_title == "block 1"
    assert fig.maps.target.tolist() == [1] and fig.path == path == tmp_path / "a.png"
    monkeypatch.undo()
    grey = vitlab.create_model("Ti/4@32", in_chans=1, num_classes=0, depth=1, embed_dim=48, num_heads=3, mlp_dim=96)
    fig = attention.attention_figure(grey, grey.preprocessing.normalize(torch.rand(1, 1, 32, 32)), tmp_path / "g.png",
                                     head=1)
    assert fig.path.stat().st_size > 0 and fig.prediction == ""  # one channel, no head: drawn all the same
    with pytest.raises(ValueError, match="draws one image"):
        attention.attention_figure(model, torch.randn(2, 3, 32, 32), tmp_path / "b.png")


def test_attention_map_arguments_are_checked():
    model = vitlab.create_model("Ti/4@32", num_classes=5, depth=2)
    x = torch.randn(1, 3, 32, 32)
    with pytest.raises(ValueError, match="method='gradcam' is not one of raw, rollout, grad-rollout"):
        attention_maps(model, x, "gradcam")
    with pytest.raises(ValueError, match="layer=5 is out of range"):
        attention_maps(model, x, layer=5)
    with pytest.raises(ValueError, match="head=3 is out of range"):
        attention_maps(model, x, head=3)
    with pytest.raises(ValueError, match="only be shown with method='raw'"):
        attention_maps(model, x, "rollout", head=0)


# --- faithfulness -----------------------------------------------------------------------------------------------

class _Counter(torch.nn.Module):
    """Class 1's logit grows with the mean of the top-left quadrant: a model whose true saliency is known."""

    def forward(self, x):
        score = x[:, :, :8, :8].mean(dim=(1, 2, 3)) * 20
        return torch.stack([torch.zeros_like(score), score], dim=1)


def test_deletion_auc_of_a_perfect_map_beats_random():
    x = torch.ones(3, 3, 16, 16)
    perfect = torch.zeros(3, 4, 4)
    perfect[:, :2, :2] = 1.0  # the four patches the model reads
    target = torch.ones(3, dtype=torch.long)
    f = faithfulness(_Counter(), x, perfect, target, patch_size=4, steps=16)
    assert f.deletion_auc < f.random_deletion_auc - 0.1
    assert f.insertion_auc > f.random_insertion_auc + 0.1
    curves = deletion_insertion_curves(_Counter(), x, perfect, target, patch_size=4, steps=16)
    assert curves["deletion"][:, 0].min() > 0.99 and curves["deletion"][:, -1].max() == pytest.approx(0.5)
    assert curves["deletion"][:, 4].max() == pytest.approx(0.5)  # after 4 of 16 patches the evidence is gone


def test_pointing_game_hits_and_chance():
    maps = torch.zeros(2, 4, 4)
    maps[0, 0, 0] = 1.0  # on the object
    maps[1, 3, 3] = 1.0  # off it
    masks = torch.zeros(2, 16, 16, dtype=torch.bool)
    masks[:, :8, :8] = True  # a quarter of the patches
    hit, chance = pointing_game(maps, masks)
    assert hit == 0.5 and chance == 0.25


# --- the paper's Figure 7 ---------------------------------------------------------------------------------------

def test_mean_attention_distance_of_uniform_and_self_attention():
    grid, p = (2, 2), 16
    n = 1 + 4
    uniform = torch.full((3, 2, n, n), 1.0 / n)
    d = mean_attention_distance(uniform, grid, p)
    expected = p * (0 + 1 + 1 + math.sqrt(2)) / 4  # from each patch: itself, two neighbours, one diagonal
    torch.testing.assert_close(d, torch.full((2,), expected))
    assert uniform_attention_distance(grid, p) == pytest.approx(expected)
    self_only = torch.eye(n).expand(3, 2, n, n)
    torch.testing.assert_close(mean_attention_distance(self_only, grid, p), torch.zeros(2))


def test_position_similarity_of_a_known_2d_embedding():
    h, w = 4, 6
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    angle_y, angle_x = ys.flatten() * 0.3, xs.flatten() * 0.3
    # cos/sin features of the row and the column: the similarity of two positions is
    # (cos(dy * 0.3) + cos(dx * 0.3)) / 2, largest at the same position and falling with the distance.
    pos = torch.stack([angle_y.cos(), angle_y.sin(), angle_x.cos(), angle_x.sin()], dim=1) / math.sqrt(2)
    sim = position_similarity(torch.cat([torch.randn(1, 4), pos])[None], (h, w), num_prefix=1)
    assert sim.shape == (h, w, h, w)
    for (i, j, k, m) in [(0, 0, 3, 5), (2, 1, 2, 4), (1, 3, 1, 3)]:
        expected = (math.cos((i - k) * 0.3) + math.cos((j - m) * 0.3)) / 2
        assert sim[i, j, k, m].item() == pytest.approx(expected, abs=1e-5)
    assert torch.equal(sim[1, 2].flatten().argmax(), torch.tensor(1 * w + 2))


def test_figure7_on_a_model():
    model = randomize_(vitlab.create_model("Ti/4@32", num_classes=5, depth=2, embed_dim=48, num_heads=3,
                                           mlp_dim=96))
    comps, var = patch_embedding_components(model, k=10)
    assert comps.shape == (10, 3, 4, 4) and torch.all(var[:-1] >= var[1:]) and var.sum() <= 1 + 1e-6
    torch.testing.assert_close(comps.flatten(1) @ comps.flatten(1).T, torch.eye(10))  # orthonormal components
    assert model_position_similarity(model).shape == (8, 8, 8, 8)
    dist = attention_distances(model, torch.randn(2, 3, 32, 32))
    assert dist.shape == (2, 3) and (dist > 0).all() and (dist < 32 * math.sqrt(2)).all()
    x = torch.randn(7, 3, 32, 32)  # in batches of 3 (3 + 3 + 1 images) as in one batch
    torch.testing.assert_close(attention_distances(model, x, batch_size=3), attention_distances(model, x, batch_size=7))
    with pytest.raises(ValueError, match="conv stem has no linear patch embedding"):
        patch_embedding_components(vitlab.create_model("Ti/4@32", stem="conv", depth=1))


# --- representations --------------------------------------------------------------------------------------------

def test_cka_identity_and_invariances():
    x = torch.randn(64, 20)
    q, _ = torch.linalg.qr(torch.randn(20, 20))
    assert cka(x, x) == pytest.approx(1.0)
    assert cka(x, x @ q) == pytest.approx(1.0)  # orthogonal transform
    assert cka(x, 3.7 * x) == pytest.approx(1.0)  # isotropic scaling
    assert cka(x, x, batch_size=16) == pytest.approx(1.0)  # minibatch estimate
    assert abs(cka(x, torch.randn(64, 20))) < 0.2  # independent representations: near 0 (unbiased)
    assert cka(x, x @ torch.diag(torch.linspace(0.1, 5, 20))) < 0.99  # anisotropic scaling changes it


def test_unbiased_hsic_has_no_bias_for_independent_data():
    g = torch.Generator().manual_seed(0)
    vals = []
    for _ in range(200):
        a, b = torch.randn(2, 20, 5, generator=g).double()
        vals.append(hsic_unbiased(a @ a.T, b @ b.T))
    vals = torch.stack(vals)
    assert abs(vals.mean()) < 0.5 * vals.std()  # the mean is within a few standard errors of 0


def test_soft_nearest_neighbour_loss():
    labels = torch.tensor([0, 0, 1, 1])
    apart = torch.tensor([[0.0, 0.0], [0.0, 0.1], [10.0, 0.0], [10.0, 0.1]])
    assert soft_nearest_neighbor_loss(apart, labels) == pytest.approx(0.0, abs=1e-6)  # classes far apart
    mixed = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 0.1], [10.0, 0.1]])
    assert soft_nearest_neighbor_loss(mixed, labels) > 10  # each point's neighbour is of the other class
    same = torch.zeros(4, 2)  # all points equal: 1 of 3 neighbours shares the class
    assert soft_nearest_neighbor_loss(same, labels) == pytest.approx(math.log(3))


def test_linear_probe_separates_separable_classes():
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(3, 16, generator=g) * 4
    y = torch.arange(300) % 3
    x = centres[y] + torch.randn(300, 16, generator=g)
    assert linear_probe_accuracy(x[:200], y[:200], x[200:], y[200:]) > 0.95
    assert linear_probe_accuracy(torch.randn(200, 16), y[:200], torch.randn(100, 16), y[200:]) < 0.6


@pytest.mark.slow
def test_a_trained_shapes_model_points_at_the_object(tmp_path):
    """The `demo` recipe (about a minute on 2 CPU cores), then its maps on 500 shapes test images."""
    from vitlab.data import load_dataset
    from vitlab.train.config import load_config
    from vitlab.train.trainer import train

    train(load_config("demo"), run_dir=tmp_path, progress=False)
    model = vitlab.load(tmp_path / "model.safetensors").eval()
    test = load_dataset("shapes", "test")
    x = model.preprocessing.normalize(test.images[:500].float() / 255)
    masks = test.masks[:500]
    scores = {}
    for method in ("raw", "rollout", "grad-rollout"):
        maps = attention_maps(model, x, method).maps
        scores[method] = pointing_game(maps, masks)
    # Measured 2026-11-23 (2-core CPU): hit rate raw 0.704, rollout 0.824, grad-rollout 0.814; chance 0.216.
    hit, chance = scores["rollout"]
    assert hit > chance + 0.3, scores
    f = faithfulness(model, x[:100], attention_maps(model, x[:100], "rollout").maps, test.labels[:100],
                     model.config.patch_size)
    assert f.deletion_auc < f.random_deletion_auc and f.insertion_auc > f.random_insertion_auc, f


def test_residual_ablation_in_the_config_and_at_inference():
    model = randomize_(vitlab.create_model("Ti/4@32", num_classes=4, depth=3, embed_dim=48, num_heads=3,
                                           mlp_dim=96), std=0.2)
    ablated = vitlab.create_model("Ti/4@32", num_classes=4, depth=3, embed_dim=48, num_heads=3, mlp_dim=96,
                                  no_residual_blocks=[1])
    ablated.load_state_dict(model.state_dict())
    ablated.eval()
    x = torch.randn(6, 3, 32, 32)
    blk = model.blocks[1]
    with torch.no_grad():  # block 1 without residuals, by hand
        h = model.embed(x)
        h = model.blocks[0](h)[0]
        a = blk.attn(blk.norm1(h))[0]
        h = blk.mlp(blk.norm2(a))
        expected = model.forward_head(model.norm(model.blocks[2](h)[0]))
        torch.testing.assert_close(ablated(x), expected)
    y = model(x).argmax(-1)
    accs = residual_ablation(model, x, y)
    assert len(accs) == 3 and all(0 <= a <= 1 for a in accs)
    assert accs[1] == pytest.approx((ablated(x).argmax(-1) == y).float().mean().item())
    assert all(b.residual for b in model.blocks) and (model(x).argmax(-1) == y).all()  # restored
    with pytest.raises(ValueError, match="no_residual_blocks: block 3 does not exist"):
        vitlab.create_model("Ti/4@32", depth=3, no_residual_blocks=[3])


def test_block_representations_and_probes():
    model = randomize_(vitlab.create_model("Ti/4@32", num_classes=4, depth=2, embed_dim=48, num_heads=3,
                                           mlp_dim=96), std=0.2)
    x = torch.randn(20, 3, 32, 32)
    reps = block_representations(model, x, batch_size=8)
    assert [tuple(r.shape) for r in reps["mean"]] == [tuple(r.shape) for r in reps["cls"]] == [(20, 48)] * 2
    out = model.forward_intermediates(x, layers=None)
    torch.testing.assert_close(reps["cls"][1], out.tokens[1][:, 0])
    torch.testing.assert_close(reps["mean"][0], out.tokens[0][:, 1:].mean(1))
    y = torch.arange(20) % 2
    probes = probe_blocks({k: [r[:12] for r in v] for k, v in reps.items()}, y[:12],
                          {k: [r[12:] for r in v] for k, v in reps.items()}, y[12:])
    assert set(probes) == {"mean", "cls"} and len(probes["cls"]) == 2
    gap = vitlab.create_model("Ti/4@32", depth=1, pool="gap", class_token=False)
    assert set(block_representations(gap, x[:2])) == {"mean"}


def test_report_samples_streamed_images_with_the_weights_preprocessing(tmp_path):
    import numpy as np
    from PIL import Image

    from vitlab.analysis.report import sample_images
    from vitlab.data import load_dataset

    rng = np.random.default_rng(0)
    for cls in ("a", "b"):
        (tmp_path / cls).mkdir()
        for i in range(3):
            Image.fromarray(rng.integers(0, 256, (80, 96, 3), dtype=np.uint8)).save(tmp_path / cls / f"{i}.png")
    data = load_dataset(f"folder:{tmp_path}", "train")  # 2 of the 3 images per class
    model = vitlab.create_model("Ti/16", img_size=64, num_classes=2, depth=1, embed_dim=48, num_heads=3, mlp_dim=96)
    model.class_names = ["b", "a"]  # the model's order differs from the folder's
    s = sample_images(model, data, n=4)
    assert s.x.shape == (4, 3, 64, 64) and s.images.dtype == torch.uint8 and s.masks is None
    pre = model.preprocessing
    expected = pre.transform()(Image.open(data.samples[0][0]).convert("RGB"))
    assert any(torch.allclose(expected, xi, atol=1e-2) for xi in s.x)
    assert set(s.y.tolist()) <= {0, 1}
    i = next(i for i, xi in enumerate(s.x) if torch.allclose(expected, xi, atol=1e-2))
    assert s.y[i] == model.class_names.index(data.class_names[data.samples[0][1]])  # in the model's class order


def test_grad_rollout_explains_the_class_asked_for():
    model = randomize_(vitlab.create_model("Ti/4@32", num_classes=5, depth=2, embed_dim=48, num_heads=3,
                                           mlp_dim=96), std=0.2)
    x = torch.randn(2, 3, 32, 32)
    out = attention_maps(model, x, "grad-rollout", target=3)
    assert out.target.tolist() == [3, 3]
    assert not torch.allclose(out.maps, attention_maps(model, x, "grad-rollout", target=1).maps)
    with pytest.raises(ValueError, match="grad-rollout needs a classifier head"):
        attention_maps(vitlab.create_model("Ti/4@32", num_classes=0, depth=1), x, "grad-rollout")


@pytest.mark.parametrize("call, message", [
    (lambda: rollout([]), "at least one block"),
    (lambda: rollout([softmax_rows(1, 2, 5)], discard_ratio=1.0), "discard_ratio must be in"),
    (lambda: position_similarity(torch.randn(1, 10, 8), (3, 3), num_prefix=0), "expected 9 for a 3x3 grid"),
    (lambda: model_position_similarity(vitlab.create_model("Ti/4@32", depth=1, pos_embed="sincos2d")),
     "no learned position table"),
    (lambda: mean_attention_distance(softmax_rows(1, 2, 10), (3, 3), 4, num_prefix=0), "does not match"),
    (lambda: pointing_game(torch.rand(2, 4, 4), torch.ones(2, 10, 10, dtype=torch.bool)), "do not tile"),
    (lambda: deletion_insertion_curves(vitlab.create_model("Ti/4@32", depth=1), torch.randn(2, 3, 32, 32),
                                       torch.rand(2, 4, 4), torch.zeros(2, dtype=torch.long), 4), "maps must be"),
    (lambda: hsic_unbiased(torch.eye(3), torch.eye(3)), "at least 4 examples"),
    (lambda: cka(torch.randn(8, 3), torch.randn(9, 3)), "the same examples"),
    (lambda: soft_nearest_neighbor_loss(torch.randn(4, 3), torch.tensor([0, 0, 1, 1]), 0.0), "temperature"),
    (lambda: soft_nearest_neighbor_loss(torch.randn(3, 3), torch.tensor([0, 0, 1])), "another example of its"),
])
def test_bad_inputs_are_clear_errors(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_minibatch_cka_needs_a_minibatch():
    from vitlab.analysis import MinibatchCKA

    with pytest.raises(ValueError, match="no minibatch seen yet"):
        MinibatchCKA().value()


def test_rollout_can_start_at_a_later_block():
    model = randomize_(vitlab.create_model("Ti/4@32", num_classes=5, depth=3, embed_dim=48, num_heads=3, mlp_dim=96),
                       std=0.2)
    x = torch.randn(2, 3, 32, 32)
    out = model.eval().forward_intermediates(x, return_attention=True)
    from_one = attention_maps(model, x, "rollout", first_layer=1).maps.flatten(1)
    expected = query_row(rollout([out.attention[1], out.attention[2]]), 1, head_query(model, out))
    torch.testing.assert_close(from_one, expected)
    with pytest.raises(ValueError, match="first_layer=3 must be in 0..2"):
        attention_maps(model, x, "rollout", first_layer=3)


def test_patch_rows_of_a_known_attention():
    """Two prefix tokens and 4 patches: each patch query gives half its weight to the prefix tokens and the other
    half to itself and its right neighbour; the rows over the patches are those two, renormalised."""
    n_prefix, n = 2, 4
    attn = torch.zeros(1, 1, n_prefix + n, n_prefix + n)
    attn[..., :n_prefix, 0] = 1.0
    for i in range(n):
        q = n_prefix + i
        attn[0, 0, q, :n_prefix] = 0.25
        attn[0, 0, q, q] = 0.3
        attn[0, 0, q, n_prefix + (i + 1) % n] = 0.2
    rows = patch_rows(attn, n_prefix)[0, 0]  # (4, 4)
    expected = torch.zeros(n, n)
    for i in range(n):
        expected[i, i], expected[i, (i + 1) % n] = 0.6, 0.4
    assert torch.allclose(rows, expected)


def test_layer_map_and_pool_map_pick_a_head_or_fuse():
    attn = torch.softmax(torch.randn(2, 3, 5, 5), dim=-1)  # (B, Nh, N, N), one prefix token
    query = torch.zeros(2, 5)
    query[:, 0] = 1.0
    for h in range(3):
        assert torch.allclose(layer_map(attn, 1, query, h), attn[:, h, 0, 1:] / attn[:, h, 0, 1:].sum(-1, True))
    assert torch.allclose(layer_map(attn, 1, query, "max"), query_row(attn.amax(1), 1, query))
    pool = torch.softmax(torch.randn(2, 3, 4), dim=-1)  # (B, Nh, h*w)
    assert torch.equal(pool_map(pool, 2), pool[:, 2])
    assert torch.allclose(pool_map(pool, "mean"), pool.mean(1)) and torch.allclose(pool_map(pool, "min"), pool.amin(1))
