"""Figures of a training run and of an evaluation: the curves of ``metrics.jsonl`` and the confusion matrix."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from vitlab.plots.common import pyplot, save_figure


def read_metrics(path: str | Path) -> list[dict]:
    """The records of a run's ``metrics.jsonl``, one dict per line."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def plot_curves(records: Sequence[dict], path: str | Path) -> Path:
    """Training loss, train/val accuracy and learning rate against the optimizer step (metrics.jsonl records)."""
    plt = pyplot()
    train = [r for r in records if "loss" in r]
    val = [r for r in records if "val_acc" in r]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    steps = [r["step"] for r in train]
    axes[0].plot(steps, [r["loss"] for r in train], label="train loss")
    if val:
        axes[0].plot([r["step"] for r in val], [r["val_loss"] for r in val], "o-", label="val loss")
    axes[0].set_title("loss")
    axes[1].plot(steps, [r["train_acc"] for r in train], label="train (augmented)")
    if val:
        axes[1].plot([r["step"] for r in val], [r["val_acc"] for r in val], "o-", label="val")
    axes[1].set_title("top-1 accuracy")
    axes[1].set_ylim(0, 1)
    axes[2].plot(steps, [r["lr"] for r in train])
    axes[2].set_title("learning rate")
    for ax in axes:
        ax.set_xlabel("optimizer step")
        ax.grid(alpha=0.3)
    axes[0].legend()
    axes[1].legend()
    return save_figure(fig, path)


def plot_confusion(confusion: np.ndarray, class_names: Sequence[str], path: str | Path,
                   title: str = "Confusion matrix (rows: true class, normalised)") -> Path:
    """A (K, K) count matrix, rows normalised to the fraction of each true class."""
    plt = pyplot()
    confusion = np.asarray(confusion, dtype=np.float64)
    rows = confusion / np.maximum(confusion.sum(axis=1, keepdims=True), 1)
    k = len(class_names)
    size = min(max(4.0, 0.45 * k + 2), 24.0)
    fig, ax = plt.subplots(figsize=(size, size))
    im = ax.imshow(rows, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    if k <= 40:
        ax.set_xticks(range(k), class_names, rotation=90)
        ax.set_yticks(range(k), class_names)
    if k <= 20:
        for i in range(k):
            for j in range(k):
                if rows[i, j] >= 0.005:
                    ax.text(j, i, f"{rows[i, j]:.2f}", ha="center", va="center", fontsize=7,
                            color="white" if rows[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    return save_figure(fig, path, dpi=120)
