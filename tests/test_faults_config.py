"""Fault corpus, configuration: every bad config value is refused at the boundary with one line naming the key,
before any run folder or file is written (issue 12, item 6)."""

import pytest

from vitlab.cli import main

BAD_OVERRIDES = [
    ("model.overrides.img_size=30", "model.overrides.img_size: the trained model's img_size comes from data.img"),
    ("model.overrides.num_classes=3", "model.overrides.num_classes"),
    ("model.overrides.patch_size=5", "patch_size must be a power of 2"),
    ("model.overrides.depth=0", "depth must be an integer >= 1, got 0"),
    ("model.overrides.wings=2", r"unknown ViTConfig field\(s\) \['wings'\]"),
    ("model.name=B/99", "unknown model 'vit_base_patch99_224'"),
    ("ckpt_every_steps=0", "ckpt_every_steps must be > 0, got 0"),
    ("optim.accum_steps=0", "optim.accum_steps must be > 0, got 0"),
    ("optim.lr=-1", "optim.lr must be > 0"),
    ("optim.betas=[0.9, 1.5]", r"optim.betas\[1\] must be in \[0, 1\)"),
    ("optim.optimizer=lion", "optim.optimizer='lion' is not one of 'adamw', 'sgd'"),
    ("data.batch_size=0", "data.batch_size must be > 0"),
    ("data.val_fraction=1.0", r"data.val_fraction must be in \[0, 1\)"),
    ("data.mix_prob=2", r"data.mix_prob must be in \[0, 1\]"),
    ("data.auto_augment=magic", "data.auto_augment='magic' is not one of"),
    ("epochs=0", "epochs must be > 0"),
    ("keep_last=0", "keep_last must be > 0"),
    ("ema_decay=1.0", r"ema_decay must be in \[0, 1\)"),
    ("amp=fp8", "amp='fp8' is not one of 'none', 'bf16'"),
    ("log_every_steps=-3", "log_every_steps must be > 0"),
]


@pytest.mark.parametrize("override,message", BAD_OVERRIDES, ids=[o.split("=")[0] for o, _ in BAD_OVERRIDES])
def test_a_bad_config_value_is_one_line_naming_the_key_and_writes_nothing(capsys, tmp_path, override, message):
    import re

    code = main(["train", "--recipe", "demo", "--set", override, "--out", str(tmp_path), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("vitlab: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert re.search(message, err), err
    assert list(tmp_path.iterdir()) == []  # no run folder was started


def test_convert_with_a_negative_class_count_is_refused(capsys, tmp_path):
    import vitlab

    src = vitlab.save(vitlab.create_model("Ti/4@32", depth=1), tmp_path / "m.safetensors")
    before = src.read_bytes()
    code = main(["convert", str(src), str(tmp_path / "out.safetensors"), "--num-classes", "-1"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "--num-classes" in err and "-1" in err, err
    assert src.read_bytes() == before and not (tmp_path / "out.safetensors").exists()
