"""The fault campaign's `vitlab convert` cases (issue 25, on 017cab9), through the command line.

Each case makes a tiny ViT (Ti/4@32, one block) in tmp_path and asserts what a user sees: the exit status, and for
an error exactly one line on stderr (``vitlab: error: ...``, no traceback) that names the problem, with every file
as it was (the source checkpoint is never modified, no partial output or temporary file is left). On 017cab9:
``--set img_size=64`` and ``--set num_classes=3`` crashed (the value was passed twice); ``--set
layer_scale_init=abc`` was a traceback, ``--set norm_eps=-1`` was accepted; an unwritable destination was a
traceback after the model was loaded; ``--to npz`` or ``--to timm`` wrote files under suffixes vitlab.load reads as
another format; an existing file's mode became 0600; a killed convert's temporary file stayed forever; ``--set
num_heads=4`` silently changed a model whose file states 3 heads; and a writer's destination that is a folder or
on a full disk was an operating-system error naming the temporary file.
"""

import errno
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import vitlab
from vitlab.cli import main
from vitlab.cli.convert import convert
from vitlab.convert import OverriddenSetting
from vitlab.errors import CheckpointError, ConfigError, OutputError

ONE_LINE_ERROR = re.compile(r"^vitlab: error: [^\n]+\n$")
UNWRITABLE = "/proc/vitlab-x/m.safetensors"  # root may write anywhere else: /proc takes no new file, even for root


@pytest.fixture(scope="module")
def tiny_file(tmp_path_factory) -> bytes:
    path = tmp_path_factory.mktemp("tiny") / "m.safetensors"
    return vitlab.save(vitlab.create_model("Ti/4@32", depth=1), path).read_bytes()


@pytest.fixture
def src(tmp_path, tiny_file):
    """A tiny ViT (Ti/4@32, one block) saved by vitlab.save: its config is in the file."""
    path = tmp_path / "m.safetensors"
    path.write_bytes(tiny_file)
    return path


def snapshot(folder: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def fails(argv: list[str], capsys, folder: Path, *says: str) -> str:
    """Run argv, which must fail with exit 2 and one error line naming each of ``says``, changing nothing."""
    before = snapshot(folder)
    status = main(argv)
    out, err = capsys.readouterr()
    assert status == 2, (status, out, err)
    assert "Traceback" not in err and ONE_LINE_ERROR.match(err), err
    for text in says:
        assert text in err, (text, err)
    assert snapshot(folder) == before  # nothing written, the source as it was, no temporary file left
    return err


def runs(argv: list[str], capsys) -> str:
    status = main(argv)
    out, err = capsys.readouterr()
    assert status == 0 and "Traceback" not in err and "error" not in err, (status, out, err)
    return out


def logits(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)))


# ------------------------------------------------------------- case 1: --set img_size / num_classes are the flags


def test_set_img_size_resamples_as_the_flag_does(src, tmp_path, capsys):
    runs(["convert", str(src), str(tmp_path / "a.safetensors"), "--set", "img_size=64"], capsys)
    runs(["convert", str(src), str(tmp_path / "b.safetensors"), "--img-size", "64"], capsys)
    a, b = vitlab.load(tmp_path / "a.safetensors"), vitlab.load(tmp_path / "b.safetensors")
    assert a.config.img_size == (64, 64) and a.config == b.config
    torch.testing.assert_close(a.pos_embed, b.pos_embed)
    runs(["convert", str(src), str(tmp_path / "c.safetensors"), "--set", "img_size=[64,64]", "--img-size", "64"],
         capsys)  # the same size twice is no conflict


def test_set_num_classes_gives_a_fresh_head_as_the_flag_does(src, tmp_path, capsys):
    runs(["convert", str(src), str(tmp_path / "a.safetensors"), "--set", "num_classes=3"], capsys)
    assert vitlab.load(tmp_path / "a.safetensors").config.num_classes == 3


@pytest.mark.parametrize("argv,says", [
    (["--set", "num_classes=3", "--num-classes", "4"], ["--num-classes 4", "--set num_classes=3"]),
    (["--set", "img_size=64", "--img-size", "32"], ["--img-size 32", "--set img_size=[64, 64]"]),
])
def test_set_and_flag_that_disagree_are_a_usage_error(src, tmp_path, capsys, argv, says):
    fails(["convert", str(src), str(tmp_path / "out.safetensors"), *argv], capsys, tmp_path, *says, "give one")


# ------------------------------------------------------------- case 2: every field's type and range


@pytest.mark.parametrize("setting,says", [
    ("layer_scale_init=abc", "layer_scale_init must be a positive number, or None (no LayerScale), got 'abc'"),
    ("depth=-1", "depth must be an integer >= 1, got -1"),
    ("num_heads=0", "num_heads must be an integer >= 1, got 0"),
    ("mlp_dim=nan", "mlp_dim"),  # 'nan' is no JSON: the text itself, which is no integer
    ("mlp_dim=2.5", "mlp_dim must be an integer >= 1, got 2.5"),
    ("img_size=[1,2,3]", "img_size must be an integer >= 1 or a (height, width) pair of them, got [1, 2, 3]"),
    ("norm_eps=-1", "norm_eps must be a positive number, got -1"),
    ("pos_resample=xyz", "pos_resample='xyz' is not one of 'bicubic_antialias', 'bicubic'"),
    ("qkv_bias=yes", "qkv_bias must be true or false, got 'yes'"),
    ("drop_path_rate=1.5", "drop_path_rate must be a number in [0, 1), got 1.5"),
    ("num_classes=-2", "num_classes must be an integer >= 0, got -2"),
    ("no_residual_blocks=[0,-1]", "no_residual_blocks must be a list of block indices"),
])
def test_a_setting_no_config_takes_is_one_line_naming_field_value_and_domain(src, tmp_path, capsys, setting, says):
    fails(["convert", str(src), str(tmp_path / "out.safetensors"), "--set", setting], capsys, tmp_path, says)


def test_a_config_checks_every_field_on_its_own():
    with pytest.raises(ConfigError, match="norm_eps must be a positive number, got nan"):
        vitlab.ViTConfig(norm_eps=float("nan"))
    with pytest.raises(ConfigError, match="layer_scale_init must be a positive number"):
        vitlab.ViTConfig(layer_scale_init=float("inf"))
    with pytest.raises(ConfigError, match="img_size must be .* got '224'"):
        vitlab.ViTConfig(img_size="224")
    cfg = vitlab.ViTConfig(img_size=[64, 32], norm_eps=1, layer_scale_init=1)  # normalised, not refused
    assert cfg.img_size == (64, 32) and isinstance(cfg.norm_eps, float) and cfg.layer_scale_init == 1.0


# ------------------------------------------------------------- case 3: an unwritable destination, before loading


@pytest.mark.parametrize("dst", [UNWRITABLE, "file/m.safetensors", "folder"])
def test_an_unwritable_destination_is_one_line_before_any_work(src, tmp_path, capsys, dst):
    (tmp_path / "file").write_text("a regular file in the way")
    (tmp_path / "folder").mkdir()
    path = dst if dst.startswith("/") else str(tmp_path / dst)
    fails(["convert", str(src), path], capsys, tmp_path, path)
    with pytest.raises(OutputError, match=re.escape(path)):  # the function checks it too, for its callers
        convert(str(src), path, to="vitlab")


# ------------------------------------------------------------- case 4: a suffix that contradicts --to


@pytest.mark.parametrize("to,name,needs", [("npz", "x.safetensors", "are .npz files"), ("npz", "x.pth", ".npz"),
                                           ("timm", "x.npz", "is a .safetensors, .pth, .pt or .bin file"),
                                           ("vitlab", "x.pth", "are .safetensors files")])
def test_a_suffix_that_contradicts_to_is_refused(src, tmp_path, capsys, to, name, needs):
    fails(["convert", str(src), str(tmp_path / name), "--to", to], capsys, tmp_path, f"--to {to}", name, needs)


@pytest.mark.parametrize("name", ["x.safetensors", "x.pth"])
def test_a_timm_export_reads_back_under_either_suffix(src, tmp_path, capsys, name):
    runs(["convert", str(src), str(tmp_path / name), "--to", "timm"], capsys)
    back = vitlab.load(tmp_path / name)
    assert back.source_format == "timm"
    torch.testing.assert_close(logits(back), logits(vitlab.load(src)))


def test_the_writers_refuse_a_suffix_load_would_misread(src, tmp_path):
    model = vitlab.load(src)
    with pytest.raises(CheckpointError, match="Google's checkpoints are .npz files"):
        vitlab.export_npz(model, tmp_path / "x.safetensors")
    with pytest.raises(CheckpointError, match="a timm state dict is a .safetensors, .pth"):
        vitlab.export_timm(model, tmp_path / "x.npz")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]


# ------------------------------------------------------------- case 5: the mode of the file written


@pytest.mark.parametrize("dst", ["out.safetensors", "out.pth", "out.npz"])
def test_converting_over_a_file_keeps_its_mode(src, tmp_path, capsys, dst):
    out = tmp_path / dst
    out.write_bytes(b"old")
    for mode in (0o644, 0o640):
        out.chmod(mode)
        runs(["convert", str(src), str(out)], capsys)
        assert out.stat().st_mode & 0o777 == mode and out.read_bytes() != b"old"


def test_a_new_file_gets_the_mode_open_gives(src, tmp_path, capsys):
    old = os.umask(0o027)
    try:
        runs(["convert", str(src), str(tmp_path / "out.safetensors")], capsys)
        (tmp_path / "plain").open("w").close()
    finally:
        os.umask(old)
    assert (tmp_path / "out.safetensors").stat().st_mode & 0o777 == (tmp_path / "plain").stat().st_mode & 0o777
    assert (tmp_path / "plain").stat().st_mode & 0o777 == 0o640


# ------------------------------------------------------------- case 6: a killed writer's temporary file


def test_a_dead_writers_temporary_file_is_removed_and_a_live_ones_kept(src, tmp_path, capsys):
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()  # reaped: its pid names no process now
    dead = tmp_path / f".out.safetensors.tmp-{child.pid}"
    live = tmp_path / f".out.safetensors.tmp-{os.getppid()}"  # a write in progress in a live process
    other = tmp_path / f".other.safetensors.tmp-{child.pid}"  # another destination's: not this write's business
    for tmp in (dead, live, other):
        tmp.write_bytes(b"partial model")
    runs(["convert", str(src), str(tmp_path / "out.safetensors")], capsys)
    assert not dead.exists() and live.exists() and other.exists()
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == ["m.safetensors",
                                                                                       "out.safetensors"]


# ------------------------------------------------------------- case 7: a setting the file contradicts


@pytest.mark.parametrize("setting,stated", [("num_heads=4", "num_heads=3"), ("mlp_act=quick_gelu", "mlp_act=gelu"),
                                            ("norm_eps=1e-05", "norm_eps=1e-06"), ("qkv_bias=false", "qkv_bias=true")])
def test_a_setting_the_file_states_otherwise_is_refused(src, tmp_path, capsys, setting, stated):
    fails(["convert", str(src), str(tmp_path / "out.safetensors"), "--set", setting], capsys, tmp_path,
          f"m.safetensors (the metadata) states {stated}; --set {setting} contradicts it", "drop --set")


def test_a_setting_the_file_agrees_with_or_that_leaves_the_outputs_is_taken(src, tmp_path, capsys):
    runs(["convert", str(src), str(tmp_path / "a.safetensors"), "--set", "num_heads=3", "--set",
          "drop_path_rate=0.1", "--set", "pos_resample=bicubic"], capsys)
    cfg = vitlab.load(tmp_path / "a.safetensors").config
    assert (cfg.num_heads, cfg.drop_path_rate, cfg.pos_resample) == (3, 0.1, "bicubic")


def test_a_bare_state_dict_takes_what_it_cannot_state(src, tmp_path, capsys):
    vitlab.export_timm(vitlab.load(src), tmp_path / "bare.pth")
    runs(["convert", str(tmp_path / "bare.pth"), str(tmp_path / "a.safetensors"), "--set", "mlp_act=quick_gelu"],
         capsys)
    assert vitlab.load(tmp_path / "a.safetensors").config.mlp_act == "quick_gelu"


def test_a_config_json_states_its_fields(src, tmp_path, capsys):
    """A timm hub folder: its config.json states the heads (model_args), which the weights do not."""
    import json

    (tmp_path / "hub").mkdir()
    vitlab.export_timm(vitlab.load(src), tmp_path / "hub" / "model.safetensors")
    args = {"img_size": 32, "patch_size": 4, "depth": 1, "num_heads": 3}
    (tmp_path / "hub" / "config.json").write_text(json.dumps({"architecture": "vit_tiny_patch16_224",
                                                              "model_args": args}))
    fails(["convert", str(tmp_path / "hub"), str(tmp_path / "out.safetensors"), "--set", "num_heads=4"], capsys,
          tmp_path, "hub (config.json) states num_heads=3; --set num_heads=4 contradicts it")
    runs(["convert", str(tmp_path / "hub"), str(tmp_path / "out.safetensors"), "--set", "num_heads=3", "--set",
          "drop_path_rate=0.1"], capsys)  # the value it states, and a field that leaves the outputs as they are


def test_the_library_says_loudly_when_an_argument_overrides_the_file(src):
    with pytest.warns(OverriddenSetting, match=r"m.safetensors \(the metadata\) states num_heads=3; the argument "
                                               r"num_heads=4 overrides it"):
        assert vitlab.load(src, num_heads=4).config.num_heads == 4


# ------------------------------------------------------------- case 8: the writers' own faults


WRITERS = [(vitlab.save, "out.safetensors", "vitlab.checkpoint.save_file"),
           (vitlab.export_timm, "out.pth", "torch.save"),
           (vitlab.export_npz, "out.npz", "numpy.savez")]


@pytest.mark.parametrize("write,name,_", WRITERS, ids=[w.__name__ for w, *_ in WRITERS])
def test_a_writer_into_a_folder_or_under_a_file_is_one_output_error(src, tmp_path, write, name, _):
    model = vitlab.load(src)
    (tmp_path / name).mkdir()
    (tmp_path / "file").write_text("in the way")
    before = snapshot(tmp_path)
    with pytest.raises(OutputError, match=f"cannot write {re.escape(str(tmp_path / name))}: it is a folder"):
        write(model, tmp_path / name)
    with pytest.raises(OutputError, match="cannot make the folder of .*file/"):
        write(model, tmp_path / "file" / name)
    assert snapshot(tmp_path) == before and sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["m.safetensors", name, "file"])


@pytest.mark.parametrize("write,name,library_call", WRITERS, ids=[w.__name__ for w, *_ in WRITERS])
def test_a_full_disk_is_one_line_and_the_previous_file_intact(src, tmp_path, capsys, monkeypatch, write, name,
                                                               library_call):
    runs(["convert", str(src), str(tmp_path / name)], capsys)  # the previous file

    def full_disk(*args, **kwargs):  # (state dict, path) for save_file and torch.save, (file, **arrays) for savez
        dest = args[1] if len(args) > 1 else args[0]
        Path(dest if isinstance(dest, (str, Path)) else dest.name).write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(library_call, full_disk)
    err = fails(["convert", str(src), str(tmp_path / name)], capsys, tmp_path, "no space left on the device to write",
                name)
    assert ".tmp-" not in err
    vitlab.load(tmp_path / name)  # the previous file still loads

