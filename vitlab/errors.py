"""vitlab's errors: one base class, :class:`VitlabError`, and a subclass per kind of problem.

Every error vitlab raises on purpose, at a public boundary (a bad checkpoint, config value, image, data set,
command-line option, a run that cannot go on), is a :class:`VitlabError` whose message is one line that names the
problem and what to do. The command line prints it as ``vitlab: error: <message>`` and exits 2; any other
exception is a bug in vitlab, printed as an internal error with its traceback.

Each subclass also derives from the built-in exception that code written before this module caught
(``CheckpointError`` is a ``ValueError``, ``DiskFullError`` an ``OSError``, ...), so ``except ValueError`` still
works::

    VitlabError
    ├── UsageError           a combination of arguments that cannot work (ValueError)
    ├── ConfigError          a model or training config key or value (ValueError)
    ├── CheckpointError      a checkpoint that cannot be read or does not fit (ValueError)
    ├── DataError            a data set or image (ValueError)
    │   └── UndecodableImage   one image file that does not decode; ``path`` names it
    │       └── ImageTooLarge    its header claims more pixels than PIL's decompression-bomb limit
    ├── NotFoundError        a checkpoint, image or data folder that does not exist (FileNotFoundError)
    ├── DownloadError        a download that failed or does not match its checksum (OSError)
    ├── DiskFullError        the disk filled up while writing; the previous file is intact (OSError)
    ├── OutputError          an output path that cannot be written (OSError)
    ├── HubError             weights not fetched from, or found in the cache of, the Hugging Face Hub (RuntimeError)
    ├── TrainingError        a run that cannot go on (RuntimeError)
    │   └── RunLockedError     the run folder is in use by another live process
    ├── ExportError          the export extra is missing, or ONNX Runtime disagrees with PyTorch (RuntimeError)
    └── ExploreError         a request the explorer cannot serve; ``status`` is its HTTP status (ValueError)
"""

from __future__ import annotations

from pathlib import Path


class VitlabError(Exception):
    """Base of every error vitlab raises on purpose; its message is one line a user can act on."""


class UsageError(VitlabError, ValueError):
    """Arguments that cannot work together, or a value outside what an argument allows."""


class ConfigError(VitlabError, ValueError):
    """A configuration key or value that is not valid."""


class CheckpointError(VitlabError, ValueError):
    """A checkpoint that cannot be read, or does not fit the model asked for. The message is one line."""


class DataError(VitlabError, ValueError):
    """A data set that cannot be loaded (missing, empty, one class, no image decodes) or an image that cannot be
    used."""


class UndecodableImage(DataError):
    """An image file (or upload) that does not decode; ``path`` names it, ``reason`` says why."""

    def __init__(self, path: str | Path, e: BaseException | str,
                 then: str = "remove the file, or load without strict to skip it") -> None:
        reason = e if isinstance(e, str) else f"{type(e).__name__}: {e}".rstrip(": ")
        for named in (f"'{path}'", f'"{path}"', str(path)):  # the decoder's message names the file again
            reason = reason.replace(named, "it")
        self.path, self.reason = Path(path), " ".join(reason.split())  # one line
        super().__init__(f"{path} is not an image that can be decoded ({self.reason}); {then}")


class NotFoundError(VitlabError, FileNotFoundError):
    """A file or folder the user named that does not exist (a checkpoint, an image, a data folder)."""


class ImageTooLarge(UndecodableImage):
    """An image whose header claims more pixels than PIL's decompression-bomb limit: not decoded."""

    def __init__(self, path: str | Path, e: BaseException) -> None:
        super().__init__(path, e)
        self.args = (f"{path} claims a size too large to decode safely ({e}); if the image is genuine, raise "
                     "PIL.Image.MAX_IMAGE_PIXELS",)

    def __str__(self) -> str:
        return self.args[0]


class DownloadError(VitlabError, OSError):
    """A download that failed, was cut short, or does not match its published checksum."""


class DiskFullError(VitlabError, OSError):
    """The disk filled up while writing ``path``; the previous file is intact and no partial file is left."""

    def __init__(self, path: Path, then: str = "free some space and try again"):
        import errno
        import shutil

        free = shutil.disk_usage(path.parent).free if path.parent.is_dir() else 0
        super().__init__(f"no space left on the device to write {path} ({_size(free)} free in {path.parent}); "
                         f"{then}")
        self.errno, self.path = errno.ENOSPC, path


def _size(n: float) -> str:
    """A byte count for a message: 0 B, 512 B, 3.4 MB, 1.2 GB."""
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"  # not reached


class OutputError(VitlabError, OSError):
    """An output file or folder that cannot be written (permission, a read-only or special file system, a folder
    in the way); raised before the work that would have produced it."""


class HubError(VitlabError, RuntimeError):
    """Weights that could not be fetched from, or found in the cache of, the Hugging Face Hub."""


class TrainingError(VitlabError, RuntimeError):
    """A run that cannot go on (non-finite loss, bad setup); the last good checkpoint is intact."""


class RunLockedError(TrainingError):
    """A run folder that another live process is training in."""


class ExportError(VitlabError, RuntimeError):
    """The export extra is missing, the exporter failed, or ONNX Runtime disagrees with eager PyTorch."""


class ExploreError(VitlabError, ValueError):
    """A request the explorer cannot serve (unknown image, bad parameter, not an image): ``status`` is the HTTP
    status it maps to."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def check_writable(path: str | Path, what: str = "output") -> Path:
    """Raise :class:`OutputError` now, before any work, when ``path`` (a file to be written) cannot be: it is a
    folder, or the nearest folder that exists above it is a file, or takes no new file. It finds out by making and
    deleting a temporary file in that folder (permission bits say nothing to root, nor about a read-only file
    system); it makes nothing else (the writer makes the missing folders)."""
    import os
    import tempfile

    path = Path(path)
    folder = path.parent
    try:
        if path.is_dir():
            raise OutputError(f"{what} {path} is a folder; give a file name")
        while not folder.exists() and folder != folder.parent:  # a path through a file does not exist either
            folder = folder.parent
        if not folder.is_dir():
            raise OutputError(f"cannot write {what} {path}: {folder} is a file, not a folder; choose another path")
        fd, probe = tempfile.mkstemp(prefix=".vitlab-check-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        if isinstance(e, OutputError):
            raise
        raise OutputError(f"cannot write {what} {path}: no new file can be made in {folder} "
                          f"({e.strerror or e}); choose another path") from e
    if path.is_file() and not os.access(path, os.W_OK):  # written in place by some writers
        raise OutputError(f"cannot write {what} {path}: permission denied; choose another path")
    return path
