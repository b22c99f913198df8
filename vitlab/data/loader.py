"""Batches for training and evaluation.

:class:`BatchLoader` serves an in-memory :class:`ImageDataset` from the device: the uint8 images move to the
device once, and each batch is gathered and augmented there (:mod:`vitlab.data.augment`), so the data pipeline is
never the bottleneck. :func:`make_stream_loader` serves a :class:`StreamingDataset` through a torch DataLoader with
workers and ``torchvision.transforms.v2``.

Determinism (exact resume). The order of epoch ``e`` is ``randperm`` from a generator seeded by ``(seed, e)``; every
random choice of step ``s`` comes from a generator seeded by ``(seed, e, s)`` only. So ``epoch(e, start_step=k)``
yields exactly the batches ``k, k+1, ...`` of ``epoch(e)``, whatever came before.

Several processes (``world_size`` W > 1): step ``s`` has one global batch of ``batch_size * W`` images and rank
``r`` gets its rows ``[r * batch_size, (r + 1) * batch_size)``, augmented exactly as the single-process loader with
``batch_size * W`` augments them (the random choices are drawn for the whole global batch, then sliced; Mixup and
CutMix partners may sit on another rank and are recomputed locally).

Targets. Training with Mixup, CutMix or label smoothing configured yields float32 (B, num_classes) probabilities
at every step (also when ``mix_prob`` left a batch unmixed); otherwise, and always for evaluation, int64 (B,)
class indices.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Iterator, Sequence
from typing import NamedTuple

import torch
from torch.utils.data import default_collate

from vitlab.data.augment import AugmentConfig, augment_rows, mix, sample_params, smooth_one_hot
from vitlab.data.datasets import ImageDataset, derive_seed, generator
from vitlab.data.folder import StreamingDataset, UndecodableImage, report_bad
from vitlab.errors import DataError
from vitlab.preprocess import Preprocessing


def _rank_rows(n: int, batch_size: int, rank: int) -> tuple[int, int]:
    return min(rank * batch_size, n), min((rank + 1) * batch_size, n)


def _check_common(batch_size: int, rank: int, world_size: int, mean: Sequence[float], std: Sequence[float],
                  channels: int) -> None:
    if batch_size < 1:
        raise DataError(f"batch_size must be >= 1, got {batch_size}")
    if world_size < 1 or not 0 <= rank < world_size:
        raise DataError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
    if len(mean) != channels or len(std) != channels or min(std) <= 0:
        raise DataError(f"mean and std need {channels} values each, one per image channel (std > 0), got "
                         f"{tuple(mean)} and {tuple(std)}")


class BatchLoader:
    """Batches of an in-memory data set, gathered and augmented on ``device``.

    ``train=True``: a fresh permutation per epoch and ``augment`` (None: no augmentation), the last partial
    batch dropped unless ``drop_last=False``. ``train=False``: the data set in order, exactly once, no
    augmentation, the last batch kept (ranks whose share of the last batch is empty yield an empty batch, so every
    rank runs the same number of steps).

    Yields ``(x, y)``: x float32 (B, 3, H, W) normalised with mean/std, on ``device``; y int64 (B,), or float32
    (B, num_classes) when ``train`` and ``augment`` has Mixup, CutMix or label smoothing (see the module docstring).
    ``eval_resize`` (``train=False`` only): a Preprocessing whose img_size differs from the images' own, e.g. 32 px
    CIFAR images for a 224 px model: each batch is resized and centre-cropped to it as ``Preprocessing.transform``
    does (shorter side to img_size / crop_pct, antialiased), on ``device``.
    """

    def __init__(self, dataset: ImageDataset, batch_size: int, *, train: bool, augment: AugmentConfig | None,
                 mean: Sequence[float], std: Sequence[float], num_classes: int, seed: int = 0,
                 device: str | torch.device = "cpu", drop_last: bool | None = None, rank: int = 0,
                 world_size: int = 1, eval_resize: Preprocessing | None = None) -> None:
        if not isinstance(dataset, ImageDataset):
            raise TypeError(f"BatchLoader needs an ImageDataset (in memory), got {type(dataset).__name__}; "
                            "stream larger images with make_stream_loader")
        _check_common(batch_size, rank, world_size, mean, std, channels=dataset.images.shape[1])
        if len(dataset) and int(dataset.labels.max()) >= num_classes:
            raise DataError(f"num_classes={num_classes} but the data set has label {int(dataset.labels.max())}")
        self.device = torch.device(device)
        self.images = dataset.images.to(self.device)
        self.labels = dataset.labels.to(self.device)
        self.num_classes = num_classes
        self.batch_size, self.rank, self.world_size, self.seed = batch_size, rank, world_size, seed
        self.train = train
        self.augment = (augment or AugmentConfig(crop_padding=0, hflip=False)) if train else None
        self.drop_last = train if drop_last is None else drop_last
        self.normalization = Preprocessing(mean=mean, std=std)  # only its normalize() is used here
        same = eval_resize is None or tuple(eval_resize.img_size) == tuple(dataset.images.shape[2:])
        self.eval_resize = None if train or same else eval_resize
        if len(self) == 0:
            raise DataError(f"the data set ({len(dataset)} images) is smaller than one global batch of "
                             f"{batch_size} x {world_size} process(es) and drop_last is set")

    @property
    def global_batch_size(self) -> int:
        return self.batch_size * self.world_size

    def __len__(self) -> int:
        n, g = self.images.shape[0], self.global_batch_size
        return n // g if self.drop_last else -(-n // g)

    @property
    def soft_targets(self) -> bool:
        return self.augment is not None and self.augment.soft_targets

    def order(self, epoch: int) -> torch.Tensor:
        """The sample order of ``epoch`` (CPU int64): a seeded permutation when training, else 0..N-1."""
        n = self.images.shape[0]
        return torch.randperm(n, generator=generator("order", self.seed, epoch)) if self.train else torch.arange(n)

    def epoch(self, epoch: int, start_step: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The batches of ``epoch`` from step ``start_step`` on (see the class docstring)."""
        if not 0 <= start_step <= len(self):
            raise DataError(f"start_step must be in [0, {len(self)}], got {start_step}")
        order = self.order(epoch)
        gb = self.global_batch_size
        for step in range(start_step, len(self)):
            idx = order[step * gb:(step + 1) * gb]
            yield self._batch(idx, epoch, step)

    def _batch(self, idx: torch.Tensor, epoch: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        n = idx.shape[0]
        lo, hi = _rank_rows(n, self.batch_size, self.rank)
        cfg = self.augment
        if cfg is None:
            mine = idx[lo:hi].to(self.device)
            x = self.images[mine].float() / 255.0
            if self.eval_resize is not None:
                x = resize_and_crop(x, self.eval_resize)
            return self.normalization.normalize(x), self.labels[mine]
        h, w = self.images.shape[2:]
        params = sample_params(cfg, n, h, w, generator("augment", self.seed, epoch, step))
        mixed = params.mix != "none"
        # With mixing, row i needs row i - 1 (its partner) too: compute rows lo-1 .. hi-1 (mod n).
        rows = torch.arange(lo - 1 if mixed else lo, hi) % max(n, 1)
        dev_idx = idx[rows].to(self.device)
        x = augment_rows(self.images[dev_idx], rows, params, cfg, self.normalization)
        y = self.labels[dev_idx]
        if not cfg.soft_targets:
            return x, y
        t = smooth_one_hot(y, self.num_classes, cfg.label_smoothing)
        if not mixed:
            return x, t
        return mix(x[1:], t[1:], x[:-1], t[:-1], params)


def resize_and_crop(x: torch.Tensor, preprocessing: Preprocessing) -> torch.Tensor:
    """Float images (B, C, H, W) in [0, 1] -> (B, C, h, w) at ``preprocessing.img_size``, as its transform() does a
    PIL image: the shorter side to img_size / crop_pct (antialiased), then a centre crop."""
    h, w = preprocessing.img_size
    scale = max(h, w) / preprocessing.crop_pct / min(x.shape[-2:])
    size = [max(h, int(x.shape[-2] * scale)), max(w, int(x.shape[-1] * scale))]
    mode = preprocessing.interpolation
    x = torch.nn.functional.interpolate(x, size=size, mode=mode, antialias=mode != "nearest",
                                        **({} if mode == "nearest" else {"align_corners": False}))
    top, left = (size[0] - h) // 2, (size[1] - w) // 2
    return x[..., top:top + h, left:left + w].clamp(0, 1)  # (B, C, h, w)


def _stream_transform(train: bool, preprocessing, augment: AugmentConfig | None):
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import v2 as T

    if not train:
        return preprocessing.transform()  # resize the shorter side, centre crop, normalise
    cfg = augment or AugmentConfig(crop_padding=0, hflip=False)
    mode = InterpolationMode(preprocessing.interpolation)
    ops = [T.ToImage(), T.RandomResizedCrop(preprocessing.img_size, interpolation=mode, antialias=True)]
    if cfg.hflip:
        ops.append(T.RandomHorizontalFlip())
    if cfg.auto_augment == "trivial":
        ops.append(T.TrivialAugmentWide())
    elif cfg.auto_augment == "randaugment":
        ops.append(T.RandAugment(num_ops=cfg.randaugment_n, magnitude=cfg.randaugment_m))
    ops += [T.ToDtype(torch.float32, scale=True), T.Normalize(preprocessing.mean, preprocessing.std)]
    if cfg.random_erasing > 0:
        ops.append(T.RandomErasing(p=cfg.random_erasing, value=0))
    return T.Compose(ops)


class _Skipped(NamedTuple):
    """What a worker returns in place of a file that does not decode (the file is skipped, never replaced)."""

    path: str
    reason: str


class _Warned(NamedTuple):
    """An item and the warnings its decoding raised (message, category): a worker process has no way to show them
    to the user (with the spawn start method, not even its own stderr), so the main process shows them."""

    item: tuple[torch.Tensor, int] | _Skipped
    warned: list[tuple[str, type[Warning]]]


def _collate_decoded(items: list) -> tuple[torch.Tensor | None, torch.Tensor | None, list[_Skipped],
                                           list[tuple[str, type[Warning]]]]:
    """Stack the decoded ``(image, label)`` items of a batch; ``(None, None, skipped, warned)`` when none decoded.
    ``warned``: the warnings raised while decoding the batch, to be shown by the main process."""
    warned = [w for it in items if isinstance(it, _Warned) for w in it.warned]
    items = [it.item if isinstance(it, _Warned) else it for it in items]
    kept = [it for it in items if not isinstance(it, _Skipped)]
    skipped = [it for it in items if isinstance(it, _Skipped)]
    if not kept:
        return None, None, skipped, warned
    x, y = default_collate(kept)
    return x, y, skipped, warned


def _sendable(category: type[Warning]) -> type[Warning]:
    """A warning category that pickles by reference (a module-level class), else UserWarning."""
    module = sys.modules.get(category.__module__)
    return category if getattr(module, category.__qualname__, None) is category else UserWarning


class _Seeded(torch.utils.data.Dataset):
    """Applies the transform under a per-(seed, epoch, index) RNG state: the same image, the same augmentation.
    A file that does not decode comes back as :class:`_Skipped` (or raises when the data set is ``strict``)."""

    def __init__(self, dataset: StreamingDataset, transform, seed: int, epoch: int) -> None:
        self.dataset, self.transform, self.seed, self.epoch = dataset, transform, seed, epoch

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int] | _Skipped | _Warned:
        with warnings.catch_warnings(record=True) as caught:  # shown by the main process (see _Warned)
            warnings.simplefilter("always")
            item = self._decode(i)
        # PIL's notes on a damaged file's metadata stay out, as the command line filters them (vitlab.cli.main)
        caught = [w for w in caught if f"{os.sep}PIL{os.sep}" not in w.filename or not issubclass(w.category,
                                                                                                  UserWarning)]
        return _Warned(item, [(str(w.message), _sendable(w.category)) for w in caught]) if caught else item

    def _decode(self, i: int) -> tuple[torch.Tensor, int] | _Skipped:
        try:
            img, label = self.dataset.load(i)
        except UndecodableImage as e:
            if self.dataset.strict:  # a plain ValueError: a worker's exception is rebuilt from its message
                raise DataError(str(e)) from e
            return _Skipped(str(e.path), e.reason)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed("stream", self.seed, self.epoch, i))
            return self.transform(img), label


class StreamLoader:
    """One epoch of a :class:`StreamingDataset`; iterate it for ``(x, y)`` as :class:`BatchLoader` yields them.

    Files that do not decode are left out of their batch (a batch none of whose files decodes is not yielded);
    after the epoch, or where the consumer stops early (a run that ends mid-epoch), one warning gives their count
    and names a few, and ``skipped`` lists them. Warnings raised while decoding, in the worker processes too, are
    raised again in this process, where the command line shows them.
    """

    def __init__(self, loader: torch.utils.data.DataLoader, cfg: AugmentConfig | None, num_classes: int,
                 seed: int, epoch: int, start_step: int, device: torch.device, dataset: StreamingDataset) -> None:
        self.loader, self.cfg, self.num_classes = loader, cfg, num_classes
        self.seed, self.epoch, self.start_step, self.device = seed, epoch, start_step, device
        self.dataset = dataset
        self.skipped: list[tuple[str, str]] = []  # (file, error) of this epoch's files that did not decode

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self.skipped = []
        seen = 0  # files of the batches served so far
        try:
            for step, (x, y, skipped, warned) in enumerate(self.loader, start=self.start_step):
                self.skipped += skipped
                seen += len(skipped) + (0 if x is None else x.shape[0])
                for message, category in warned:
                    warnings.warn(message, category, stacklevel=2)
                if x is None:
                    continue
                x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
                cfg = self.cfg
                if cfg is None or not cfg.soft_targets:
                    yield x, y
                    continue
                t = smooth_one_hot(y, self.num_classes, cfg.label_smoothing)
                params = sample_params(cfg, x.shape[0], x.shape[2], x.shape[3], generator("mix", self.seed,
                                                                                          self.epoch, step))
                # partners within this process's batch: the image before, as torchvision's roll(1)
                yield mix(x, t, x.roll(1, 0), t.roll(1, 0), params)
        finally:  # also when the consumer stops early: the trainer breaks off at the run's last step
            report_bad(self.skipped, seen, self.dataset.root, stacklevel=2)


def make_stream_loader(dataset: StreamingDataset, batch_size: int, *, train: bool, preprocessing,
                       augment: AugmentConfig | None = None, num_workers: int = 0, seed: int = 0, epoch: int = 0,
                       start_step: int = 0, drop_last: bool | None = None, device: str | torch.device = "cpu",
                       rank: int = 0, world_size: int = 1) -> StreamLoader:
    """One epoch of ``dataset`` through a torch DataLoader with ``num_workers`` workers.

    Train: RandomResizedCrop to ``preprocessing.img_size``, flip and TrivialAugmentWide/RandAugment per
    ``augment``, normalisation, random erasing; then Mixup/CutMix/label smoothing on the batch (partners within
    this process's batch). Eval: ``preprocessing.transform()`` (resize, centre crop, normalise), in order.
    ``preprocessing`` is a :class:`vitlab.Preprocessing`. Order and augmentation are deterministic from
    ``(seed, epoch)`` whatever ``num_workers``; ``start_step`` skips that many batches. Rows per rank as in
    :class:`BatchLoader`, except that a rank whose share of the last eval batch is empty gets no batch
    (``crop_padding`` is not used: RandomResizedCrop does the cropping).
    """
    if not isinstance(dataset, StreamingDataset):
        raise TypeError(f"make_stream_loader needs a StreamingDataset, got {type(dataset).__name__}")
    _check_common(batch_size, rank, world_size, preprocessing.mean, preprocessing.std, channels=3)  # RGB decoded
    drop_last = train if drop_last is None else drop_last
    n, gb = len(dataset), batch_size * world_size
    order = torch.randperm(n, generator=generator("order", seed, epoch)) if train else torch.arange(n)
    steps = n // gb if drop_last else -(-n // gb)
    batches = []
    for step in range(start_step, steps):
        idx = order[step * gb:(step + 1) * gb]
        lo, hi = _rank_rows(len(idx), batch_size, rank)
        if hi > lo:
            batches.append(idx[lo:hi].tolist())
    data = _Seeded(dataset, _stream_transform(train, preprocessing, augment), seed, epoch)
    loader = torch.utils.data.DataLoader(data, batch_sampler=batches, num_workers=num_workers,
                                         collate_fn=_collate_decoded, pin_memory=torch.device(device).type == "cuda",
                                         persistent_workers=False)
    return StreamLoader(loader, augment if train else None, len(dataset.class_names), seed, epoch, start_step,
                        torch.device(device), dataset)


class StreamEpochs:
    """A :class:`StreamingDataset` served with :class:`BatchLoader`'s interface: ``len()`` and ``epoch(e, start)``."""

    def __init__(self, dataset: StreamingDataset, batch_size: int, **kwargs) -> None:
        self.dataset, self.batch_size, self.kwargs = dataset, batch_size, kwargs

    def __len__(self) -> int:
        return len(make_stream_loader(self.dataset, self.batch_size, **self.kwargs))

    def epoch(self, epoch: int, start_step: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return iter(make_stream_loader(self.dataset, self.batch_size, epoch=epoch, start_step=start_step,
                                       **self.kwargs))


def make_loader(dataset: ImageDataset | StreamingDataset, batch_size: int, *, train: bool, preprocessing,
                augment: AugmentConfig | None, num_classes: int, seed: int = 0, device: str | torch.device = "cpu",
                rank: int = 0, world_size: int = 1, num_workers: int = 0) -> BatchLoader | StreamEpochs:
    """The loader that fits the data set: batched on-device augmentation for images held in memory, a
    DataLoader with workers for streamed ones. Both give ``len()`` and ``epoch(e, start_step)``."""
    if isinstance(dataset, StreamingDataset):
        return StreamEpochs(dataset, batch_size, train=train, preprocessing=preprocessing, augment=augment,
                            num_workers=num_workers, seed=seed, device=device, rank=rank, world_size=world_size)
    return BatchLoader(dataset, batch_size, train=train, augment=augment, mean=preprocessing.mean,
                       std=preprocessing.std, num_classes=num_classes, seed=seed, device=device, rank=rank,
                       world_size=world_size, eval_resize=None if train else preprocessing)
