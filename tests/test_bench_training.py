"""The training benchmarks' own logic: benchmarks/step_time.py and benchmarks/cifar10_budget.py (the scripts print
figures and are not timed here)."""

import json
from pathlib import Path

import pytest
from conftest import load_benchmark

import vitlab
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


def test_a_teacher_trains_once_first_and_its_students_get_the_rest_of_the_budget(monkeypatch, tmp_path, capsys):
    runs = []

    def fake_train(cfg, run_dir, progress):  # what run_recipe reads back: metrics and weights
        runs.append((cfg.budget_minutes, cfg.distill.teacher, cfg.seed))
        Path(run_dir).mkdir(parents=True)
        (Path(run_dir) / "metrics.jsonl").write_text(json.dumps({"img_per_s": 100.0}) + "\n")
        vitlab.save(vitlab.create_model("resnet20", num_classes=10), Path(run_dir) / "model.safetensors")
        return RunResult(Path(run_dir), step=10, epoch=0, val_acc=0.5, interrupted=False, train_seconds=60.0)

    monkeypatch.setattr(budget, "train", fake_train)
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "0.jpg").touch()  # counted for the epochs, never read (train is faked)
    student = "demo+distill.teacher=teacher"
    budget.main(["--minutes", "20", "--data", str(tmp_path), "--out", str(tmp_path / "out"), "--teacher",
                 "cifar10-resnet20+amp=bf16:6", "--recipes", f"demo,{student},{student}+seed=1"])
    rows = [json.loads(line) for line in (tmp_path / "out" / "results.jsonl").read_text().splitlines()]
    weights = str(Path(rows[1]["run_dir"]) / "model.safetensors")
    assert rows[1]["recipe"] == "cifar10-resnet20+amp=bf16" and rows[2]["teacher_minutes"] == 6.0
    assert runs == [(20.0, "", 0), (6.0, "", 0), (14.0, weights, 0), (14.0, weights, 1)]  # trained once, first
    table = capsys.readouterr().out
    assert "| teacher cifar10-resnet20+amp=bf16 | 0.27M | 6 min |" in table
    assert f"| {student}+seed=1 | 0.27M | 6 + 14 min |" in table
    for argv, why in [(["--recipes", student], "give both or neither"),
                      (["--recipes", "demo", "--teacher", "demo:6"], "give both or neither"),
                      (["--recipes", student, "--teacher", "demo:20"], "0 < MINUTES < --minutes"),
                      (["--recipes", student, "--teacher", "demo"], "write SPEC:MINUTES")]:
        with pytest.raises(SystemExit, match=why):
            budget.main(["--minutes", "20", "--data", str(tmp_path), *argv])
