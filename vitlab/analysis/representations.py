"""Comparing representations, after "Do Vision Transformers See Like Convolutional Neural Networks?" (Raghu et
al. 2021): CKA between layers, linear probes per layer, and the soft nearest-neighbour loss.

CKA (Kornblith et al. 2019) with a linear kernel, estimated over minibatches with the unbiased HSIC estimator
(Song et al. 2012) as in Nguyen et al. 2021: for every minibatch of n >= 4 examples the three HSIC values are
accumulated, and CKA = sum HSIC(K, L) / sqrt(sum HSIC(K, K) * sum HSIC(L, L)). Minibatch CKA needs no
N x N Gram matrix over the whole data set and is invariant to orthogonal transforms and isotropic scaling of
either representation.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch

from vitlab.errors import UsageError
from vitlab.evaluate import accuracy, ridge_probe_accuracy


def hsic_unbiased(k: torch.Tensor, l: torch.Tensor) -> torch.Tensor:  # noqa: E741 (the papers' names)
    """Unbiased HSIC of two (n, n) Gram matrices, n >= 4 (Song et al. 2012, Eq. 5)."""
    n = k.shape[0]
    if n < 4:
        raise UsageError(f"the unbiased HSIC needs at least 4 examples per minibatch, got {n}")
    k = k.clone().fill_diagonal_(0)
    l = l.clone().fill_diagonal_(0)  # noqa: E741
    kl = k @ l
    ones_k, ones_l = k.sum(dim=0), l.sum(dim=0)  # 1^T K, 1^T L
    term = kl.trace() + k.sum() * l.sum() / ((n - 1) * (n - 2)) - 2.0 * (ones_k @ ones_l) / (n - 2)
    return term / (n * (n - 3))


class MinibatchCKA:
    """Linear CKA between every pair of representations in ``a`` and ``b``, accumulated over minibatches.

    ``update(xs, ys)``: lists of (n, ...) features of the same n examples (flattened per example); ``value()``:
    the (len(xs), len(ys)) CKA matrix over everything seen.
    """

    def __init__(self) -> None:
        self.kl: torch.Tensor | None = None
        self.kk: torch.Tensor | None = None
        self.ll: torch.Tensor | None = None

    @torch.no_grad()
    def update(self, xs: list[torch.Tensor], ys: list[torch.Tensor]) -> None:
        grams_x = [_gram(x) for x in xs]
        grams_y = [_gram(y) for y in ys]
        kk = torch.stack([hsic_unbiased(g, g) for g in grams_x])
        ll = torch.stack([hsic_unbiased(g, g) for g in grams_y])
        kl = torch.stack([torch.stack([hsic_unbiased(gx, gy) for gy in grams_y]) for gx in grams_x])
        if self.kl is None:
            self.kl, self.kk, self.ll = kl, kk, ll
        else:
            self.kl, self.kk, self.ll = self.kl + kl, self.kk + kk, self.ll + ll

    def value(self) -> torch.Tensor:
        if self.kl is None:
            raise UsageError("no minibatch seen yet: call update() first")
        return self.kl / (self.kk[:, None] * self.ll[None, :]).clamp_min(1e-30).sqrt()


def _gram(x: torch.Tensor) -> torch.Tensor:
    x = x.reshape(x.shape[0], -1).double()
    return x @ x.T


def _minibatch_cka(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor], batch_size: int) -> torch.Tensor:
    """The (len(a), len(b)) CKA matrix over minibatches of ``batch_size`` rows (a last one under 4 is skipped)."""
    n = a[0].shape[0]
    acc = MinibatchCKA()
    for i in range(0, n - 3, batch_size):
        if min(i + batch_size, n) - i >= 4:
            acc.update([t[i:i + batch_size] for t in a], [t[i:i + batch_size] for t in b])
    return acc.value()


def cka(x: torch.Tensor, y: torch.Tensor, batch_size: int | None = None) -> float:
    """Linear CKA of two representations (N, ...) of the same N examples, over minibatches of ``batch_size``
    (default: one batch of all N)."""
    if x.shape[0] != y.shape[0]:
        raise UsageError(f"x and y must hold the same examples: {x.shape[0]} vs {y.shape[0]} rows")
    return _minibatch_cka([x], [y], batch_size or x.shape[0])[0, 0].item()


def soft_nearest_neighbor_loss(x: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0) -> float:
    """Soft nearest-neighbour loss (Frosst et al. 2019) of features (N, ...) with labels (N,): low when
    same-class points are closer than other points, at the scale ``temperature`` (squared Euclidean distance).

    -1/N sum_i log( sum_{j != i, y_j = y_i} exp(-d_ij / T) / sum_{k != i} exp(-d_ik / T) ).
    """
    if temperature <= 0:
        raise UsageError(f"temperature must be > 0, got {temperature}")
    x = x.reshape(x.shape[0], -1).double()
    d = torch.cdist(x, x).square()
    logits = -d / temperature
    eye = torch.eye(x.shape[0], dtype=torch.bool, device=x.device)
    logits = logits.masked_fill(eye, float("-inf"))
    same = (labels[:, None] == labels[None, :]) & ~eye
    if not same.any(dim=1).all():
        raise UsageError("every example needs another example of its class")
    num = torch.logsumexp(logits.masked_fill(~same, float("-inf")), dim=1)
    den = torch.logsumexp(logits, dim=1)
    return (den - num).mean().item()


def linear_probe_accuracy(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor,
                          l2_reg: float = 1e-3) -> float:
    """Top-1 of a closed-form ridge-regression probe from features to {-1, 1} class targets (the ViT paper's linear
    evaluation, :func:`vitlab.evaluate.ridge_probe_accuracy`), the penalty ``l2_reg`` per training example."""
    k = int(max(train_y.max(), test_y.max())) + 1
    return ridge_probe_accuracy(train_x, train_y, test_x, test_y, l2_reg * train_x.shape[0], num_classes=k)


@torch.no_grad()
def block_representations(model: torch.nn.Module, x: torch.Tensor, batch_size: int = 256
                          ) -> dict[str, list[torch.Tensor]]:
    """Per-block representations of images ``x`` (B, C, H, W), on the CPU in fp32, as lists with one (B, D_l)
    tensor per block l: ``"mean"``, the mean of the patch tokens, and ``"cls"``, the class token (absent for a
    model without one). Block l's output is the residual stream after it (before the final LayerNorm), as Raghu
    et al. probe it; read through ``forward_intermediates``, so a ResNet baseline (vitlab.cnn) gives its residual
    blocks' outputs averaged over the positions, whose width D_l changes from stage to stage.
    """
    was_training = model.training
    model.eval()
    cls, mean = [], []  # per batch: one (b, D_l) tensor per block
    has_cls = model.config.class_token
    try:
        for i in range(0, x.shape[0], batch_size):
            out = model.forward_intermediates(x[i:i + batch_size], layers=None)
            p = out.num_prefix_tokens
            tokens = [out.tokens[k] for k in sorted(out.tokens)]  # L x (b, N, D_l)
            mean.append([t[:, p:].mean(dim=1).float().cpu() for t in tokens])
            if has_cls:
                cls.append([t[:, 0].float().cpu() for t in tokens])
    finally:
        model.train(was_training)
    reps = {"mean": [torch.cat(block) for block in zip(*mean, strict=True)]}
    if has_cls:
        reps["cls"] = [torch.cat(block) for block in zip(*cls, strict=True)]
    return reps


def probe_blocks(train: dict[str, torch.Tensor], train_y: torch.Tensor, test: dict[str, torch.Tensor],
                 test_y: torch.Tensor, l2_reg: float = 1e-3) -> dict[str, list[float]]:
    """Linear-probe top-1 of every block's representations (from :func:`block_representations`), per kind."""
    return {kind: [linear_probe_accuracy(train[kind][i], train_y, test[kind][i], test_y, l2_reg)
                   for i in range(len(train[kind]))] for kind in train}


def cka_matrix(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor], batch_size: int = 128) -> torch.Tensor:
    """Minibatch CKA between every block of ``a`` and of ``b`` (sequences of (n, ...) features of the same n
    examples, e.g. ``block_representations(...)["mean"]``): a (len(a), len(b)) matrix."""
    return _minibatch_cka(a, b, batch_size).float()


@contextlib.contextmanager
def _without_residual(block: torch.nn.Module) -> Iterator[None]:
    """Block ``block`` without its residual connections for the duration (ViTConfig.no_residual_blocks)."""
    kept = block.residual
    block.residual = False
    try:
        yield
    finally:
        block.residual = kept


@torch.no_grad()
def residual_ablation_cka(model: torch.nn.Module, x: torch.Tensor, batch_size: int = 128,
                          intact: Sequence[torch.Tensor] | None = None) -> torch.Tensor:
    """How removing the residual connections of one block changes every block's representation: entry (i, j)
    is the CKA between block j's mean patch token in the intact model and with block i's residuals removed
    (1 = unchanged). Blocks before i are unchanged by construction. ``intact``: the model's own
    ``block_representations(model, x)["mean"]`` when already computed."""
    if intact is None:
        intact = block_representations(model, x)["mean"]
    rows = []
    for blk in model.blocks:
        with _without_residual(blk):
            ablated = block_representations(model, x)["mean"]
        rows.append(torch.stack([cka_matrix([a], [b], batch_size)[0, 0] for a, b in zip(intact, ablated,
                                                                                          strict=True)]))
    return torch.stack(rows)


@torch.no_grad()
def residual_ablation(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 256
                      ) -> list[float]:
    """Top-1 on (x, y) with the residual connections of block i removed at inference, for every i (the trained
    weights unchanged; train with ``no_residual_blocks`` for the trained ablation of Raghu et al.)."""
    accs = []
    for blk in model.blocks:
        with _without_residual(blk):
            accs.append(accuracy(model, x, y, batch_size))
    return accs
