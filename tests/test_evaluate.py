"""Evaluation functions on hand-built cases whose answers are known."""

import pytest
import torch

import vitlab
from vitlab.data import ImageDataset
from vitlab.evaluate import (
    accuracy,
    count_correct,
    evaluate_model,
    extract_features,
    fewshot,
    fewshot_accuracy,
    fewshot_indices,
    linear_probe,
    pooled_features,
    ridge_probe_accuracy,
)


def _separable(n_per_class=40, k=4, d=32, noise=0.05, seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(k, d, generator=g) * 3
    y = torch.arange(k).repeat_interleave(n_per_class)
    return centres[y] + noise * torch.randn(len(y), d, generator=g), y


def test_fewshot_on_separable_features_is_perfect_and_on_noise_near_chance():
    train_x, train_y = _separable(seed=0)
    test_x, test_y = _separable(seed=0)  # same centres (same generator seed), fresh noise below
    test_x = test_x + 0.05 * torch.randn_like(test_x)
    assert fewshot_accuracy(train_x, train_y, test_x, test_y, shots=1, seed=0) == 1.0
    noise_x = torch.randn(400, 64)
    noise_y = torch.arange(4).repeat(100)  # every class in both halves
    res = fewshot(noise_x[:200], noise_y[:200], noise_x[200:], noise_y[200:], shots=[5, 10], seeds=5)
    for mean, std in res.values():
        assert 0.1 < mean < 0.45 and std >= 0.0


def test_fewshot_needs_enough_images_per_class():
    x, y = _separable(n_per_class=3)
    with pytest.raises(ValueError, match="5-shot needs 5 training image"):
        fewshot_accuracy(x, y, x, y, shots=5, seed=0)


def test_evaluate_model_counts_a_model_that_always_predicts_one_class():
    model = vitlab.create_model("Ti/4@32", num_classes=3, embed_dim=32, depth=1, num_heads=2, mlp_dim=32)
    with torch.no_grad():
        model.head.bias.copy_(torch.tensor([0.0, 5.0, 0.0]))  # zero head weights: always class 1
    labels = torch.tensor([0, 1, 1, 2, 2, 2])
    data = ImageDataset(torch.zeros(6, 3, 32, 32, dtype=torch.uint8), labels, ["a", "b", "c"])
    res = evaluate_model(model, data, batch_size=4)
    assert res.top1 == pytest.approx(2 / 6) and res.top5 == 1.0
    assert res.per_class == {"a": 0.0, "b": 1.0, "c": 0.0}
    assert res.confusion.tolist() == [[0, 1, 0], [0, 2, 0], [0, 3, 0]]


def test_evaluate_model_maps_classes_by_name_and_rejects_unknown_ones():
    model = vitlab.create_model("Ti/4@32", num_classes=2, embed_dim=32, depth=1, num_heads=2, mlp_dim=32)
    model.class_names = ["dog", "cat"]
    with torch.no_grad():
        model.head.bias.copy_(torch.tensor([5.0, 0.0]))  # always "dog"
    data = ImageDataset(torch.zeros(2, 3, 32, 32, dtype=torch.uint8), torch.tensor([0, 1]), ["cat", "dog"])
    res = evaluate_model(model, data)
    assert res.top1 == 0.5 and res.per_class == {"cat": 0.0, "dog": 1.0}
    other = ImageDataset(data.images, data.labels, ["cat", "horse"])
    with pytest.raises(ValueError, match=r"\['horse'\] are not among the model's classes"):
        evaluate_model(model, other)


def test_count_correct_with_class_indices_soft_targets_and_top_k():
    logits = torch.tensor([[3.0, 2.0, 1.0], [0.0, 1.0, 2.0], [5.0, 0.0, 4.0]])  # predicted: 0, 2, 0
    y = torch.tensor([0, 1, 2])
    assert count_correct(logits, y) == 1
    assert count_correct(logits, y, k=2) == 3  # the targets of rows 1 and 2 are their second classes
    assert count_correct(logits[:2, :2], y[:2], k=5) == 2  # k beyond the classes: every class counts
    with pytest.raises(ValueError, match=r"3 rows of logits and 2 targets"):
        count_correct(logits, y[:2])
    soft = torch.tensor([[0.9, 0.05, 0.05], [0.1, 0.6, 0.3], [0.4, 0.0, 0.6]])  # Mixup-like: argmax 0, 1, 2
    assert count_correct(logits, soft) == 1


def test_accuracy_in_batches_in_eval_mode():
    model = vitlab.create_model("Ti/4@32", num_classes=3, embed_dim=32, depth=1, num_heads=2, mlp_dim=32,
                                dropout=0.5).train()
    x = torch.randn(7, 3, 32, 32)
    with torch.no_grad():
        y = model.eval()(x).argmax(-1)
    y[:2] = (y[:2] + 1) % 3  # two of seven wrong
    model.train()
    assert accuracy(model, x, y, batch_size=3) == pytest.approx(5 / 7)  # eval mode: no dropout
    assert model.training  # restored
    with pytest.raises(ValueError, match="7 images, 6 targets"):
        accuracy(model, x, y[:6])


def _ridge_by_hand(train_x, train_y, test_x, l2_reg, k):
    """The primal solution written out: W = (X^T X + l2_reg I)^-1 X^T Y on normalised, centred features."""
    x = torch.nn.functional.normalize(train_x.double(), dim=-1)
    mean = x.mean(0, keepdim=True)
    x = x - mean
    y = torch.full((len(train_y), k), -1.0, dtype=torch.float64).scatter_(1, train_y[:, None], 1.0)
    w = torch.linalg.inv(x.T @ x + l2_reg * torch.eye(x.shape[1], dtype=torch.float64)) @ x.T @ y
    return ((torch.nn.functional.normalize(test_x.double(), dim=-1) - mean) @ w).argmax(-1)


@pytest.mark.parametrize("features", [10, 60], ids=["primal (n >= D)", "dual (n < D)"])
def test_ridge_probe_solves_the_ridge_regression_in_either_form(features):
    g = torch.Generator().manual_seed(0)
    train_x, test_x = torch.randn(40, features, generator=g), torch.randn(50, features, generator=g)
    train_y, test_y = torch.arange(40) % 4, torch.randint(0, 4, (50,), generator=g)  # noise: near chance
    expected = (_ridge_by_hand(train_x, train_y, test_x, 0.5, 4) == test_y).double().mean().item()
    assert ridge_probe_accuracy(train_x, train_y, test_x, test_y, l2_reg=0.5) == pytest.approx(expected)


def test_linear_probe_separates_separable_features_and_picks_weight_decay_on_held_out_data():
    train_x, train_y = _separable(n_per_class=60, noise=0.8, seed=1)
    test_x, test_y = _separable(n_per_class=30, noise=0.8, seed=1)
    result = linear_probe(train_x, train_y, test_x + 0.1 * torch.randn_like(test_x), test_y)
    assert result.top1 >= 0.95 and result.l2 in result.val_top1 and len(result.val_top1) == 4
    assert result.val_top1[result.l2] == max(result.val_top1.values())
    noise = linear_probe(torch.randn(200, 16), torch.arange(4).repeat(50), torch.randn(200, 16),
                         torch.arange(4).repeat(50))
    assert noise.top1 < 0.45  # chance is 0.25: nothing to learn from noise


def test_fewshot_indices_draw_shots_per_class_reproducibly():
    y = torch.arange(3).repeat_interleave(10)
    idx = fewshot_indices(y, 4, seed=2)
    assert torch.equal(idx, fewshot_indices(y, 4, seed=2)) and len(idx.unique()) == 12
    assert torch.equal(torch.bincount(y[idx]), torch.tensor([4, 4, 4]))


def test_pooled_features_and_bf16_extraction():
    model = vitlab.create_model("Ti/4@32", num_classes=3, depth=1, embed_dim=16, num_heads=2, mlp_dim=32,
                                num_register_tokens=2).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        tokens = model.forward_features(x)
        both = pooled_features(model, x, "cls+mean")
    torch.testing.assert_close(both, torch.cat([tokens[:, 0], tokens[:, 3:].mean(1)], dim=-1))  # registers left out
    torch.testing.assert_close(pooled_features(model, x, "head"), tokens[:, 0])
    with pytest.raises(ValueError, match="needs a class token"):
        pooled_features(vitlab.create_model("Ti/4@32", depth=1, pool="gap", class_token=False), x, "cls")
    data = ImageDataset(torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8), torch.arange(3).repeat(2),
                        ["a", "b", "c"])
    f32, labels = extract_features(model, data, features="cls+mean")
    bf16, _ = extract_features(model, data, features="cls+mean", dtype="bfloat16")
    assert f32.shape == (6, 32) and f32.dtype == bf16.dtype == torch.float32 and torch.equal(labels, data.labels)
    assert 0 < (f32 - bf16).abs().max() < 0.1
