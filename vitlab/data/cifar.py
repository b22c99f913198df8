"""CIFAR-10 and CIFAR-100 (Krizhevsky, 2009) from the official python archives.

The archive is downloaded once into a cache folder (``$VITLAB_DATA`` or ``~/.cache/vitlab/data``) with a
progress bar, checked against its published md5, and extracted atomically:

1. the download streams into ``<archive>.<pid>.part``, renamed to ``<archive>`` only when complete and verified
   (an interrupted or corrupt download leaves nothing behind);
2. the archive is extracted into a temporary folder beside the cache, whose data folder is then renamed into
   place in one ``os.rename``, and the archive is deleted.

So ``<cache>/cifar-10-batches-py/`` either exists complete or not at all. ``data_dir`` may point at an existing
extracted copy (the folder itself or its parent), which is used as is.

The batches are Python pickles. They are read with an unpickler that only builds numpy arrays, lists, dicts,
strings and numbers (:class:`NumpyOnlyUnpickler`): loading data never executes code.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import pickle
import shutil
import tarfile
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from vitlab.data.datasets import ImageDataset, default_cache_dir
from vitlab.errors import DataError, DownloadError, NotFoundError  # noqa: F401 (re-exported)


@dataclass(frozen=True)
class CifarArchive:
    url: str
    md5: str
    folder: str  # the folder inside the archive
    train: tuple[str, ...]
    test: tuple[str, ...]
    meta: str
    label_key: bytes
    names_key: bytes


# From https://www.cs.toronto.edu/~kriz/cifar.html (the md5 sums published there).
ARCHIVES = {
    "cifar10": CifarArchive(
        url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", md5="c58f30108f718f92721af3b95e74349a",
        folder="cifar-10-batches-py", train=tuple(f"data_batch_{i}" for i in range(1, 6)), test=("test_batch",),
        meta="batches.meta", label_key=b"labels", names_key=b"label_names"),
    "cifar100": CifarArchive(
        url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz", md5="eb9058c3a382ffc7106e4002c42a8d85",
        folder="cifar-100-python", train=("train",), test=("test",), meta="meta", label_key=b"fine_labels",
        names_key=b"fine_label_names"),
}


def _numpy_attr(*candidates: str):
    """The first importable ``module:name`` among candidates (numpy 2 moved ``numpy.core`` to ``numpy._core``)."""
    import importlib

    for cand in candidates:
        module, name = cand.split(":")
        try:
            return getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError):
            continue
    raise ImportError(f"none of {candidates} is available in numpy {np.__version__}")


_RECONSTRUCT = _numpy_attr("numpy._core.multiarray:_reconstruct", "numpy.core.multiarray:_reconstruct")
_FROMBUFFER = _numpy_attr("numpy._core.numeric:_frombuffer", "numpy.core.numeric:_frombuffer")


def _latin1_bytes(text: str, encoding: str = "latin1") -> bytes:
    """``_codecs.encode`` as protocol-2 pickles written by Python 3 use it for bytes, for latin-1 only."""
    if encoding not in ("latin1", "latin-1") or not isinstance(text, str):
        raise DataError(f"refusing _codecs.encode with encoding {encoding!r}")
    return text.encode("latin1")


_ALLOWED = {
    ("_codecs", "encode"): _latin1_bytes,  # how Python 3 writes bytes at protocol 2 (copies re-pickled by hand)
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy.core.numeric", "_frombuffer"): _FROMBUFFER,
    ("numpy._core.numeric", "_frombuffer"): _FROMBUFFER,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays, dicts, lists, strings, bytes and numbers; any other global is refused."""

    def __init__(self, file, *, name: str = "<pickle>") -> None:
        super().__init__(file, encoding="bytes")  # the official batches were written by Python 2
        self.name = name

    def find_class(self, module: str, name: str):
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise DataError(f"{self.name}: refusing to unpickle {module}.{name}; a CIFAR batch holds only numpy "
                             "arrays, lists and dicts, so this file is not an official CIFAR batch") from None


def load_batch(path: Path) -> dict:
    """One pickled CIFAR batch, with bytes keys (``b"data"``, ``b"labels"``, ...)."""
    with open(path, "rb") as f:
        try:
            return NumpyOnlyUnpickler(f, name=str(path)).load()
        except (pickle.UnpicklingError, EOFError) as e:
            raise DataError(f"{path} is not a readable CIFAR batch ({e}); delete the folder to download it "
                             "again") from e


def download(url: str, dest: Path, md5: str, *, desc: str = "", timeout: float = 60.0) -> Path:
    """Download ``url`` to ``dest`` through ``<dest>.<pid>.part`` with a progress bar; verify the md5, then rename.

    Raises DownloadError (an OSError) when the transfer fails or is cut short, or the md5 differs; the partial
    file is removed in every case.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(f"{dest.name}.{os.getpid()}.part")
    digest, received, total = hashlib.md5(), 0, None
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(part, "wb") as f:
            length = response.headers.get("Content-Length")
            total = int(length) if length else None
            with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=desc or dest.name,
                      disable=None) as bar:
                while chunk := response.read(1 << 20):
                    f.write(chunk)
                    digest.update(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
        if total is not None and received != total:
            raise DownloadError(f"download of {url} stopped after {received} of {total} bytes; try again")
        if digest.hexdigest() != md5:
            raise DownloadError(f"download of {url} is corrupt: md5 {digest.hexdigest()}, expected {md5}; "
                                "try again (or fetch the file by hand and pass its folder as data_dir)")
        os.replace(part, dest)
    except (OSError, http.client.HTTPException) as e:  # URLError and DownloadError are OSErrors too
        part.unlink(missing_ok=True)
        if isinstance(e, DownloadError):
            raise
        raise DownloadError(f"could not download {url}: {e}; check the connection, or pass data_dir= pointing "
                            "at an extracted copy") from e
    except BaseException:  # KeyboardInterrupt: leave no partial file
        part.unlink(missing_ok=True)
        raise
    return dest


def _extract_atomically(archive: Path, root: Path, folder: str) -> Path:
    """Extract ``archive`` into a temporary folder under ``root``, then rename its ``folder`` into place."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder}.", dir=root))
    try:
        with tarfile.open(archive, "r:*") as tar:
            if hasattr(tarfile, "data_filter"):
                tar.extractall(tmp, filter="data")  # no absolute paths, no '..', no links out of tmp
            else:  # Python < 3.10.12 / 3.11.4
                for m in tar.getmembers():
                    if m.name.startswith(("/", "\\")) or ".." in Path(m.name).parts or not (m.isfile() or m.isdir()):
                        raise DownloadError(f"{archive}: unsafe member {m.name!r}; refusing to extract")
                tar.extractall(tmp)
        src = tmp / folder
        if not src.is_dir():
            raise DownloadError(f"{archive} does not contain the folder {folder}/")
        target = root / folder
        try:
            os.rename(src, target)
        except OSError:
            if not target.is_dir():  # another process may have finished first; theirs is as good as ours
                raise
        return target
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def find_copy(archive: CifarArchive, root: Path) -> Path | None:
    """The extracted folder under (or at) ``root``, or None. An incomplete copy is an error."""
    for cand in (root / archive.folder, root):
        if (cand / archive.meta).is_file():
            missing = [f for f in (*archive.train, *archive.test) if not (cand / f).is_file()]
            if missing:
                raise NotFoundError(f"{cand} is an incomplete {archive.folder} copy: {', '.join(missing)} "
                                        "missing; delete the folder to download it again")
            return cand
    return None


def ensure_cifar(name: str, data_dir: str | Path | None = None, download_missing: bool = True) -> Path:
    """The folder of the extracted ``name`` batches, downloading and extracting it when absent."""
    archive = ARCHIVES[name]
    root = Path(data_dir).expanduser() if data_dir is not None else default_cache_dir()
    found = find_copy(archive, root)
    if found is not None:
        return found
    if not download_missing:
        raise NotFoundError(f"no {name} copy in {root} (looked for {root / archive.folder}/{archive.meta}); "
                                "pass download=True, or data_dir= the folder holding the extracted archive")
    root.mkdir(parents=True, exist_ok=True)
    tar_path = root / archive.url.rsplit("/", 1)[-1]
    download(archive.url, tar_path, archive.md5, desc=f"downloading {name}")
    try:
        return _extract_atomically(tar_path, root, archive.folder)
    finally:
        tar_path.unlink(missing_ok=True)


def load_cifar(name: str, split: str, *, data_dir: str | Path | None = None, download: bool = True) -> ImageDataset:
    """``"train"``: the official 50,000 training images; ``"val"`` and ``"test"``: the official test set."""
    archive = ARCHIVES[name]
    folder = ensure_cifar(name, data_dir, download)
    meta = load_batch(folder / archive.meta)
    class_names = [n.decode() if isinstance(n, bytes) else str(n) for n in _get(meta, archive.names_key, folder)]
    data, labels = [], []
    for fname in archive.train if split == "train" else archive.test:
        batch = load_batch(folder / fname)
        x = np.asarray(_get(batch, b"data", folder / fname), dtype=np.uint8)
        y = np.asarray(_get(batch, archive.label_key, folder / fname), dtype=np.int64)
        if x.ndim != 2 or x.shape[1] != 3 * 32 * 32 or len(y) != len(x):
            raise DataError(f"{folder / fname}: expected data (N, 3072) and N labels, got {x.shape} and {len(y)}")
        data.append(x)
        labels.append(y)
    images = torch.from_numpy(np.concatenate(data)).reshape(-1, 3, 32, 32)  # rows are R(1024) G(1024) B(1024)
    return ImageDataset(images, torch.from_numpy(np.concatenate(labels)), class_names)


def _get(d: dict, key: bytes, where: Path):
    if key in d:
        return d[key]
    if key.decode() in d:  # a copy re-pickled by Python 3 has str keys
        return d[key.decode()]
    raise DataError(f"{where}: no {key.decode()!r} entry; keys are {sorted(map(str, d))}")

