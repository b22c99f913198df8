"""Which precision a training run uses: ``amp = "auto"`` asks the hardware whether it runs bf16 natively.

bf16 autocast pays only where the hardware multiplies bf16 itself: CUDA GPUs of compute capability 8.0 and up
(Ampere, Hopper, ...) and ROCm GPUs; x86 CPUs with AVX512-BF16 or AMX-BF16 (Intel Cooper Lake and Sapphire Rapids
Xeons on, AMD Zen 4 on); Arm CPUs with the BF16 extension (Armv8.6: Graviton3, Neoverse V1/V2). Elsewhere torch
emulates it in generic kernels, and a training step runs many times slower than in fp32:
cifar10-deepstem 12.45 s a step in bf16 against 0.32 s in fp32 on a 2-core AMD EPYC without AVX-512, 2026-12-04
(``python benchmarks/step_time.py --recipes cifar10-deepstem --modes fp32,bf16 --steps 3 --warmup 1``; issue 25).

``amp`` (vitlab.train.config.TrainConfig):
    "none"  fp32.
    "bf16"  bf16 autocast, wherever it runs; on hardware that emulates bf16 a warning says it will be slow.
    "auto"  bf16 autocast where the device runs bf16 natively, else fp32.

The CPU's flags come from torch's own cpuinfo (``torch._C._cpu._get_cpu_capability``, private, so read only when
present) and, on Linux, from ``/proc/cpuinfo``. An Apple CPU (macOS) and an ``mps`` device count as emulating: vitlab
has measured no torch bf16 path there that beats fp32 (``amp = "bf16"`` still runs them in bf16).

The environment variable ``VITLAB_NATIVE_BF16`` overrides the answer for every device: ``1`` (native) or ``0``
(emulated), for tests of either path on any machine, or for hardware the flags misjudge.
"""

from __future__ import annotations

import functools
import os
import platform
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from vitlab.errors import ConfigError

AMP_CHOICES = ("none", "bf16", "auto")
NATIVE_BF16_ENV = "VITLAB_NATIVE_BF16"
# CPU features that multiply bf16 in hardware: the name in /proc/cpuinfo and torch's cpuinfo -> the name to print.
X86_BF16 = {"avx512_bf16": "AVX512-BF16", "amx_bf16": "AMX-BF16"}
ARM_BF16 = "bf16"  # a word of /proc/cpuinfo's "Features" line on aarch64 (BFDOT, BFMMLA)


@dataclass(frozen=True)
class Precision:
    """What a run asked for (``amp``), what it runs in (``dtype``: "bf16" autocast or "fp32"), and why."""

    amp: str
    dtype: str
    reason: str

    @property
    def autocast(self) -> bool:
        return self.dtype == "bf16"

    def describe(self) -> str:
        """One line for the run's log: ``auto: fp32, this CPU emulates bf16 (...)``."""
        return f"{self.amp}: {self.dtype}, {self.reason}"

    def to_dict(self) -> dict[str, str]:
        return {"amp": self.amp, "dtype": self.dtype, "reason": self.reason}


def resolve_precision(amp: str, device: torch.device | str, warn: bool = True) -> Precision:
    """The precision of a run with ``amp`` (none | bf16 | auto) on ``device``. An explicit "bf16" on a device that
    emulates bf16 warns (with ``warn``) that the run will be many times slower than in fp32."""
    if amp not in AMP_CHOICES:
        raise ConfigError(f"amp={amp!r} is not one of {', '.join(repr(c) for c in AMP_CHOICES)}")
    if amp == "none":
        return Precision(amp, "fp32", 'amp = "none" asks for fp32')
    native, why = native_bf16(device)
    if amp == "auto":
        return Precision(amp, "bf16" if native else "fp32", why)
    if warn and not native:
        warnings.warn(f'amp = "bf16": {why}, so training will run many times slower than in fp32 (amp = "auto" '
                      'runs fp32 here)', stacklevel=2)
    return Precision(amp, "bf16", why)


def native_bf16(device: torch.device | str) -> tuple[bool, str]:
    """Whether ``device`` runs bf16 natively, and the reason in words (for the log and ``environment.json``)."""
    forced = os.environ.get(NATIVE_BF16_ENV, "")
    if forced:
        if forced not in ("0", "1"):
            raise ConfigError(f"{NATIVE_BF16_ENV}={forced!r}: expected 1 (native bf16) or 0 (emulated), or unset "
                              "to ask the hardware")
        return forced == "1", f"{NATIVE_BF16_ENV}={forced} says {'native' if forced == '1' else 'emulated'} bf16"
    device = torch.device(device)
    if device.type == "cuda":
        return _cuda_bf16(device)
    if device.type == "cpu":
        features = cpu_bf16_features()
        if features:
            return True, f"the CPU has {' and '.join(features)}"
        if platform.system() == "Darwin":
            return False, "vitlab treats an Apple CPU as emulating bf16 (no torch bf16 path measured there beats fp32)"
        return False, "this CPU emulates bf16, having neither AVX512-BF16 nor AMX-BF16"
    return False, f"vitlab treats {device.type} as emulating bf16 (no bf16 path measured there beats fp32)"


def _cuda_bf16(device: torch.device) -> tuple[bool, str]:
    if torch.version.hip:
        return True, "ROCm GPUs run bf16 natively"
    index = device.index if device.index is not None else torch.cuda.current_device()
    major, minor = torch.cuda.get_device_capability(index)
    name = torch.cuda.get_device_name(index)
    with torch.cuda.device(index):
        native = torch.cuda.is_bf16_supported(including_emulation=False)  # compute capability >= 8.0
    if native:
        return True, f"the {name} runs bf16 natively (compute capability {major}.{minor})"
    return False, f"the {name} emulates bf16 (compute capability {major}.{minor}, below 8.0)"


@functools.cache
def cpu_bf16_features() -> tuple[str, ...]:
    """The bf16 features of this CPU, by the names that are printed ("AVX512-BF16", "AMX-BF16", "BF16")."""
    found = set()
    capabilities = getattr(getattr(torch._C, "_cpu", None), "_get_cpu_capability", None)  # private: not in every torch
    if capabilities is not None:
        found |= {flag for flag, value in capabilities().items() if flag in X86_BF16 and value is True}
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux
        cpuinfo = ""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):  # x86, aarch64; the first core's line speaks for all
            words = set(value.split())
            found |= words & set(X86_BF16)
            if key.strip() == "Features" and ARM_BF16 in words:
                found.add(ARM_BF16)
            break
    return tuple(X86_BF16.get(flag, flag.upper()) for flag in sorted(found))
