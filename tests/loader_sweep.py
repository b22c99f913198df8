"""The loader sweep: every ViT-family architecture of timm, transformers and OpenCLIP, tiny (two blocks, the real
widths) and random, saved in every form vitlab reads, loaded as a user would, and compared with the peer.

Each case ends in one of:
    exact       loaded; outputs within TOL of the peer's (with or without a notice)
    refused     a one-line vitlab error (CheckpointError and kin)
    override    a notice (or a refusal that asks for a field) whose fields, passed with the peer's values, load
                exactly
    noticed     loaded differently, with a notice that names the field and says that the peer's value is beyond
                vitlab's model (a bare file cannot show it: a pooler of an activation vitlab has not)
    skipped     too large for the sweep (two blocks of vit_5b_*), said with its size
and anything else is a failure: a silent mismatch (loaded, different, no notice), a notice whose override does not
make it exact, or an exception that is not vitlab's. ``tests/test_loader_sweep.py`` runs a sample in the quick tier
and every case in the slow tier; ``python tests/loader_sweep.py [timm|hf|openclip]`` prints every case and the counts.
"""

from __future__ import annotations

import re
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

import vitlab
from vitlab.config import check_field
from vitlab.convert import AssumedSettingsNotice
from vitlab.errors import ConfigError, VitlabError

TOL = 1e-4  # of the largest |output|, at least 1
MAX_PARAMS = 400_000_000  # a two-block model larger than this (vit_7b's) is built on the meta device only


@dataclass
class Outcome:
    kind: str  # "exact" | "refused" | "override" | "FAIL"
    detail: str

    def __str__(self) -> str:
        return f"{self.kind:8s} {self.detail}"


def _diff(theirs: torch.Tensor, ours: torch.Tensor) -> float:
    if theirs.shape != ours.shape:
        return float("inf")
    return (theirs - ours).abs().max().item() / max(1.0, theirs.abs().max().item())


def _ours(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """vitlab's output for x, cropped at the bottom and right to whole patches: the pixels a peer's strided
    convolution drops (timm's so400m_patch14_*_384 models see 27 patches of 14 in 384 px)."""
    P = model.config.patch_size
    return model.eval()(x[..., :x.shape[-2] // P * P, :x.shape[-1] // P * P])


def _load(path: Path, overrides: dict[str, Any]) -> tuple[Any, list[AssumedSettingsNotice], BaseException | None]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            model = vitlab.load(path, **overrides)
        except Exception as e:  # noqa: BLE001 (classified by the caller)
            return None, [], e
    notices = [w.message for w in caught if isinstance(w.message, AssumedSettingsNotice)]
    return model, notices, None


def run_case(path: Path, reference: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
             truth: dict[str, Any]) -> Outcome:
    """Load ``path`` with vitlab, compare with ``reference`` on ``x``; ``truth`` holds the peer's values of the
    fields a notice or an error may ask for."""
    model, notices, error = _load(path, {})
    asked = re.search(r"pass (\w+)=\.\.\. to vitlab\.load", str(error)) if error is not None else None
    if model is None and not (asked and asked[1] in truth):
        expected = None  # refused: the peer need not run (a model the table refuses is saved uninitialised)
    else:
        with torch.no_grad():
            expected = reference(x)
    if error is not None:
        if not isinstance(error, VitlabError):
            return Outcome("FAIL", f"not vitlab's error: {type(error).__name__}: {str(error).splitlines()[0][:150]}")
        message = str(error)
        if "\n" in message:
            return Outcome("FAIL", f"a multi-line error: {message[:150]!r}")
        if asked and asked[1] in truth:
            return _with_override(path, x, expected, {asked[1]: truth[asked[1]]}, message, truth)
        return Outcome("refused", message[:200])
    with torch.no_grad():
        d = _diff(expected, _ours(model, x))
    if d <= TOL:
        return Outcome("exact", f"{d:.1e}" + (" (with a notice)" if notices else ""))
    fields = {f for n in notices for f in n.fields}
    if not notices:
        return Outcome("FAIL", f"silent mismatch: {d:.2e} off with no notice")
    if not fields or any(f not in truth for f in fields):
        return Outcome("FAIL", f"{d:.2e} off; the notice names {sorted(fields)}, the sweep knows {sorted(truth)}: "
                               f"{str(notices[0])[:150]}")
    beyond = {f: truth[f] for f in fields if not _valid(f, truth[f])}
    if beyond:  # the true value is one vitlab's model does not have: the notice must say it cannot run it
        if "cannot run" in str(notices[0]):
            return Outcome("noticed", f"{d:.2e} off; the notice names {sorted(fields)} and says vitlab cannot run "
                                      f"{beyond}")
        return Outcome("FAIL", f"{d:.2e} off; {beyond} is not vitlab's and the notice does not say so")
    return _with_override(path, x, expected, {f: truth[f] for f in fields}, str(notices[0]), truth)


def _valid(name: str, value: Any) -> bool:
    try:
        check_field(name, value)
    except ConfigError:
        return False
    return True


def _with_override(path: Path, x: torch.Tensor, expected: torch.Tensor, overrides: dict[str, Any],
                   said: str, truth: dict[str, Any]) -> Outcome:
    model, notices, error = _load(path, overrides)
    if error is not None:
        return Outcome("FAIL", f"with {overrides}: {type(error).__name__}: {str(error).splitlines()[0][:150]}")
    with torch.no_grad():
        d = _diff(expected, _ours(model, x))
    more = {f: truth[f] for n in notices for f in n.fields if f in truth and f not in overrides and _valid(f, truth[f])}
    if d > TOL and more:  # what the load says next (a refusal for img_size, then a notice for the heads)
        return _with_override(path, x, expected, {**overrides, **more}, said, truth)
    if d <= TOL:
        return Outcome("override", f"{overrides} -> {d:.1e}")
    return Outcome("FAIL", f"{d:.2e} off even with {overrides}, which the load asked for: {said[:150]}")


def randomize_(module: torch.nn.Module, std: float = 0.1) -> torch.nn.Module:
    """Every parameter off its init, far enough that a wrong activation, eps or head count shows."""
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn_like(p) * std)
    return module.eval()


def save_bare(sd: dict[str, torch.Tensor], path: Path) -> Path:
    from safetensors.torch import save_file

    save_file({k: v.detach().contiguous().clone() for k, v in sd.items()}, str(path))
    return path


# --- timm ------------------------------------------------------------------------------------------------------

TIMM_FORMS = ("bare", "hub")


def timm_cases() -> list[tuple[str, str]]:
    from timm_architectures import architectures

    return [(name, form) for name in architectures() for form in TIMM_FORMS]


def timm_case(name: str, form: str, tmp: Path) -> Outcome:
    import timm
    from timm.models._hub import save_for_hf
    from timm_architectures import build

    from vitlab.convert.timm import entry_hints, known_architectures

    torch.manual_seed(0)
    entry = known_architectures().get(name, {})
    if "unbuildable" in entry:
        return Outcome("skipped", f"timm cannot build it with two blocks: {entry['unbuildable']}")
    model = build(name)
    n_params = sum(p.numel() for p in model.parameters())
    if n_params > MAX_PARAMS:
        return Outcome("skipped", f"{n_params / 1e6:.0f}M parameters with two blocks")
    if "num_heads" in entry:  # vitlab runs it: timm's own init, then off it
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                model = timm.create_model(name, depth=2)
            except Exception:  # noqa: BLE001 (as build(): a class whose depth is its own)
                model = timm.create_model(name)
        randomize_(model)
    else:  # the table says vitlab cannot run it: only the tensor names and shapes matter, not timm's slow init
        model = model.to_empty(device="cpu")
        with torch.no_grad():
            for t in model.state_dict().values():
                t.normal_(0, 0.1) if t.is_floating_point() else t.zero_()
        model.eval()
    x = torch.randn(1, *model.pretrained_cfg.get("input_size", (3, 224, 224)))
    if form == "hub":
        save_for_hf(model, str(tmp / "hub"), safe_serialization=True)
        path = tmp / "hub"
    else:
        path = save_bare(model.state_dict(), tmp / "model.safetensors")
    truth = entry_hints(entry) if "num_heads" in entry else {}
    return run_case(path, model, x, truth)


if __name__ == "__main__":
    import tempfile
    from collections import Counter

    sys.path.insert(0, str(Path(__file__).parent))
    torch.set_num_threads(1)
    which = sys.argv[1:] or ["timm"]
    counts: Counter = Counter()
    for source in which:
        cases, run = {"timm": (timm_cases, timm_case)}[source]
        for case in cases():
            with tempfile.TemporaryDirectory() as tmp:
                outcome = run(*case, Path(tmp))
            counts[outcome.kind] += 1
            print(f"{source:8s} {' '.join(case):60s} {outcome}", flush=True)
    print(dict(counts))
