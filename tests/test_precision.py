"""Nothing depends on the CPU having native bf16 (issue 25): ``amp = "auto"`` runs bf16 only where the hardware
multiplies it natively, says so in the run's log and ``environment.json``, and an explicit ``amp = "bf16"`` where
bf16 is emulated warns. ``VITLAB_NATIVE_BF16`` forces either answer, so both paths run on any machine."""

import json
import warnings

import pytest
import torch
from conftest import load_benchmark
from test_train import write_shapes_folder

from vitlab.precision import NATIVE_BF16_ENV, native_bf16, resolve_precision
from vitlab.train.config import ConfigError, list_recipes, load_config
from vitlab.train.trainer import Trainer

pytestmark = pytest.mark.usefixtures("one_thread")

# A tiny model and 2 steps of 16 images (48 training images, 12 validation images of `shapes`).
TINY = ["model.overrides={embed_dim = 32, depth = 1, num_heads = 2, mlp_dim = 64}", "data.batch_size=16",
        "max_steps=2", "log_every_steps=1", "data.crop_padding=0", "device=cpu"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """``shapes`` written as image folders: 48 training and 12 validation images."""
    return write_shapes_folder(tmp_path_factory.mktemp("shapes"), sizes={"train": 48, "val": 12})


def run_tiny(data, run_dir, amp):
    """Train the tiny model 2 steps with ``amp``; the dtypes the model's head produced in training steps."""
    cfg = load_config("demo", overrides=[*TINY, f"data.dataset='folder:{data}'", f"amp={amp}"])
    trainer = Trainer(cfg, run_dir, progress=False)
    dtypes = set()
    trainer.model.head.register_forward_hook(lambda m, i, out: dtypes.add(out.dtype) if m.training else None)
    trainer.run()
    return dtypes


@pytest.mark.parametrize(("native", "amp", "dtype", "warns"), [
    ("0", "auto", "fp32", False),  # a CPU that emulates bf16 (as a 2-core AMD EPYC without AVX-512)
    ("1", "auto", "bf16", False),  # one with AVX512-BF16 or AMX, or a GPU from compute capability 8.0
    ("0", "bf16", "bf16", True),  # asked for explicitly: it runs, and a warning says it will be slow
    ("1", "none", "fp32", False),
])
@pytest.mark.slow  # trains a tiny run
def test_a_run_says_the_precision_its_amp_resolved_to(data, tmp_path, monkeypatch, capsys, native, amp, dtype, warns):
    monkeypatch.setenv(NATIVE_BF16_ENV, native)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dtypes = run_tiny(data, tmp_path / "run", amp)
    assert dtypes == {torch.bfloat16 if dtype == "bf16" else torch.float32}  # what the steps really ran in
    slow = [w for w in caught if "many times slower than in fp32" in str(w.message)]
    assert len(slow) == int(warns)  # once per run
    env = json.loads((tmp_path / "run" / "environment.json").read_text())
    assert env["precision"]["amp"] == amp and env["precision"]["dtype"] == dtype
    line = f"precision {amp}: {dtype}, "
    assert line in capsys.readouterr().out
    if amp != "none":
        assert f"{NATIVE_BF16_ENV}={native}" in env["precision"]["reason"]


def test_the_hardware_answers_without_the_override(monkeypatch):
    monkeypatch.delenv(NATIVE_BF16_ENV, raising=False)
    native, why = native_bf16("cpu")
    flags = set()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pytest.skip("no /proc/cpuinfo to compare with")
    if flags:  # x86 Linux: the kernel's own flags
        assert native == bool(flags & {"avx512_bf16", "amx_bf16"}), why
    expected = "auto: bf16, the CPU has" if native else "auto: fp32, this CPU emulates bf16"
    assert resolve_precision("auto", "cpu").describe().startswith(expected)
    assert native_bf16("meta") == (False, "vitlab treats meta as emulating bf16 (no bf16 path measured there "
                                          "beats fp32)")


def test_explicit_bf16_warns_only_where_bf16_is_emulated(monkeypatch):
    monkeypatch.setenv(NATIVE_BF16_ENV, "1")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert resolve_precision("bf16", "cpu").autocast
    monkeypatch.setenv(NATIVE_BF16_ENV, "0")
    with pytest.warns(UserWarning, match='amp = "bf16": VITLAB_NATIVE_BF16=0 says emulated bf16, so training will '
                                         'run many times slower than in fp32'):
        assert resolve_precision("bf16", "cpu").autocast


def test_bad_amp_and_override_values_are_config_errors_naming_the_choices(monkeypatch):
    with pytest.raises(ConfigError, match="amp='fp16' is not one of 'none', 'bf16', 'auto'"):
        load_config("demo", overrides=["amp=fp16"])
    with pytest.raises(ConfigError, match="amp='fp16' is not one of 'none', 'bf16', 'auto'"):
        resolve_precision("fp16", "cpu")
    monkeypatch.setenv(NATIVE_BF16_ENV, "yes")
    with pytest.raises(ConfigError, match=f"{NATIVE_BF16_ENV}='yes': expected 1 .* or 0"):
        resolve_precision("auto", "cpu")


@pytest.mark.parametrize("name", list_recipes())
def test_no_recipe_asks_for_bf16_whatever_the_hardware(name):
    assert load_config(name).amp in ("none", "auto"), f"{name}: amp = 'bf16' runs emulated, 10x+ slower, on most CPUs"


@pytest.mark.parametrize(("native", "label"), [("0", "auto (fp32)"), ("1", "auto (bf16)")])
def test_step_time_says_what_auto_picked(tmp_path, monkeypatch, native, label):
    monkeypatch.setenv(NATIVE_BF16_ENV, native)
    recipe = tmp_path / "tiny.toml"
    recipe.write_text('[model]\noverrides = { embed_dim = 32, depth = 1, num_heads = 2, mlp_dim = 64 }\n'
                      '[data]\nbatch_size = 8\n')
    r = load_benchmark("step_time").time_steps(str(recipe), "auto", steps=1, warmup=0)
    assert r["mode"] == label and r["step_ms"] > 0
