"""The pure helpers of benchmarks/throughput.py (the script itself prints figures and is not run here)."""


import pytest
import torch
from conftest import load_benchmark

import vitlab

pytest.importorskip("timm")
pytest.importorskip("transformers")
tp = load_benchmark("throughput")


def test_cases_expand_the_grid_and_latency_runs_once():
    args = tp.parse_args(["--batch-sizes", "8,16", "--dtypes", "fp32,bf16", "--compile", "off,on"])
    assert len(tp.cases("train", args)) == 8
    assert {c.compile for c in tp.cases("attention", args)} == {False}  # attention mode is eager only
    assert tp.cases("latency", args) == [tp.Case("latency", 1, "fp32", False)]


def test_parse_args_rejects_unknown_choices_and_puts_vitlab_first():
    with pytest.raises(SystemExit):
        tp.parse_args(["--modes", "infer"])
    assert tp.parse_args(["--libs", "timm"]).libs == ["vitlab", "timm"]


def test_cifar_shorthand_is_the_reference_recipe_model_and_hf_can_express_it():
    cfg = tp.model_config("cifar")
    assert (cfg.img_size, cfg.patch_size, cfg.pool, cfg.num_classes) == ((32, 32), 4, "token", 10)
    assert tp.hf_config(cfg).hidden_size == cfg.embed_dim
    with pytest.raises(ValueError, match="gap"):
        tp.hf_config(vitlab.get_config("vit_tiny_patch4_32", pool="gap", class_token=False))


def test_peak_tflops_only_on_cuda_unless_given():
    assert tp.peak_tflops(torch.device("cpu"), "bf16", None) is None
    assert tp.peak_tflops(torch.device("cpu"), "bf16", 100.0) == 100.0


def test_table_ratio_is_time_over_the_first_row():
    rows = [tp.Row("vitlab", 8, times=[0.1, 0.1]), tp.Row("timm", 8, times=[0.2, 0.3], peak_bytes=2**21)]
    lines = tp.table(rows, "vitlab/this img/s", torch.device("cpu"), peak=None)
    assert lines[2].split("|")[5].strip() == "1.00" and lines[2].split("|")[6].strip() == "n/a"
    assert lines[3].split("|")[5].strip() == "2.50" and lines[3].split("|")[6].strip() == "2"


def test_noise_images_are_fixed_and_standardised():
    cfg = vitlab.get_config("vit_tiny_patch4_32")
    a, _ = tp.eval_images(cfg, 3, None)
    b, _ = tp.eval_images(cfg, 3, None)
    assert a.shape == (3, 3, 32, 32) and torch.equal(a, b)
    assert torch.allclose(a.std(dim=(1, 2, 3)), torch.ones(3))


def test_accuracy_cost_of_an_identical_model_is_nil():
    model = torch.nn.Linear(4, 5)
    cost = tp.accuracy_cost(model, model, torch.randn(20, 4), torch.device("cpu"), chunk=7)
    assert cost["max_abs_diff"] == 0 and cost["top1_agree"] == cost["images"] == 20


def test_mfu_is_images_per_second_times_flops_over_peak():
    row = tp.Row("vitlab", 10, times=[0.5], flops_per_image=1e12)  # 20 img/s x 1 TFLOP = 20 TFLOP/s
    assert tp.mfu(row, peak_tflops=100.0) == pytest.approx(0.2)
    assert tp.mfu(row, peak_tflops=None) is None


def test_eval_images_from_a_folder(tmp_path):
    from PIL import Image

    for i in range(3):
        Image.new("RGB", (40, 20), (80 * i, 0, 0)).save(tmp_path / f"{i}.png")
    cfg = vitlab.get_config("vit_tiny_patch4_32")
    x, source = tp.eval_images(cfg, 2, str(tmp_path))
    assert x.shape == (2, 3, 32, 32) and str(tmp_path) in source
    assert not torch.equal(x[0], x[1])  # files 0 and 1 of the 3, evenly spread
    with pytest.raises(FileNotFoundError, match="no image files"):
        tp.eval_images(cfg, 2, str(tmp_path / "empty"))
