import math

import pytest
import torch
from torchvision.transforms.v2 import RandAugment, TrivialAugmentWide

from vitlab.data import AugmentConfig
from vitlab.data.augment import BatchParams, crop_flip, erase, mix, sample_params, smooth_one_hot
from vitlab.data.autoaugment import NUM_BINS, OPS, apply_op, apply_ops, magnitude_table, sample_ops


def _ramp(n=2, h=8, w=8):
    return torch.arange(n * 3 * h * w, dtype=torch.int64).view(n, 3, h, w)


def test_crop_with_padding_shifts_content_and_reflects_at_the_border():
    x = _ramp(1)
    pad = 2
    out = crop_flip(x, torch.tensor([[pad + 1, pad - 2]]), torch.tensor([False]), pad)  # down 1, left 2
    assert torch.equal(out[0, :, :7, 2:], x[0, :, 1:, :6])  # out[i, j] = x[i + 1, j - 2]
    assert torch.equal(out[0, :, :7, 0], x[0, :, 1:, 2]) and torch.equal(out[0, :, :7, 1], x[0, :, 1:, 1])  # reflect
    assert torch.equal(out[0, :, 7, 2:], x[0, :, 6, :6])  # row 8 reflects to row 6
    centred = crop_flip(x, torch.tensor([[pad, pad]]), torch.tensor([False]), pad)
    assert torch.equal(centred, x)
    with pytest.raises(ValueError, match="crop_padding=8 must be smaller"):
        crop_flip(x, torch.tensor([[0, 0]]), torch.tensor([False]), 8)


def test_flip_reverses_columns_per_image():
    x = _ramp(2)
    out = crop_flip(x, torch.tensor([[1, 1], [1, 1]]), torch.tensor([True, False]), 1)
    assert torch.equal(out[0], x[0].flip(-1)) and torch.equal(out[1], x[1])


def test_erasing_changes_one_rectangle_only():
    x = torch.randn(2, 3, 10, 12) + 5
    out = erase(x, torch.tensor([True, False]), torch.tensor([[2, 3, 4, 5], [0, 0, 10, 12]]))
    changed = (out != x).any(1)
    expected = torch.zeros(10, 12, dtype=torch.bool)
    expected[2:6, 3:8] = True
    assert torch.equal(changed[0], expected) and (out[0, :, 2:6, 3:8] == 0).all()
    assert torch.equal(out[1], x[1])  # not drawn for this image


def test_label_smoothing_values():
    t = smooth_one_hot(torch.tensor([1, 3]), 5, 0.1)
    assert torch.allclose(t[0], torch.tensor([0.02, 0.92, 0.02, 0.02, 0.02]))
    assert torch.allclose(t.sum(1), torch.ones(2)) and torch.equal(smooth_one_hot(torch.tensor([2]), 4)[0],
                                                                   torch.tensor([0.0, 0, 1, 0]))


def _params(**kw):
    base = dict(crop=None, flip=None, ops=None, mags=None, erase=None, erase_box=None, mix="none", lam=1.0,
                cut_box=(0, 0, 0, 0))
    return BatchParams(**{**base, **kw})


def test_mixup_targets_are_lambda_weighted_one_hots():
    x, xp = torch.full((2, 3, 4, 4), 1.0), torch.full((2, 3, 4, 4), 3.0)
    t, tp = smooth_one_hot(torch.tensor([0, 1]), 3), smooth_one_hot(torch.tensor([2, 2]), 3)
    xm, tm = mix(x, t, xp, tp, _params(mix="mixup", lam=0.3))
    assert torch.allclose(xm, torch.full_like(x, 0.3 * 1 + 0.7 * 3))
    assert torch.allclose(tm, torch.tensor([[0.3, 0, 0.7], [0, 0.3, 0.7]])) and torch.allclose(tm.sum(1), torch.ones(2))


def test_cutmix_lambda_is_the_kept_area_fraction():
    cfg = AugmentConfig(cutmix_alpha=1.0)
    seen = 0
    for s in range(20):
        p = sample_params(cfg, 4, 16, 20, torch.Generator().manual_seed(s))
        assert p.mix == "cutmix"
        x, xp = torch.zeros(4, 3, 16, 20), torch.ones(4, 3, 16, 20)
        t, tp = smooth_one_hot(torch.zeros(4, dtype=torch.long), 2), smooth_one_hot(torch.ones(4, dtype=torch.long), 2)
        xm, tm = mix(x, t, xp, tp, p)
        kept = (xm == 0).float().mean().item()
        assert kept == pytest.approx(p.lam) and torch.allclose(tm[:, 0], torch.full((4,), kept))
        seen += kept < 1
    assert seen > 10  # most draws cut something


def test_sample_params_choice_of_mix():
    both = AugmentConfig(mixup_alpha=0.8, cutmix_alpha=1.0)
    kinds = [sample_params(both, 2, 8, 8, torch.Generator().manual_seed(s)).mix for s in range(200)]
    assert 70 < kinds.count("mixup") < 130 and kinds.count("mixup") + kinds.count("cutmix") == 200
    never = AugmentConfig(mixup_alpha=0.8, mix_prob=0.0)
    assert sample_params(never, 2, 8, 8, torch.Generator().manual_seed(0)).mix == "none"
    a, b = (sample_params(AugmentConfig(auto_augment="trivial", random_erasing=0.5), 8, 8, 8,
                          torch.Generator().manual_seed(5)) for _ in range(2))
    assert torch.equal(a.crop, b.crop) and torch.equal(a.ops, b.ops) and torch.equal(a.erase_box, b.erase_box)


def test_config_validation():
    with pytest.raises(ValueError, match="auto_augment='autoaug' is not one of"):
        AugmentConfig(auto_augment="autoaug")
    with pytest.raises(ValueError, match="random_erasing must be in"):
        AugmentConfig(random_erasing=1.5)
    assert AugmentConfig(label_smoothing=0.1).soft_targets and not AugmentConfig().soft_targets


@pytest.mark.parametrize("policy", ["trivial", "randaugment"])
@pytest.mark.parametrize("op", OPS)
def test_each_auto_augment_op_equals_torchvision(policy, op):
    ref = TrivialAugmentWide() if policy == "trivial" else RandAugment()
    x = torch.randint(0, 256, (6, 3, 20, 24), dtype=torch.uint8)
    x[0] = x[0] // 4 + 100  # low contrast, for AutoContrast and Equalize
    table = magnitude_table(policy, 20, 24)
    for b in (1, 9, 17, 30):
        m = float(table[OPS.index(op), b]) * (-1 if b == 17 and op not in ("Posterize", "Solarize") else 1)
        ours = apply_op(x, op, torch.full((6,), m, dtype=torch.float64))
        theirs = torch.stack([ref._apply_image_or_video_transform(xi, op, m, interpolation=ref.interpolation,
                                                                  fill=ref._fill) for xi in x])
        assert torch.equal(ours, theirs), (op, m)


def test_ops_apply_per_image_with_per_image_magnitudes():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (40, 3, 16, 16), dtype=torch.uint8, generator=g)
    ops, mags = sample_ops("randaugment", 40, 16, 16, g, num_ops=2, magnitude=9)
    out = apply_ops(x, ops, mags)
    ref = RandAugment()
    for i in range(40):
        xi = x[i]
        for j in range(2):
            xi = ref._apply_image_or_video_transform(xi, OPS[ops[i, j]], float(mags[i, j]),
                                                     interpolation=ref.interpolation, fill=ref._fill)
        assert torch.equal(out[i], xi), i


def test_sampled_ops_and_magnitudes_follow_the_policies():
    g = torch.Generator().manual_seed(1)
    ops, mags = sample_ops("trivial", 14000, 32, 32, g)
    counts = ops[:, 0].bincount(minlength=len(OPS))
    assert counts.min() > 850 and counts.max() < 1150  # uniform over the 14 ops
    rot = mags[ops == OPS.index("Rotate")]
    assert rot.min() < -100 and rot.max() > 100 and rot.abs().max() <= 135  # signed, wide range
    ops, mags = sample_ops("randaugment", 1000, 32, 32, g, num_ops=2, magnitude=9)
    table = magnitude_table("randaugment", 32, 32)
    assert torch.equal(mags.abs(), table[ops, 9].abs()) and ops.shape == (1000, 2)
    assert NUM_BINS == 31 and math.isclose(float(table[OPS.index("Rotate"), 30]), 30.0)
