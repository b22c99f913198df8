"""Evaluation of a classifier on a data set: top-1/top-5, per-class accuracy, confusion matrix."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from vitlab.data import ImageDataset, StreamingDataset, make_loader
from vitlab.inference import prepare_for_inference
from vitlab.model import VisionTransformer


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
        raise ValueError(f"the data set has {len(dataset.class_names)} classes, the model's head only {k}")
    if not names:
        return torch.arange(len(dataset.class_names))
    missing = [c for c in dataset.class_names if c not in names]
    if missing:
        raise ValueError(f"the data set's classes {missing[:5]} are not among the model's classes "
                         f"({', '.join(names[:10])}{', ...' if len(names) > 10 else ''}); was it trained on this data?")
    return torch.tensor([names.index(c) for c in dataset.class_names])


@torch.no_grad()
def evaluate_model(model: VisionTransformer, dataset: ImageDataset | StreamingDataset, *, batch_size: int = 256,
                   device: str | torch.device = "cpu", dtype: str = "float32") -> EvalResult:
    """Accuracy of ``model`` on every image of ``dataset`` (no augmentation; the model's mean/std). ``dtype``
    "bfloat16" measures the fast inference path (vitlab.inference), i.e. its accuracy cost against float32."""
    device = torch.device(device)
    model = model.eval().to(device)
    net = model if dtype == "float32" else prepare_for_inference(model, dtype)
    to_model = class_index_map(model, dataset).to(device)  # dataset label -> model class index
    k = model.config.num_classes
    loader = make_loader(dataset, batch_size, train=False, augment=None, preprocessing=model.preprocessing,
                         num_classes=len(dataset.class_names), device=device)
    confusion = torch.zeros(k, k, dtype=torch.int64)
    top5 = total = 0
    for x, y in loader.epoch(0):
        logits = net(x)
        target = to_model[y]
        pred = logits.argmax(-1)
        confusion += torch.bincount(target * k + pred, minlength=k * k).reshape(k, k).cpu()
        top5 += (logits.topk(min(5, k), dim=-1).indices == target[:, None]).any(-1).sum().item()
        total += y.numel()
    names = model.class_names or list(dataset.class_names) + [f"class_{i}" for i in range(len(dataset.class_names), k)]
    per_class = {names[i]: (confusion[i, i] / confusion[i].sum()).item() for i in to_model.tolist()
                 if confusion[i].sum() > 0}
    return EvalResult(top1=confusion.diag().sum().item() / max(total, 1), top5=top5 / max(total, 1),
                      per_class=per_class, confusion=confusion.numpy(), class_names=list(names), num_images=total)


@torch.no_grad()
def extract_features(model: VisionTransformer, dataset: ImageDataset | StreamingDataset, *, batch_size: int = 256,
                     device: str | torch.device = "cpu") -> torch.Tensor:
    """Frozen pooled representations (N, num_features): the input of the head (``pre_logits=True``)."""
    device = torch.device(device)
    model = model.eval().to(device)
    loader = make_loader(dataset, batch_size, train=False, augment=None, preprocessing=model.preprocessing,
                         num_classes=len(dataset.class_names), device=device)
    return torch.cat([model.forward_head(model.forward_features(x), pre_logits=True).float().cpu()
                      for x, _ in loader.epoch(0)])


def fewshot_accuracy(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor,
                     shots: int, seed: int, l2_reg: float = 1.0) -> float:
    """The ViT paper's linear few-shot evaluation (Sec. 4.1): closed-form regularised least squares from
    frozen features of ``shots`` images per class to targets in {-1, 1}^K, then top-1 on the test set.

    Features are L2-normalised and centred on the few-shot subset; W = X^T (X X^T + l2_reg I)^-1 Y
    (the dual form: the subset has far fewer rows than features).
    """
    k = int(train_y.max()) + 1
    g = torch.Generator().manual_seed(seed)
    idx = []
    for c in range(k):
        members = (train_y == c).nonzero()[:, 0]
        if len(members) < shots:
            raise ValueError(f"class {c} has {len(members)} training images, fewer than {shots} shots")
        idx.append(members[torch.randperm(len(members), generator=g)[:shots]])
    idx = torch.cat(idx)
    x = F.normalize(train_x[idx].double(), dim=-1)
    mean = x.mean(dim=0, keepdim=True)
    x = x - mean
    y = -torch.ones(len(idx), k, dtype=torch.float64)
    y[torch.arange(len(idx)), train_y[idx]] = 1.0
    w = x.T @ torch.linalg.solve(x @ x.T + l2_reg * torch.eye(len(idx), dtype=torch.float64), y)  # (D, K)
    pred = ((F.normalize(test_x.double(), dim=-1) - mean) @ w).argmax(dim=-1)
    return (pred == test_y).double().mean().item()


def fewshot(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor,
            shots: list[int], seeds: int = 5, l2_reg: float = 1.0) -> dict[int, tuple[float, float]]:
    """{shots: (mean, std) of top-1 over ``seeds`` random subsets}."""
    out = {}
    for n in shots:
        accs = torch.tensor([fewshot_accuracy(train_x, train_y, test_x, test_y, n, s, l2_reg) for s in range(seeds)])
        out[n] = (accs.mean().item(), accs.std(unbiased=False).item())
    return out
