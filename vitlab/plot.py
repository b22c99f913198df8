"""Figures as functions of arrays: each takes plain data and a path, writes a PNG and returns the path.

matplotlib runs with the non-interactive Agg backend, so these work on a server without a display.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str | Path, dpi: int = 110) -> Path:
    """Lay out, write and close ``fig``; the folder is made if missing."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    _pyplot().close(fig)
    return path


def overlay(ax, image: np.ndarray, saliency: np.ndarray) -> None:
    """Draw ``image`` (H, W, 3) with a map in [0, 1] over it, half transparent (every attention figure)."""
    ax.imshow(image, interpolation="nearest")
    ax.imshow(saliency, cmap="jet", alpha=0.5, vmin=0, vmax=1, interpolation="bilinear")


def plot_confusion(confusion: np.ndarray, class_names: Sequence[str], path: str | Path,
                   title: str = "Confusion matrix (rows: true class, normalised)") -> Path:
    """A (K, K) count matrix, rows normalised to the fraction of each true class."""
    plt = _pyplot()
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


def read_metrics(path: str | Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def plot_curves(records: Sequence[dict], path: str | Path) -> Path:
    """Training loss, train/val accuracy and learning rate against the optimizer step (metrics.jsonl records)."""
    plt = _pyplot()
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


def plot_attention_overlays(images: np.ndarray, maps: np.ndarray, titles: Sequence[str], path: str | Path,
                            cols: int = 4) -> Path:
    """Images (B, H, W, 3) uint8 beside the same images with an attention map (B, H, W) in [0, 1] overlaid."""
    plt = _pyplot()
    b = len(images)
    cols = min(cols, b)
    rows = -(-b // cols)
    fig, axes = plt.subplots(rows, 2 * cols, figsize=(3.2 * cols, 1.7 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i in range(b):
        r, c = divmod(i, cols)
        axes[r, 2 * c].imshow(images[i], interpolation="nearest")
        axes[r, 2 * c].set_title(titles[i], fontsize=8)
        overlay(axes[r, 2 * c + 1], images[i], maps[i])
        axes[r, 2 * c + 1].set_title("attention", fontsize=8)
    return save_figure(fig, path)


def plot_attention_figure(image: np.ndarray, saliency: np.ndarray, head_maps: np.ndarray, title: str,
                          map_title: str, heads_title: str, path: str | Path) -> Path:
    """One image (H, W, 3) uint8, the image with ``saliency`` (H, W) in [0, 1] overlaid, and a grid of per-head
    maps (Nh, H, W) in [0, 1] over the image (``vitlab attention``)."""
    plt = _pyplot()
    n_heads = len(head_maps)
    cols = min(max(n_heads, 1), 6)
    rows = -(-n_heads // cols)
    fig = plt.figure(figsize=(2.2 * max(cols, 3), 2.6 * (1 + rows)))
    grid = fig.add_gridspec(1 + rows, max(cols, 2))
    ax = fig.add_subplot(grid[0, 0])
    ax.imshow(image, interpolation="nearest")
    ax.set_title(title, fontsize=8)
    ax = fig.add_subplot(grid[0, 1])
    overlay(ax, image, saliency)
    ax.set_title(map_title, fontsize=8)
    for i in range(n_heads):
        ax = fig.add_subplot(grid[1 + i // cols, i % cols])
        overlay(ax, image, head_maps[i])
        ax.set_title(f"{heads_title}, head {i}", fontsize=7)
    for ax in fig.axes:
        ax.axis("off")
    return save_figure(fig, path)


def plot_attention_cost(pixels: Sequence[int], msa: Sequence[float], wmsa: Sequence[float], window: int,
                        path: str | Path) -> Path:
    """Self-attention multiply-adds against the number of pixels: global MSA (quadratic) and W-MSA (linear)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot(pixels, np.asarray(msa) / 1e9, "o-", label="global MSA (ViT)")
    ax.plot(pixels, np.asarray(wmsa) / 1e9, "s-", label=f"W-MSA, window {window} (Swin)")
    ax.set_xlabel("pixels per image")
    ax.set_ylabel("self-attention GMACs, all blocks")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.legend()
    ax.grid(alpha=0.3)
    return save_figure(fig, path)
