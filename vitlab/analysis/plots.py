"""Figures of the analyses, as functions of arrays: each writes a PNG and returns its path."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from vitlab.plot import _pyplot, overlay
from vitlab.plot import save_figure as _save


def _to_image(a: np.ndarray) -> np.ndarray:
    """(C, P, P) -> (P, P, C) or (P, P) rescaled to [0, 1] for display."""
    a = np.moveaxis(a, 0, -1) if a.shape[0] in (1, 3) else a[0]
    a = a.squeeze(-1) if a.ndim == 3 and a.shape[-1] == 1 else a
    lo, hi = a.min(), a.max()
    return (a - lo) / max(hi - lo, 1e-12)


def plot_patch_components(components: np.ndarray, variance: np.ndarray, path: str | Path) -> Path:
    """Figure 7 (left): principal components (k, C, P, P) of the patch-embedding filters, as images."""
    plt = _pyplot()
    k = len(components)
    cols = min(k, 7)
    rows = -(-k // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(1.3 * cols, 1.45 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i in range(k):
        ax = axes.flat[i]
        ax.imshow(_to_image(components[i]), interpolation="nearest", cmap="gray")
        ax.set_title(f"PC{i + 1} {100 * variance[i]:.0f}%", fontsize=6)
    fig.suptitle("RGB embedding filters (principal components)", fontsize=9)
    return _save(fig, path)


def plot_position_similarity(similarity: np.ndarray, path: str | Path) -> Path:
    """Figure 7 (centre): for each grid position (h, w), its cosine similarity to all positions (h, w)."""
    plt = _pyplot()
    h, w = similarity.shape[:2]
    fig, axes = plt.subplots(h, w, figsize=(0.6 * w + 1, 0.6 * h + 0.6), squeeze=False)
    for i in range(h):
        for j in range(w):
            axes[i, j].imshow(similarity[i, j], vmin=-1, vmax=1, cmap="viridis", interpolation="nearest")
            axes[i, j].set_xticks([])
            axes[i, j].set_yticks([])
    fig.suptitle("Position embedding similarity (rows, columns: input patch)", fontsize=9)
    return _save(fig, path)


def plot_attention_distance(distances: np.ndarray, ceiling: float, path: str | Path) -> Path:
    """Figure 7 (right): mean attention distance (L, Nh) of every head against the block, with the uniform
    attention ceiling."""
    plt = _pyplot()
    depth, heads = distances.shape
    fig, ax = plt.subplots(figsize=(4.5, 3.5))
    for h in range(heads):
        ax.scatter(np.arange(depth), distances[:, h], s=12, label=f"head {h}" if heads <= 8 else None)
    ax.axhline(ceiling, color="gray", linestyle="--", linewidth=1, label="uniform attention")
    ax.set_xlabel("block")
    ax.set_ylabel("mean attention distance (pixels)")
    ax.set_ylim(0, ceiling * 1.15)
    ax.legend(fontsize=6)
    return _save(fig, path)


def plot_matrix(matrix: np.ndarray, title: str, xlabel: str, ylabel: str, path: str | Path) -> Path:
    """A heatmap in [0, 1] (CKA between layers), the first row at the bottom."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4.2, 3.6))
    im = ax.imshow(matrix, vmin=0, vmax=1, origin="lower", cmap="magma", aspect="auto")
    fig.colorbar(im, ax=ax)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # block indices
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title(title, fontsize=9)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    return _save(fig, path)


def plot_per_block(series: dict[str, Sequence[float]], ylabel: str, path: str | Path,
                   chance: float | None = None) -> Path:
    """Lines of a value per block (linear probes, soft nearest-neighbour loss, ablation accuracy)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    for name, values in series.items():
        ax.plot(np.arange(len(values)), values, "o-", markersize=3, label=name)
    if chance is not None:
        ax.axhline(chance, color="gray", linestyle="--", linewidth=1, label="chance")
    ax.set_xlabel("block")
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=7)
    return _save(fig, path)


def plot_deletion_insertion(fraction: np.ndarray, curves: dict[str, tuple[np.ndarray, np.ndarray]],
                            path: str | Path) -> Path:
    """Mean deletion and insertion curves (class probability against the fraction of patches) per map."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.2))
    for name, (deletion, insertion) in curves.items():
        axes[0].plot(fraction, deletion, label=name)
        axes[1].plot(fraction, insertion, label=name)
    for ax, title in zip(axes, ("deletion (lower is better)", "insertion (higher is better)"), strict=True):
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("fraction of patches")
        ax.set_ylabel("probability of the class")
        ax.legend(fontsize=7)
    return _save(fig, path)


def plot_saliency_grid(images: np.ndarray, maps: dict[str, np.ndarray], titles: Sequence[str],
                       path: str | Path) -> Path:
    """Rows: images (B, H, W, 3) uint8; columns: the image, then each method's map (B, H, W) in [0, 1]."""
    plt = _pyplot()
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
    return _save(fig, path)
