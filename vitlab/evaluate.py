"""Evaluation of a classifier: top-1/top-5, per-class accuracy and confusion matrix on a data set; the one
accuracy count (:func:`count_correct`, :func:`accuracy`) and the one closed-form ridge probe
(:func:`ridge_probe_accuracy`) of frozen features, which the analyses use too; frozen features of a data set
(:func:`extract_features`), the linear few-shot evaluation (:func:`fewshot`) and a logistic-regression linear probe
(:func:`linear_probe`)."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from vitlab.errors import DataError, UsageError
from vitlab.inference import prepare_for_inference
from vitlab.model import VisionTransformer

if TYPE_CHECKING:  # vitlab.data imports torchvision: the analyses import this module without it
    from vitlab.data import ImageDataset, StreamingDataset


@dataclass
class EvalResult:
    top1: float
    top5: float
    per_class: dict[str, float]  # class name -> accuracy on that class
    confusion: np.ndarray  # (K, K) counts, rows: true class, columns: predicted
    class_names: list[str]
    num_images: int

    def to_dict(self) -> dict:
        return {"top1": self.top1, "top5": self.top5, "num_images": self.num_images, "per_class": self.per_class,
                "class_names": self.class_names, "confusion": self.confusion.tolist()}

    def save_json(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(json.dumps(self.to_dict(), indent=1))
        return path


def class_index_map(model: VisionTransformer, dataset: ImageDataset | StreamingDataset) -> torch.Tensor:
    """For each dataset class, the model's output index (by name when the model knows its class names)."""
    names, k = model.class_names, model.config.num_classes
    if len(dataset.class_names) > k:
        raise UsageError(f"the data set has {len(dataset.class_names)} classes, the model's head only {k}")
    if not names:
        return torch.arange(len(dataset.class_names))
    missing = [c for c in dataset.class_names if c not in names]
    if missing:
        raise UsageError(f"the data set's classes {missing[:5]} are not among the model's classes "
                         f"({', '.join(names[:10])}{', ...' if len(names) > 10 else ''}); was it trained on this data?")
    return torch.tensor([names.index(c) for c in dataset.class_names])


def count_correct(logits: torch.Tensor, targets: torch.Tensor, k: int = 1) -> int:
    """How many of the rows of ``logits`` (B, K) have their target among the top ``k`` classes. ``targets``: class
    indices (B,), or soft targets (B, K) (Mixup, CutMix, label smoothing), which count by their largest class."""
    if targets.shape[0] != logits.shape[0]:
        raise UsageError(f"{logits.shape[0]} rows of logits and {targets.shape[0]} targets: expected one per row")
    if targets.ndim == 2:
        targets = targets.argmax(dim=-1)
    if k == 1:
        return int((logits.argmax(dim=-1) == targets).sum().item())
    top = logits.topk(min(k, logits.shape[-1]), dim=-1).indices  # (B, k)
    return int((top == targets[:, None]).any(dim=-1).sum().item())


@torch.no_grad()
def accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 256) -> float:
    """Top-1 of ``model`` (in eval mode; its mode is restored) on images ``x`` (N, C, H, W) already normalised and
    targets ``y`` (N,) or (N, K), in batches of ``batch_size``."""
    if x.shape[0] != y.shape[0]:
        raise UsageError(f"x and y must hold the same examples: {x.shape[0]} images, {y.shape[0]} targets")
    was_training = model.training
    model.eval()
    try:
        correct = sum(count_correct(model(x[i:i + batch_size]), y[i:i + batch_size])
                      for i in range(0, x.shape[0], batch_size))
    finally:
        model.train(was_training)
    return correct / max(x.shape[0], 1)


@torch.no_grad()
def evaluate_model(model: VisionTransformer, dataset: ImageDataset | StreamingDataset, *, batch_size: int = 256,
                   device: str | torch.device = "cpu", dtype: str = "float32") -> EvalResult:
    """Accuracy of ``model`` on every image of ``dataset`` (no augmentation; the model's mean/std). ``dtype``
    "bfloat16" measures the fast inference path (vitlab.inference), i.e. its accuracy cost against float32."""
    from vitlab.data import make_loader

    device = torch.device(device)
    model = model.eval().to(device)
    net = model if dtype == "float32" else prepare_for_inference(model, dtype)
    to_model = class_index_map(model, dataset).to(device)  # dataset label -> model class index
    k = model.config.num_classes
    loader = make_loader(dataset, batch_size, train=False, augment=None, preprocessing=model.preprocessing,
                         num_classes=len(dataset.class_names), device=device)
    confusion = torch.zeros(k, k, dtype=torch.int64)
    top1 = top5 = total = 0
    for x, y in loader.epoch(0):
        logits = net(x)
        target = to_model[y]
        confusion += torch.bincount(target * k + logits.argmax(-1), minlength=k * k).reshape(k, k).cpu()
        top1 += count_correct(logits, target)
        top5 += count_correct(logits, target, k=5)
        total += y.numel()
    names = model.class_names or list(dataset.class_names) + [f"class_{i}" for i in range(len(dataset.class_names), k)]
    per_class = {names[i]: (confusion[i, i] / confusion[i].sum()).item() for i in to_model.tolist()
                 if confusion[i].sum() > 0}
    return EvalResult(top1=top1 / max(total, 1), top5=top5 / max(total, 1),
                      per_class=per_class, confusion=confusion.numpy(), class_names=list(names), num_images=total)


FEATURES = ("head", "cls", "mean", "cls+mean")  # what extract_features returns per image


def pooled_features(model: VisionTransformer, x: torch.Tensor, features: str = "head") -> torch.Tensor:
    """Frozen features of normalised images ``x``: "head", the head's input (``forward_head(pre_logits=True)``);
    "cls", the class token after the final norm; "mean", the mean patch token after it; "cls+mean", the two
    concatenated (DINOv2's linear evaluation, Oquab et al. 2023)."""
    if features not in FEATURES:
        raise UsageError(f"features={features!r} is not one of {', '.join(FEATURES)}")
    if features in ("cls", "cls+mean") and not model.config.class_token:
        raise UsageError(f"features={features!r} needs a class token; this model has none (use 'mean' or 'head')")
    tokens = model.forward_features(x)  # (B, N, D)
    if features == "head":
        return model.forward_head(tokens, pre_logits=True)
    if features == "cls":
        return tokens[:, 0]
    mean = tokens[:, model.config.num_prefix_tokens:].mean(dim=1)  # (B, D)
    return mean if features == "mean" else torch.cat([tokens[:, 0], mean], dim=-1)


@torch.no_grad()
def extract_features(model: VisionTransformer, dataset: ImageDataset | StreamingDataset, *, batch_size: int = 256,
                     device: str | torch.device = "cpu", features: str = "head", dtype: str = "float32"
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Frozen representations (N, F) of every image of ``dataset`` (see :func:`pooled_features` for ``features``),
    in float32, and the dataset labels (N,) of the same images: a streamed file that does not decode is skipped in
    both. ``dtype`` "bfloat16" runs a bf16 copy of the model (several times faster on CPUs with AMX, features off by
    about 1e-2)."""
    from vitlab.data import make_loader
    from vitlab.inference import DTYPES

    if dtype not in DTYPES:
        raise UsageError(f"dtype={dtype!r} is not one of {sorted(DTYPES)}")
    device = torch.device(device)
    model = model.eval().to(device)
    net = model if dtype == "float32" else prepare_for_inference(model, dtype).model  # a cast copy
    loader = make_loader(dataset, batch_size, train=False, augment=None, preprocessing=model.preprocessing,
                         num_classes=len(dataset.class_names), device=device)
    out, labels = [], []
    for x, y in loader.epoch(0):
        out.append(pooled_features(net, x.to(DTYPES[dtype]), features).float().cpu())
        labels.append(y.cpu())
    return torch.cat(out), torch.cat(labels)


def check_class_counts(train_y: torch.Tensor, class_names: Sequence[str], need: int, what: str) -> None:
    """A DataError naming every class of ``class_names`` with fewer than ``need`` training examples in ``train_y``
    (labels 0..K-1): a probe fit without a class could never predict it, and its test images would count as
    wrong without a word."""
    counts = torch.bincount(train_y, minlength=len(class_names)).tolist()
    short = [f"{class_names[c]!r} has {n}" for c, n in enumerate(counts) if n < need]
    if short:
        raise DataError(f"{what} needs {need} training image(s) per class that decode(s); " + ", ".join(short[:5])
                        + (f" and {len(short) - 5} more classes" if len(short) > 5 else "")
                        + ": add images to those classes, or fix or remove the files that do not decode")


def fewshot_indices(train_y: torch.Tensor, shots: int, seed: int, class_names: Sequence[str] | None = None
                    ) -> torch.Tensor:
    """The training examples of one few-shot subset: ``shots`` per class, drawn with ``seed``. ``class_names``
    (default: ``class 0`` ... up to the largest label) are the data set's classes: each needs ``shots`` images."""
    if shots < 1:
        raise UsageError(f"shots must be >= 1 image per class, got {shots}")
    names = list(class_names) if class_names is not None else [f"class {c}" for c in range(int(train_y.max()) + 1)]
    check_class_counts(train_y, names, shots, f"{shots}-shot")
    g = torch.Generator().manual_seed(seed)
    idx = []
    for c in range(len(names)):
        members = (train_y == c).nonzero()[:, 0]
        idx.append(members[torch.randperm(len(members), generator=g)[:shots]])
    return torch.cat(idx)


def fewshot_accuracy(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor,
                     shots: int, seed: int, l2_reg: float = 1.0, class_names: Sequence[str] | None = None) -> float:
    """The ViT paper's linear few-shot evaluation (Sec. 4.1): :func:`ridge_probe_accuracy` from frozen features of
    ``shots`` images per class (the subset :func:`fewshot_indices` draws) to targets in {-1, 1}^K, then top-1 on the
    test set. Only the rows of ``train_x`` in the subset are read. ``class_names``: the data set's K classes
    (default: up to the largest training label)."""
    idx = fewshot_indices(train_y, shots, seed, class_names)
    k = len(class_names) if class_names is not None else int(train_y.max()) + 1
    return ridge_probe_accuracy(train_x[idx], train_y[idx], test_x, test_y, l2_reg, num_classes=k)


def ridge_probe_accuracy(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor,
                         l2_reg: float, num_classes: int | None = None) -> float:
    """Top-1 on (test_x, test_y) of a closed-form ridge regression from features (n, ...) to class targets in
    {-1, 1}^K (the ViT paper's linear evaluation). Features are flattened per example, L2-normalised and centred
    on the training set; ``num_classes`` K defaults to the largest training label + 1.

    W = (X^T X + l2_reg I)^-1 X^T Y (primal), computed as X^T (X X^T + l2_reg I)^-1 Y (dual) when there are
    fewer examples than features: the same W, from the smaller system.
    """
    if not (math.isfinite(l2_reg) and l2_reg > 0):  # 0 makes the system singular, < 0 or NaN meaningless
        raise UsageError(f"l2_reg must be a finite number > 0, got {l2_reg}")
    x = F.normalize(train_x.reshape(train_x.shape[0], -1).double(), dim=-1)
    mean = x.mean(dim=0, keepdim=True)
    x = x - mean  # (n, D)
    n, d = x.shape
    k = int(train_y.max()) + 1 if num_classes is None else num_classes
    y = -torch.ones(n, k, dtype=torch.float64)
    y[torch.arange(n), train_y] = 1.0
    if n < d:
        w = x.T @ torch.linalg.solve(x @ x.T + l2_reg * torch.eye(n, dtype=torch.float64), y)  # (D, K)
    else:
        w = torch.linalg.solve(x.T @ x + l2_reg * torch.eye(d, dtype=torch.float64), x.T @ y)  # (D, K)
    test = F.normalize(test_x.reshape(test_x.shape[0], -1).double(), dim=-1) - mean
    return count_correct(test @ w, test_y) / max(test_y.shape[0], 1)


def fewshot(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor,
            shots: list[int], seeds: int = 5, l2_reg: float = 1.0, class_names: Sequence[str] | None = None
            ) -> dict[int, tuple[float, float]]:
    """{shots: (mean, std) of top-1 over ``seeds`` random subsets}; ``class_names`` as :func:`fewshot_accuracy`."""
    if seeds < 1:
        raise UsageError(f"seeds must be >= 1, got {seeds}")
    out = {}
    for n in shots:
        accs = torch.tensor([fewshot_accuracy(train_x, train_y, test_x, test_y, n, s, l2_reg, class_names)
                             for s in range(seeds)])
        out[n] = (accs.mean().item(), accs.std(unbiased=False).item())
    return out


@dataclass
class ProbeResult:
    """What :func:`linear_probe` returns."""

    top1: float  # on the test features, of the probe refitted on all training features with the chosen l2
    l2: float  # the weight decay chosen on the held-out split
    val_top1: dict[float, float] = field(default_factory=dict)  # l2 -> top-1 on the held-out training split
    fit_seconds: float = 0.0  # choosing l2 and the final fit


def _fit_logistic(x: torch.Tensor, y: torch.Tensor, k: int, l2: float, max_iter: int) -> torch.Tensor:
    """Multinomial logistic regression (weights (F + 1, K), the last row the bias) by full-batch L-BFGS on
    mean cross-entropy + l2 * ||W||^2 (the bias not decayed)."""
    x1 = torch.cat([x, torch.ones(x.shape[0], 1, dtype=x.dtype)], dim=1)  # (n, F + 1)
    w = torch.zeros(x1.shape[1], k, dtype=x.dtype, requires_grad=True)
    opt = torch.optim.LBFGS([w], lr=1.0, max_iter=max_iter, history_size=20, line_search_fn="strong_wolfe",
                            tolerance_grad=1e-6, tolerance_change=1e-9)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(x1 @ w, y) + l2 * w[:-1].pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return w.detach()


def linear_probe(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor, *,
                 l2_grid: tuple[float, ...] = (1e-6, 1e-5, 1e-4, 1e-3), val_fraction: float = 0.1, seed: int = 0,
                 max_iter: int = 500, class_names: Sequence[str] | None = None) -> ProbeResult:
    """A linear probe of frozen features, as the DINOv2 paper evaluates them, simplified: multinomial logistic
    regression on standardised features, its weight decay chosen among ``l2_grid`` on a held-out ``val_fraction``
    of the training set (seeded), then refitted on all of it and scored top-1 on the test set. ``class_names``: the
    data set's classes, each of which needs a training example (default: up to the largest training label)."""
    if not 0 < val_fraction < 1:
        raise UsageError(f"val_fraction must be in (0, 1), got {val_fraction}")
    if len(train_y) < 2:
        raise DataError(f"a linear probe needs at least 2 training images (one held out to choose the weight "
                        f"decay), got {len(train_y)}")
    if class_names is not None:
        check_class_counts(train_y, class_names, 1, "a linear probe")
    start = time.perf_counter()
    mean, std = train_x.mean(dim=0), train_x.std(dim=0).clamp_min(1e-6)
    x, t = (train_x - mean) / std, (test_x - mean) / std
    k = len(class_names) if class_names is not None else int(train_y.max()) + 1
    order = torch.randperm(len(train_y), generator=torch.Generator().manual_seed(seed))
    n_val = max(1, round(val_fraction * len(train_y)))
    val, fit = order[:n_val], order[n_val:]
    val_top1 = {}
    for l2 in l2_grid:
        w = _fit_logistic(x[fit], train_y[fit], k, l2, max_iter)
        val_top1[l2] = count_correct(x[val] @ w[:-1] + w[-1], train_y[val]) / n_val
    best = max(l2_grid, key=lambda l2: (val_top1[l2], l2))  # a tie goes to the stronger decay
    w = _fit_logistic(x, train_y, k, best, max_iter)
    fit_seconds = time.perf_counter() - start
    top1 = count_correct(t @ w[:-1] + w[-1], test_y) / max(len(test_y), 1)
    return ProbeResult(top1=top1, l2=best, val_top1=val_top1, fit_seconds=fit_seconds)
