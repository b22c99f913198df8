"""Evaluation functions on hand-built cases whose answers are known."""

import pytest
import torch

import vitlab
from vitlab.data import ImageDataset
from vitlab.evaluate import evaluate_model, fewshot, fewshot_accuracy


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
    with pytest.raises(ValueError, match="fewer than 5 shots"):
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
