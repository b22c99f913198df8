"""Figures of saliency maps: maps drawn over their images (attention overlays, ``vitlab attention``'s figure, a
grid of methods) and how faithful the maps are (deletion and insertion curves)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from vitlab.plots.common import overlay, pyplot, save_figure


def plot_attention_overlays(images: np.ndarray, maps: np.ndarray, titles: Sequence[str], path: str | Path,
                            cols: int = 4) -> Path:
    """Images (B, H, W, 3) uint8 beside the same images with an attention map (B, H, W) in [0, 1] overlaid."""
    plt = pyplot()
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
    maps (Nh, H, W) in [0, 1] over the image (``vitlab attention``; built by
    :func:`vitlab.analysis.attention.attention_figure`)."""
    plt = pyplot()
    n_heads = len(head_maps)
    cols = min(max(n_heads, 1), 6)
    rows = -(-n_heads // cols)
    fig = plt.figure(figsize=(2.2 * max(cols, 3), 2.6 * (1 + rows)))
    grid = fig.add_gridspec(1 + rows, max(cols, 2))
    ax = fig.add_subplot(grid[0, 0])
    ax.imshow(image, cmap="gray" if image.ndim == 2 else None, interpolation="nearest")
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


def plot_saliency_grid(images: np.ndarray, maps: dict[str, np.ndarray], titles: Sequence[str],
                       path: str | Path) -> Path:
    """Rows: images (B, H, W, 3) uint8; columns: the image, then each method's map (B, H, W) in [0, 1]."""
    plt = pyplot()
    b, cols = len(images), 1 + len(maps)
    fig, axes = plt.subplots(b, cols, figsize=(1.6 * cols, 1.7 * b), squeeze=False)
    for i in range(b):
        axes[i, 0].imshow(images[i], interpolation="nearest")
        axes[i, 0].set_title(titles[i], fontsize=6)
        for j, (name, m) in enumerate(maps.items(), start=1):
            overlay(axes[i, j], images[i], m[i])
            if i == 0:
                axes[i, j].set_title(name, fontsize=7)
    for ax in axes.flat:
        ax.axis("off")
    return save_figure(fig, path)


def plot_deletion_insertion(fraction: np.ndarray, curves: dict[str, tuple[np.ndarray, np.ndarray]],
                            path: str | Path) -> Path:
    """Mean deletion and insertion curves (class probability against the fraction of patches) per map."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.2))
    for name, (deletion, insertion) in curves.items():
        axes[0].plot(fraction, deletion, label=name)
        axes[1].plot(fraction, insertion, label=name)
    for ax, title in zip(axes, ("deletion (lower is better)", "insertion (higher is better)"), strict=True):
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("fraction of patches")
        ax.set_ylabel("probability of the class")
        ax.legend(fontsize=7)
    return save_figure(fig, path)
