"""The training benchmarks' own logic: benchmarks/step_time.py and benchmarks/cifar10_budget.py (the scripts print
figures and are not timed here)."""

from pathlib import Path

import pytest
from conftest import load_benchmark

from vitlab.train.trainer import RunResult

step_time = load_benchmark("step_time")
budget = load_benchmark("cifar10_budget")


@pytest.mark.parametrize("mode", ["fp32", "channels-last"])
def test_step_time_splits_a_step_into_its_parts(mode):
    r = step_time.time_steps("demo", mode, steps=1, warmup=0)
    assert (r["recipe"], r["mode"], r["batch"]) == ("demo", mode, 128)
    assert min(r["forward_ms"], r["backward_ms"], r["optimizer_ms"]) > 0
    assert r["step_ms"] == pytest.approx(r["forward_ms"] + r["backward_ms"] + r["optimizer_ms"])
    assert r["img_per_s"] == pytest.approx(128 / (r["step_ms"] / 1e3))


def test_step_time_rejects_an_unknown_mode(capsys):
    with pytest.raises(SystemExit):
        step_time.main(["--modes", "fp32,fp8"])
    assert "unknown mode 'fp8'" in capsys.readouterr().err


def test_an_interrupted_recipe_stops_the_budget_run_without_a_row(monkeypatch, tmp_path):
    def stopped(cfg, run_dir, progress):
        return RunResult(Path(run_dir), step=3, epoch=0, val_acc=None, interrupted=True)

    monkeypatch.setattr(budget, "train", stopped)
    with pytest.raises(SystemExit, match="demo was interrupted after 3 steps, so it has no row"):
        budget.run_recipe("demo", tmp_path, 100, 1.0, tmp_path / "out", [], "cpu")
    assert not (tmp_path / "out" / "results.jsonl").exists()


def test_a_recipe_carries_its_own_overrides_and_a_bad_one_fails_before_any_training(capsys):
    assert budget.split_spec("cifar10-resnet20") == ("cifar10-resnet20", [])
    assert budget.split_spec("r.toml+amp=bf16+seed=1") == ("r.toml", ["amp=bf16", "seed=1"])
    with pytest.raises(SystemExit, match="'ampbf16' is not KEY=VALUE"):
        budget.split_spec("demo+ampbf16")
    name, cfg = budget.recipe_config("demo+seed=7", ["seed=1"])
    assert name == "demo+seed=7" and cfg.seed == 7  # a recipe's own override comes after --set's
    for spec, why in [("demo,demo+amp=fp8", "amp='fp8' is not one of"), ("nope", "unknown recipe 'nope'"),
                      ("/nonexistent/r.toml", "cannot read config")]:
        with pytest.raises(SystemExit, match=why):
            budget.main(["--minutes", "1", "--data", "/nonexistent", "--recipes", spec])
