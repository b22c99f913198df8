"""Data sets, batched on-device augmentation and loaders.

- :func:`load_dataset` (``cifar10``, ``cifar100``, ``shapes``, ``folder:PATH``) returns an :class:`ImageDataset`
  (small images, in memory) or a :class:`StreamingDataset` (larger images, decoded per item).
- :class:`BatchLoader` serves an :class:`ImageDataset` from the training device, augmenting whole batches there
  per an :class:`AugmentConfig`; :func:`make_stream_loader` serves a :class:`StreamingDataset` through a
  DataLoader with workers.
"""

from vitlab.data.augment import AugmentConfig
from vitlab.data.cifar import DownloadError
from vitlab.data.datasets import NAMES, SPLITS, ImageDataset, default_cache_dir, load_dataset
from vitlab.data.folder import StreamingDataset
from vitlab.data.loader import BatchLoader, StreamEpochs, StreamLoader, make_loader, make_stream_loader
from vitlab.data.shapes import CLASS_NAMES as SHAPES_CLASS_NAMES

__all__ = [
    "NAMES", "SHAPES_CLASS_NAMES", "SPLITS", "AugmentConfig", "BatchLoader", "DownloadError", "ImageDataset",
    "StreamEpochs", "StreamLoader", "StreamingDataset", "default_cache_dir", "load_dataset", "make_loader",
    "make_stream_loader",
]
