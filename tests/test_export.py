"""ONNX export: ONNX Runtime against eager PyTorch at two sizes, the metadata, and the failure modes.

An export takes a few seconds (torch.export, then the ONNX translation), however small the model: the quick tests
share one export (the ``exported`` fixture), make one that fails its parity check, and check every argument error
before any exporting; the other exports are marked slow."""

import os
import sys

import pytest
import torch
from conftest import randomize_

from vitlab import Preprocessing, VisionTransformer, ViTConfig
from vitlab.errors import OutputError
from vitlab.export import ExportError, export_onnx, read_onnx_metadata

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")
pytest.importorskip("onnxscript")

# One block: every op of the graph is in it (the exporter's time grows with the blocks, what is checked does not).
TINY = dict(embed_dim=32, depth=1, num_heads=4, mlp_dim=64, num_classes=5, img_size=32, patch_size=8)
TOL = 1e-4


def tiny(**kw) -> VisionTransformer:
    return randomize_(VisionTransformer(ViTConfig(**{**TINY, **kw})), std=0.2)  # off the zero head


def run_onnx(path, x: torch.Tensor) -> torch.Tensor:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(["logits"], {"pixel_values": x.numpy()})[0])


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """One dynamic export of a class-token model with a learned E_pos, shared by the tests below."""
    torch.manual_seed(0)
    model = tiny()
    model.preprocessing = Preprocessing(img_size=(32, 32), mean=(0.1, 0.2, 0.3), std=(0.4, 0.5, 0.6), crop_pct=0.875)
    model.class_names = ["ant", "bee", "cat", "dog", "eel"]
    path = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    return model, path, export_onnx(model, path, dynamic=True, batch=3)


@pytest.mark.slow  # the export alone takes 5 s; test_parity_failure_leaves_no_file exports in the fast set
def test_dynamic_export_matches_eager_at_two_sizes(exported):
    model, path, report = exported
    assert report.dynamic and report.opset >= 18
    assert [c.size for c in report.checks] == [(32, 32), (48, 24)]  # E_pos enlarged in h, shrunk in w
    for c in report.checks:
        assert c.batch == 3 and c.max_abs_diff <= TOL and c.top1_agreement == 1.0
    # Sizes and batches the export never saw, checked here independently of the report.
    for shape in [(1, 3, 40, 56), (3, 3, 16, 16), (2, 3, 64, 32)]:
        x = torch.randn(shape)
        with torch.no_grad():
            ref = model(x)
        assert ref.abs().max() > 0.1  # not trivially zero
        torch.testing.assert_close(run_onnx(path, x), ref, atol=TOL, rtol=0)
    assert sorted(os.listdir(path.parent)) == ["tiny.onnx"]  # no temporary files left behind
    assert "max |logit diff|" in report.summary()


@pytest.mark.slow  # shares the 5 s export above
def test_metadata_round_trip(exported):
    model, path, _ = exported
    meta = read_onnx_metadata(path)
    assert meta["config"] == model.config
    assert meta["preprocessing"] == model.preprocessing
    assert meta["class_names"] == model.class_names
    assert meta["dynamic"] is True and meta["vitlab_version"]
    custom = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).get_modelmeta().custom_metadata_map
    assert "preprocessing" in custom  # readable with onnxruntime alone


@pytest.mark.slow  # an export each (a few seconds): variations of the dynamic export tested above
@pytest.mark.parametrize("kw", [
    dict(pool="gap", class_token=False),
    dict(num_register_tokens=2, stem="conv"),  # BatchNorm in eval mode
    dict(pos_embed="sincos2d", img_size=(24, 40)),
    dict(mlp_layer="swiglu"),
    dict(rope="dinov3", pos_embed="none", num_register_tokens=2),
    dict(rope="axial"),
    dict(rope="mixed", pos_embed="none"),
    dict(res_post_norm=True, pos_embed="sincos2d_mae", class_token=False, pool="map", attn_pool_mlp=False),
], ids=["gap", "registers_conv_stem", "sincos_non_square", "swiglu", "rope_dinov3", "rope_axial", "rope_mixed",
        "post_norm_aimv2_pool"])
def test_other_architectures_export_dynamically(tmp_path, kw):
    model = tiny(**kw)
    report = export_onnx(model, tmp_path / "m.onnx", dynamic=True)
    assert len(report.checks) == 2 and all(c.max_abs_diff <= TOL for c in report.checks)
    assert read_onnx_metadata(tmp_path / "m.onnx")["class_names"] is None


@pytest.mark.slow  # one more export, in the static mode
def test_static_export_runs_only_at_its_size(tmp_path):
    model = tiny()
    report = export_onnx(model, tmp_path / "s.onnx", batch=1)
    assert not report.dynamic and [(c.size, c.batch) for c in report.checks] == [((32, 32), 1)]
    assert read_onnx_metadata(tmp_path / "s.onnx")["dynamic"] is False
    with pytest.raises(Exception, match="(?i)invalid dimensions"):
        run_onnx(tmp_path / "s.onnx", torch.randn(1, 3, 48, 32))
    with pytest.raises(ValueError, match="static export runs only"):
        export_onnx(model, tmp_path / "t.onnx", check_sizes=[(48, 32)])


def test_parity_failure_leaves_no_file(tmp_path, monkeypatch):
    real = ort.InferenceSession

    class Off(real):  # an ONNX Runtime that is off by 1e-3
        def run(self, *args, **kwargs):
            return [y + 1e-3 for y in super().run(*args, **kwargs)]

    monkeypatch.setattr(ort, "InferenceSession", Off)
    with pytest.raises(ExportError, match=r"at 32x32 .*> atol=0.0001; nothing was written"):
        export_onnx(tiny(), tmp_path / "m.onnx")
    assert os.listdir(tmp_path) == []


def test_output_folder_errors(tmp_path):
    model = tiny()
    with pytest.raises(FileNotFoundError, match="does not exist; create it"):
        export_onnx(model, tmp_path / "missing" / "m.onnx")
    (tmp_path / "file").write_text("")
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        export_onnx(model, tmp_path / "file" / "m.onnx")
    with pytest.raises(ValueError, match=r"must be a \.onnx file"):
        export_onnx(model, tmp_path / "m.pt")
    with pytest.raises(ValueError, match="opset >= 18"):
        export_onnx(model, tmp_path / "m.onnx", opset=17)
    with pytest.raises(ValueError, match="multiple of the patch size 8"):
        export_onnx(model, tmp_path / "m.onnx", dynamic=True, check_sizes=[(32, 36)])
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        with pytest.raises(OutputError, match="choose a writable folder"):
            export_onnx(model, locked / "m.onnx")
    assert sorted(os.listdir(tmp_path)) == ["file"] + (["locked"] if os.geteuid() != 0 else [])


def test_missing_extra_gives_the_install_hint(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` now raises ImportError
    with pytest.raises(ExportError, match=r'pip install "vitlab\[export\]"'):
        export_onnx(tiny(), tmp_path / "m.onnx")
    monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(ExportError, match=r'pip install "vitlab\[export\]"'):
        read_onnx_metadata(tmp_path / "m.onnx")


@pytest.mark.slow  # one more export, for a path only weights above 1.5 GiB take
def test_large_weights_go_to_an_external_data_file(tmp_path, monkeypatch):
    monkeypatch.setattr("vitlab.export.EXTERNAL_DATA_BYTES", 0)  # as ViT-H/14 would, beyond 1.5 GiB
    model = tiny()
    report = export_onnx(model, tmp_path / "m.onnx")
    assert sorted(os.listdir(tmp_path)) == ["m.onnx", "m.onnx.data"]
    assert (tmp_path / "m.onnx").stat().st_size < (tmp_path / "m.onnx.data").stat().st_size  # the weights
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(run_onnx(tmp_path / "m.onnx", x), model(x), atol=TOL, rtol=0)
    assert read_onnx_metadata(tmp_path / "m.onnx")["config"] == model.config
    assert "MB" in report.summary()


@pytest.mark.slow  # an export through the command line; its argument errors are checked quickly below
def test_the_export_command_checks_two_sizes_and_keeps_the_metadata(tmp_path, capsys):
    import vitlab
    from vitlab.cli import main

    torch.manual_seed(0)
    ckpt = vitlab.save(tiny(), tmp_path / "m.safetensors", class_names=list("abcde"))
    out = tmp_path / "m.onnx"
    code = main(["export", "--model", str(ckpt), "--format", "onnx", "--dynamic", "--out", str(out),
                 "--check-size", "32,48x24"])
    stdout, err = capsys.readouterr()
    assert code == 0, err
    assert "at 32x32, batch 2" in stdout and "at 48x24, batch 2" in stdout and "dynamic batch, H and W" in stdout
    assert read_onnx_metadata(out)["class_names"] == list("abcde")
    x = torch.randn(1, 3, 40, 56)
    torch.testing.assert_close(run_onnx(out, x), vitlab.load(ckpt).eval()(x).detach(), atol=TOL, rtol=0)


def test_the_export_command_rejects_a_check_size_off_the_patch_grid(tmp_path, capsys):
    import vitlab
    from vitlab.cli import main

    ckpt = vitlab.save(tiny(), tmp_path / "m.safetensors")
    code = main(["export", "--model", str(ckpt), "--out", str(tmp_path / "bad.onnx"), "--check-size", "30"])
    assert code == 2 and "multiple" in capsys.readouterr().err and not (tmp_path / "bad.onnx").exists()


@pytest.mark.slow  # one more export, of a bf16 model in training mode
def test_a_bf16_model_in_training_mode_is_exported_from_an_fp32_copy_and_left_as_it_was(tmp_path):
    model = tiny().to(torch.bfloat16).train()
    report = export_onnx(model, tmp_path / "m.onnx")
    assert report.checks[0].max_abs_diff <= TOL  # against the fp32 copy the graph was made from
    assert model.training and next(model.parameters()).dtype == torch.bfloat16


def test_argument_and_metadata_errors(tmp_path):
    model = tiny()
    model.class_names = ["a", "b"]  # 5 classes: found before any exporting
    with pytest.raises(ValueError, match="2 class names for a model with 5 classes"):
        export_onnx(model, tmp_path / "m.onnx")
    with pytest.raises(TypeError, match="takes a vitlab VisionTransformer"):
        export_onnx(torch.nn.Linear(2, 2), tmp_path / "m.onnx")
    with pytest.raises(ValueError, match="batch must be >= 1"):
        export_onnx(tiny(), tmp_path / "m.onnx", batch=0)
    (tmp_path / "d.onnx").mkdir()
    with pytest.raises(OutputError, match="is a folder"):
        export_onnx(tiny(), tmp_path / "d.onnx")
    with pytest.raises(FileNotFoundError, match="ONNX file not found"):
        read_onnx_metadata(tmp_path / "absent.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"\xff" * 64)
    with pytest.raises(ValueError, match="not a readable ONNX file"):
        read_onnx_metadata(tmp_path / "junk.onnx")
    assert sorted(os.listdir(tmp_path)) == ["d.onnx", "junk.onnx"]  # nothing else written


def test_onnx_from_elsewhere_has_no_vitlab_metadata(tmp_path):
    import onnx

    onnx.save(onnx.helper.make_model(onnx.helper.make_graph([], "g", [], [])), str(tmp_path / "other.onnx"))
    with pytest.raises(ValueError, match="has no vitlab metadata"):
        read_onnx_metadata(tmp_path / "other.onnx")
