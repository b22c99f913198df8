import zipfile
from pathlib import Path

import pytest
import torch

# The shared CIFAR-10 JPEG copy (train/<class>/*.jpg, test/<class>/*.jpg); tests that need it skip without it.
CIFAR_ZIP = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpeg.zip"


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread (as torchrun's processes run with OMP_NUM_THREADS=1): a tiny model gains nothing from
    two, and on a busy 2-core machine two threads wait on each other (measured: steps 5-20x slower). A module opts
    in with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def randomize_(module: torch.nn.Module, std: float = 0.02) -> torch.nn.Module:
    """Move every parameter off its init (zero heads, unit norms) so that a parity test can fail."""
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn_like(p) * std)
    return module.eval()


def cifar_subset(dest: Path, per_class_train: int, per_class_test: int, classes: tuple[str, ...] | None = None
                 ) -> Path:
    """Extract the first ``per_class_*`` images (in name order) of each class (or of ``classes``) of each split of
    the shared CIFAR-10 copy into ``dest/<split>/<class>/``."""
    counts: dict[tuple[str, str], int] = {}
    with zipfile.ZipFile(CIFAR_ZIP) as z:
        for name in sorted(z.namelist()):
            parts = Path(name).parts
            if not name.endswith(".jpg") or len(parts) < 3:
                continue
            split, cls = parts[-3], parts[-2]
            limit = per_class_train if split == "train" else per_class_test if split == "test" else 0
            if (classes is None or cls in classes) and counts.get((split, cls), 0) < limit:
                counts[(split, cls)] = counts.get((split, cls), 0) + 1
                target = dest / split / cls / parts[-1]
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(z.read(name))
    return dest


def save_state_dict(state_dict: dict[str, torch.Tensor], path: Path) -> Path:
    """A bare state dict as a peer writes it: .safetensors by the suffix, else torch.save (.pth, .bin)."""
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state_dict.items()}, str(path))
    else:
        torch.save(state_dict, path)
    return path


def load_benchmark(name: str):
    """A script of benchmarks/ as a module (``benchmarks_<name>``), for tests of its helpers. It is registered in
    sys.modules before it runs: its dataclasses look their module up there."""
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location(f"benchmarks_{name}", Path(__file__).resolve().parent.parent
                                                  / "benchmarks" / f"{name}.py")
    module = sys.modules[spec.name] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
