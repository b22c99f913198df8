import json
import pickle
import random

import pytest
import torch
from conftest import randomize_
from safetensors import safe_open
from safetensors.torch import save_file

import vitlab
from vitlab import CheckpointError, Preprocessing


def tiny(**kw):
    return randomize_(vitlab.create_model("Ti/16", depth=2, img_size=64, num_classes=3, **kw))


def test_save_load_round_trip_carries_config_preprocessing_and_class_names(tmp_path):
    model = tiny(stem="conv", pos_embed="sincos2d", num_register_tokens=1, pool="gap", representation_size=32)
    pre = Preprocessing(img_size=(64, 64), mean=(0.1, 0.2, 0.3), std=(0.4, 0.5, 0.6), crop_pct=1.0)
    path = vitlab.save(model, tmp_path / "m.safetensors", preprocessing=pre, class_names=["a", "b", "c"])
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    assert meta["format"] == "vitlab" and meta["format_version"] == "1"
    loaded = vitlab.load(path).eval()
    assert loaded.config == model.config
    assert loaded.preprocessing == pre and loaded.class_names == ["a", "b", "c"]
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), atol=0, rtol=0)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary file left


def test_load_with_new_size_and_class_count(tmp_path):
    model = tiny()
    path = vitlab.save(model, tmp_path / "m.safetensors", class_names=["a", "b", "c"])
    with pytest.warns(UserWarning, match="3 classes, 10 were asked for"):
        loaded = vitlab.load(path, num_classes=10, img_size=96)
    assert loaded.config.num_classes == 10 and loaded.config.img_size == (96, 96)
    assert loaded.head.weight.abs().sum() == 0 and loaded.class_names is None
    assert not any(t.is_meta for t in loaded.state_dict().values())
    assert loaded.preprocessing.img_size == (96, 96)
    assert loaded.pos_embed.shape == (1, 1 + 36, 192)
    torch.testing.assert_close(loaded.blocks[1].mlp.fc2.weight, model.blocks[1].mlp.fc2.weight)


def test_create_model_from_local_checkpoint_with_overrides(tmp_path):
    path = vitlab.save(tiny(), tmp_path / "m.safetensors")
    model = vitlab.create_model("Ti/16", pretrained=str(path), drop_path_rate=0.1)
    assert model.config.drop_path_rate == 0.1 and model.config.depth == 2


def test_save_is_atomic_when_the_write_fails(tmp_path, monkeypatch):
    path = vitlab.save(tiny(), tmp_path / "m.safetensors")
    before = path.read_bytes()

    def full_disk(*args, **kwargs):
        with open(args[1], "wb") as f:
            f.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("vitlab.checkpoint.save_file", full_disk)
    with pytest.raises(OSError, match=r"no space left on the device to write .*m\.safetensors \(.* free in "):
        vitlab.save(tiny(), path)
    assert path.read_bytes() == before  # the old checkpoint is intact
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]  # and no partial file left behind
    vitlab.load(path)


def test_truncated_and_corrupt_checkpoints_are_clear_errors(tmp_path):
    path = vitlab.save(tiny(), tmp_path / "m.safetensors")
    data = path.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="cut.safetensors is not a readable .safetensors"):
        vitlab.load(tmp_path / "cut.safetensors")
    torch.save(tiny().state_dict(), tmp_path / "m.pth")
    data = (tmp_path / "m.pth").read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 3])
    with pytest.raises(CheckpointError, match="cut.pth is not a readable PyTorch checkpoint"):
        vitlab.load(tmp_path / "cut.pth")
    rng = random.Random(0)
    for _ in range(300):  # random bytes hit many different failure paths of the unpickler: all must be clear
        (tmp_path / "noise.bin").write_bytes(rng.randbytes(rng.choice([10, 100, 1000])))
        with pytest.raises(CheckpointError, match="noise.bin"):
            vitlab.load(tmp_path / "noise.bin")
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        vitlab.load(tmp_path / "absent.pth")


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_a_pickle_that_would_run_code_is_refused_and_not_run(tmp_path):
    marker = tmp_path / "pwned"
    with open(tmp_path / "evil.pth", "wb") as f:
        pickle.dump({"model": _RunsCode(str(marker))}, f)
    with pytest.raises(CheckpointError, match="refused to load .*evil.pth.*never does"):
        vitlab.load(tmp_path / "evil.pth")
    assert not marker.exists()


def test_a_checkpoint_of_another_architecture_is_named(tmp_path):
    resnet = {"conv1.weight": torch.randn(64, 3, 7, 7), "bn1.weight": torch.ones(64), "fc.weight": torch.randn(10, 512)}
    torch.save({"state_dict": resnet}, tmp_path / "resnet.pth")
    with pytest.raises(CheckpointError, match="resnet.pth is not a ViT checkpoint vitlab recognises.*conv1.weight"):
        vitlab.load(tmp_path / "resnet.pth")


def test_a_wrong_shaped_checkpoint_is_an_error_not_a_silent_partial_load(tmp_path):
    sd = tiny().state_dict()
    sd["blocks.1.mlp.fc1.weight"] = torch.randn(100, 192)  # block 1's MLP width disagrees with block 0's
    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp_path / "bad.safetensors"))
    with pytest.raises(CheckpointError, match=r"bad.safetensors: blocks.1.mlp.fc1.weight is \(100, 192\) but the "
                                              r"architecture read from the checkpoint gives it \(768, 192\)$"):
        vitlab.load(tmp_path / "bad.safetensors")
    sd = tiny().state_dict()
    del sd["blocks.0.norm2.weight"]
    sd["blocks.0.extra.weight"] = torch.zeros(1)
    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp_path / "odd.safetensors"))
    with pytest.raises(CheckpointError, match=r"missing keys \['blocks.0.norm2.weight'\].*blocks.0.extra.weight"):
        vitlab.load(tmp_path / "odd.safetensors")
    with pytest.warns(UserWarning, match="missing keys"):
        loaded = vitlab.load(tmp_path / "odd.safetensors", strict=False)
    assert torch.equal(loaded.blocks[0].norm2.weight, torch.ones(192))  # the missing tensor got its init
    assert not any(t.is_meta for t in loaded.state_dict().values())
    assert torch.isfinite(loaded(torch.randn(1, 3, 64, 64))).all()


def test_a_vitlab_file_whose_config_does_not_match_its_weights(tmp_path):
    model = tiny()
    meta = {"format": "vitlab", "format_version": "1", "config": json.dumps(model.config.replace(embed_dim=96,
                                                                                               num_heads=3).to_dict())}
    sd = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(sd, str(tmp_path / "lie.safetensors"), metadata=meta)
    with pytest.raises(CheckpointError, match=r"lie.safetensors: the metadata says embed_dim=96 but "
                                              r"blocks.0.attn.qkv.weight is \(576, 192\) \(embed_dim 192\)$"):
        vitlab.load(tmp_path / "lie.safetensors")
    meta["format_version"] = "99"
    save_file(sd, str(tmp_path / "future.safetensors"), metadata=meta)
    with pytest.raises(CheckpointError, match="newer vitlab"):
        vitlab.load(tmp_path / "future.safetensors")


def test_training_checkpoint_wrappers_and_ddp_prefix(tmp_path):
    model = tiny()
    wrapped = {"epoch": 3, "model": {f"module.{k}": v for k, v in model.state_dict().items()}}
    torch.save(wrapped, tmp_path / "train.pth")
    loaded = vitlab.load(tmp_path / "train.pth").eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))


def test_unusual_width_needs_num_heads(tmp_path):
    model = randomize_(vitlab.VisionTransformer(vitlab.ViTConfig(embed_dim=80, num_heads=5, depth=1, mlp_dim=90,
                                                                 img_size=32, patch_size=8)))
    torch.save(model.state_dict(), tmp_path / "odd.pth")
    with pytest.raises(CheckpointError, match="pass num_heads"):
        vitlab.load(tmp_path / "odd.pth")
    loaded = vitlab.load(tmp_path / "odd.pth", num_heads=5).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))


def test_save_rejects_wrong_suffix_and_class_count(tmp_path):
    with pytest.raises(ValueError, match=".safetensors"):
        vitlab.save(tiny(), tmp_path / "m.pth")
    with pytest.raises(ValueError, match="2 class names for a model with 3 classes"):
        vitlab.save(tiny(), tmp_path / "m.safetensors", class_names=["a", "b"])
