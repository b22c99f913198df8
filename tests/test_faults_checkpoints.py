"""The fault campaign's checkpoint and config-file cases (issue 12), as a corpus run through the command line.

Every bad input is made here, in tmp_path, from tiny models. Each case asserts what a user sees: exit status 2,
exactly one line on stderr (``vitlab: error: ...``, no traceback) that names the file and the problem, and that
nothing else changed (every file in the folder is as it was; nothing new, such as a partial output, appeared).

The cases that already passed on e97456e are kept as regression guards (a pickle whose payload would run, a
truncated .safetensors, random bytes, an empty or missing file, a folder without config.json, a non-ViT state
dict, a newer format version, an .npz missing a tensor, an output suffix vitlab cannot write). The others
failed there: config files that are not JSON (item 8: a bare JSONDecodeError naming no file), a transformers
config.json the weights contradict (item 10: loaded silently), a config that contradicts the weights' shapes
(item 11: one line per tensor), and vitlab's own training checkpoints (item 9: "cannot tell the number of heads").
"""

import json
import pickle
import random
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import randomize_
from PIL import Image
from safetensors.torch import save_file

import vitlab
from vitlab.checkpoint import model_metadata
from vitlab.cli import main
from vitlab.data import SHAPES_CLASS_NAMES
from vitlab.train.state import save_state

ONE_LINE_ERROR = re.compile(r"^vitlab: error: [^\n]+\n$")


def tiny_vit(**kw):
    """A 16 px ViT with a width no standard size has (96: its head count is not in the weights)."""
    cfg = dict(img_size=16, patch_size=4, embed_dim=96, depth=2, num_heads=2, mlp_dim=64, num_classes=3)
    return randomize_(vitlab.VisionTransformer(vitlab.ViTConfig(**{**cfg, **kw})))


def plain_sd(model):
    return {k: v.contiguous() for k, v in model.state_dict().items()}


def vitlab_file(path, model, **meta_changes):
    """A vitlab .safetensors whose metadata fields can be replaced by any string."""
    meta = {**model_metadata(model, class_names=["a", "b", "c"][:model.config.num_classes]), **meta_changes}
    save_file(plain_sd(model), str(path), metadata=meta)
    return path


def hf_folder(path, model, **config_changes):
    """A transformers ``save_pretrained`` folder of a ViTForImageClassification, written by hand (the names of
    vitlab.convert.hf, run backwards), so the corpus needs no transformers import."""
    cfg, sd = model.config, model.state_dict()
    out = {"vit.embeddings.cls_token": sd["cls_token"], "vit.embeddings.position_embeddings": sd["pos_embed"],
           "vit.embeddings.patch_embeddings.projection.weight": sd["patch_embed.proj.weight"],
           "vit.embeddings.patch_embeddings.projection.bias": sd["patch_embed.proj.bias"],
           "vit.layernorm.weight": sd["norm.weight"], "vit.layernorm.bias": sd["norm.bias"],
           "classifier.weight": sd["head.weight"], "classifier.bias": sd["head.bias"]}
    names = {"norm1": "layernorm_before", "norm2": "layernorm_after", "attn.proj": "attention.output.dense",
             "mlp.fc1": "intermediate.dense", "mlp.fc2": "output.dense"}
    for i in range(cfg.depth):
        layer = f"vit.encoder.layer.{i}."
        for param in ("weight", "bias"):
            for ours, theirs in names.items():
                out[f"{layer}{theirs}.{param}"] = sd[f"blocks.{i}.{ours}.{param}"]
            q, k, v = sd[f"blocks.{i}.attn.qkv.{param}"].chunk(3)  # rows [q; k; v]
            for part, t in zip(("query", "key", "value"), (q, k, v), strict=True):
                out[f"{layer}attention.attention.{part}.{param}"] = t
    path.mkdir()
    save_file({k: v.contiguous() for k, v in out.items()}, str(path / "model.safetensors"))
    config = {"model_type": "vit", "architectures": ["ViTForImageClassification"], "hidden_size": cfg.embed_dim,
              "num_hidden_layers": cfg.depth, "num_attention_heads": cfg.num_heads,
              "intermediate_size": cfg.mlp_dim, "image_size": cfg.img_size[0], "patch_size": cfg.patch_size,
              "num_channels": cfg.in_chans, "layer_norm_eps": cfg.norm_eps, "qkv_bias": cfg.qkv_bias,
              "hidden_act": "gelu", "id2label": {str(i): n for i, n in enumerate("xyz"[:cfg.num_classes])}}
    (path / "config.json").write_text(json.dumps({**config, **config_changes}))
    return path


def train_checkpoint(run_dir, model, *, name="vit_tiny_patch4_32", overrides=None, init="", ema=None,
                     dataset="shapes", image_size=0, **extra):
    """A training checkpoint as the trainer writes it (vitlab.train.state.save_state with the trainer's keys)."""
    config = {"model": {"name": name, "init": init, "overrides": overrides or {}},
              "data": {"dataset": dataset, "image_size": image_size}, "ema_decay": 0.999 if ema else 0.0}
    state = {"model": model.state_dict(), "optimizer": {}, "ema": ema.state_dict() if ema else {}, "step": 7,
             "epoch": 0, "batch_in_epoch": 7, "best_acc": -1.0, "config": config, "train_seconds": 1.0,
             "warmup_seconds": 0.0, **extra}
    return save_state(Path(run_dir), state, keep_last=2)


def tiny_run(tmp_path, **kw):
    """A 6-class shapes run of vit_tiny_patch4_32 made narrow by its overrides; its model and checkpoint."""
    model = tiny_vit(num_classes=6)
    overrides = dict(embed_dim=96, depth=2, num_heads=2, mlp_dim=64)
    return model, train_checkpoint(tmp_path / "run", model, overrides=overrides, **kw)


def png(path, size=16):
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path)
    return path


def snapshot(folder):
    return {p: p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ----------------------------------------------------------------------------------------------- the corpus
# Each case makes its files in tmp_path and returns the command line and what its one error line must say.


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))  # unpickling would create the marker file


def pickle_payload(tmp):
    with open(tmp / "evil.pth", "wb") as f:
        pickle.dump({"model": _RunsCode(str(tmp / "PAYLOAD_RAN"))}, f, protocol=2)  # torch.save's protocol
    return ["predict", str(png(tmp / "x.png")), "--model", str(tmp / "evil.pth")], ["refused to load .*evil.pth",
                                                                                   "never does"]


def truncated_safetensors(tmp):
    data = vitlab_file(tmp / "m.safetensors", tiny_vit()).read_bytes()
    (tmp / "cut.safetensors").write_bytes(data[: len(data) // 2])
    return ["info", str(tmp / "cut.safetensors")], ["cut.safetensors", "not a readable .safetensors"]


def random_bytes_pth(tmp):
    (tmp / "noise.pth").write_bytes(random.Random(0).randbytes(1000))
    return ["info", str(tmp / "noise.pth")], ["refused to load .*noise.pth"]  # the weights-only unpickler stops


def empty_pth(tmp):
    (tmp / "empty.pth").write_bytes(b"")
    return ["info", str(tmp / "empty.pth")], ["empty.pth", "not a readable PyTorch checkpoint"]


def empty_safetensors(tmp):
    (tmp / "empty.safetensors").write_bytes(b"")
    return ["convert", str(tmp / "empty.safetensors"), str(tmp / "out.npz")], ["empty.safetensors", "not a readable"]


def missing_file(tmp):
    return ["info", str(tmp / "absent.pth")], ["checkpoint not found", "absent.pth"]


def folder_without_config(tmp):
    (tmp / "weights").mkdir()
    save_file(plain_sd(tiny_vit()), str(tmp / "weights" / "model.safetensors"))
    return ["info", str(tmp / "weights")], ["weights is a folder without config.json"]


def resnet_state_dict(tmp):
    from torchvision.models.resnet import BasicBlock, ResNet

    torch.save(ResNet(BasicBlock, [1, 1, 1, 1], num_classes=4).state_dict(), tmp / "resnet.pth")
    return ["info", str(tmp / "resnet.pth")], ["resnet.pth is not a ViT checkpoint vitlab recognises", "conv1.weight"]


def newer_format_version(tmp):
    vitlab_file(tmp / "future.safetensors", tiny_vit(), format_version="99")
    return ["info", str(tmp / "future.safetensors")], ["future.safetensors was written by a newer vitlab"]


def npz_missing_tensor(tmp):
    vitlab.export_npz(tiny_vit(), tmp / "full.npz")
    arrays = dict(np.load(tmp / "full.npz"))
    del arrays["Transformer/encoderblock_1/MlpBlock_3/Dense_0/kernel"]
    np.savez(tmp / "part.npz", **arrays)
    return ["info", str(tmp / "part.npz")], ["part.npz", "encoderblock_1/MlpBlock_3/Dense_0/kernel is missing"]


def convert_to_unknown_suffix(tmp):
    vitlab_file(tmp / "m.safetensors", tiny_vit())
    return ["convert", str(tmp / "m.safetensors"), str(tmp / "out.onnx2")], ["cannot tell the output format",
                                                                            "out.onnx2"]


def tensor_of_wrong_shape(tmp):  # one tensor disagrees with its siblings (was: the RuntimeError, 2 lines)
    sd = plain_sd(tiny_vit(embed_dim=192, num_heads=3))  # a bare state dict: a width whose heads are known
    sd["blocks.1.mlp.fc1.weight"] = torch.randn(100, 192)
    save_file(sd, str(tmp / "bad.safetensors"))
    return ["info", str(tmp / "bad.safetensors")], [r"bad.safetensors: blocks.1.mlp.fc1.weight is \(100, 192\) but",
                                                     r"gives it \(64, 192\)$"]


# Item 8: config files that are not JSON.
def metadata_config_not_json(tmp):
    vitlab_file(tmp / "m.safetensors", tiny_vit(), config='{"embed_dim": 96,')
    return ["info", str(tmp / "m.safetensors")], ["m.safetensors: the metadata field 'config' is not valid JSON"]


def metadata_preprocessing_not_json(tmp):
    vitlab_file(tmp / "m.safetensors", tiny_vit(), preprocessing="{mean: [0.5]}")
    return ["predict", str(png(tmp / "x.png")), "-m", str(tmp / "m.safetensors")], [
        "m.safetensors: the metadata field 'preprocessing' is not valid JSON"]


def metadata_class_names_not_json(tmp):
    vitlab_file(tmp / "m.safetensors", tiny_vit(), class_names="['a', 'b', 'c']")
    return ["convert", str(tmp / "m.safetensors"), str(tmp / "out.pth")], [
        "m.safetensors: the metadata field 'class_names' is not valid JSON"]


def hf_config_not_json(tmp):
    hf_folder(tmp / "hf", tiny_vit())
    (tmp / "hf" / "config.json").write_text('{"model_type": "vit", "hidden_size": 96,,}')
    return ["info", str(tmp / "hf")], [r"hf/config.json is not valid JSON \(.* at line 1 column 41\)"]


def timm_hub_config_not_json(tmp):
    (tmp / "hub").mkdir()
    save_file(plain_sd(tiny_vit()), str(tmp / "hub" / "model.safetensors"))
    (tmp / "hub" / "config.json").write_text('{"architecture": "vit_tiny_patch4_32", "num_classes": 3')
    return ["info", str(tmp / "hub")], ["hub/config.json is not valid JSON"]


def config_json_not_text(tmp):
    hf_folder(tmp / "hf", tiny_vit())
    (tmp / "hf" / "config.json").write_bytes(b"\xff\xfe\x00garbage\x80")
    return ["info", str(tmp / "hf")], ["hf/config.json is not valid JSON"]


def hf_preprocessor_config_not_json(tmp):
    hf_folder(tmp / "hf", tiny_vit())
    (tmp / "hf" / "preprocessor_config.json").write_text("image_mean = [0.5, 0.5, 0.5]")
    return ["info", str(tmp / "hf")], ["hf/preprocessor_config.json is not valid JSON"]


def hf_shard_index_not_json(tmp):
    hf_folder(tmp / "hf", tiny_vit())
    (tmp / "hf" / "model.safetensors").rename(tmp / "hf" / "model-00001-of-00001.safetensors")
    (tmp / "hf" / "model.safetensors.index.json").write_text('{"weight_map": {"a": "model-00001-of-00001')
    return ["info", str(tmp / "hf")], ["hf/model.safetensors.index.json is not valid JSON"]


# Item 10: a transformers config.json the weights contradict.
def _hf_contradiction(field, stated, found):
    def case(tmp):
        hf_folder(tmp / "hf", tiny_vit(), **{field: stated})
        return ["info", str(tmp / "hf")], [f"config.json says {field}={stated!r} but the weights have {field} {found}$"]
    case.__name__ = f"hf_config_{field}_contradicts_weights"
    return case


def hf_heads_do_not_divide(tmp):
    hf_folder(tmp / "hf", tiny_vit(), num_attention_heads=5)
    return ["info", str(tmp / "hf")], ["config.json says num_attention_heads=5, which does not divide the weights' "
                                       "hidden_size 96"]


def hf_image_size_contradicts_weights(tmp):
    hf_folder(tmp / "hf", tiny_vit(), image_size=32)
    return ["info", str(tmp / "hf")], [r"config.json says image_size=32 \(65 position rows at patch 4\) but the "
                                       "weights' position table has 17 rows"]


# Item 11: a config the weights contradict, in one line with both values.
def metadata_claims_wrong_width(tmp):
    vitlab_file(tmp / "m.safetensors", tiny_vit(), config=json.dumps(tiny_vit().config.replace(
        embed_dim=384, num_heads=6).to_dict()))
    return ["info", str(tmp / "m.safetensors")], [
        r"m.safetensors: the metadata says embed_dim=384 but blocks.0.attn.qkv.weight is \(288, 96\) "
        r"\(embed_dim 96\)$"]


def metadata_claims_wrong_depth(tmp):
    vitlab_file(tmp / "m.safetensors", tiny_vit(), config=json.dumps(tiny_vit().config.replace(depth=12).to_dict()))
    return ["predict", str(png(tmp / "x.png")), "-m", str(tmp / "m.safetensors")], [
        r"the metadata says depth=12 but the weights hold blocks.0 to blocks.1 \(depth 2\)$"]


def metadata_claims_wrong_image_size(tmp):
    vitlab_file(tmp / "m.safetensors", tiny_vit(), config=json.dumps(tiny_vit().config.replace(img_size=32).to_dict()))
    return ["info", str(tmp / "m.safetensors")], [r"the metadata says img_size=\(32, 32\) .* but pos_embed is "
                                                  r"\(1, 17, 96\)$"]


def metadata_class_names_for_another_head(tmp):
    vitlab_file(tmp / "m.safetensors", tiny_vit(), class_names=json.dumps(["a", "b"]))
    return ["info", str(tmp / "m.safetensors")], ["the metadata has 2 class names for a head of 3 classes"]


# Item 9: a training checkpoint that cannot be read says why, in one line.
def train_checkpoint_from_newer_vitlab(tmp):
    _, path = tiny_run(tmp, format_version=99)
    return ["info", str(path)], [r"ckpt-step00000007.pt was written by a newer vitlab \(training checkpoint format "
                                 "99 > 1\\)"]


def train_config_contradicts_weights(tmp):
    model = tiny_vit(num_classes=6)
    path = train_checkpoint(tmp / "run", model, overrides=dict(embed_dim=96, depth=4, num_heads=2, mlp_dim=64))
    return ["info", str(path)], [r"the training config says depth=4 but the weights hold blocks.0 to blocks.1"]


PASSED_BEFORE = [pickle_payload, truncated_safetensors, random_bytes_pth, empty_pth, empty_safetensors, missing_file,
                 folder_without_config, resnet_state_dict, newer_format_version, npz_missing_tensor,
                 convert_to_unknown_suffix]
NEW = [tensor_of_wrong_shape, metadata_config_not_json, metadata_preprocessing_not_json,
       metadata_class_names_not_json, hf_config_not_json, timm_hub_config_not_json, config_json_not_text,
       hf_preprocessor_config_not_json, hf_shard_index_not_json, _hf_contradiction("hidden_size", 128, 96),
       _hf_contradiction("num_hidden_layers", 12, 2), _hf_contradiction("intermediate_size", 384, 64),
       _hf_contradiction("patch_size", 8, 4), _hf_contradiction("num_channels", 1, 3), hf_heads_do_not_divide,
       hf_image_size_contradicts_weights, metadata_claims_wrong_width, metadata_claims_wrong_depth,
       metadata_claims_wrong_image_size, metadata_class_names_for_another_head, train_checkpoint_from_newer_vitlab,
       train_config_contradicts_weights]


@pytest.mark.parametrize("case", PASSED_BEFORE + NEW, ids=lambda c: c.__name__)
def test_a_bad_checkpoint_is_one_error_line_and_changes_nothing(case, tmp_path, capsys):
    argv, says = case(tmp_path)
    before = snapshot(tmp_path)
    status = main(argv)
    out, err = capsys.readouterr()
    assert status == 2, (status, out, err)
    assert "Traceback" not in err and ONE_LINE_ERROR.match(err), err
    for pattern in says:
        assert re.search(pattern, err.rstrip("\n")), (pattern, err)
    assert snapshot(tmp_path) == before  # every file as it was, no output or temporary file left, no payload ran


def test_the_pickle_payload_never_ran(tmp_path, capsys):
    argv, _ = pickle_payload(tmp_path)
    assert main(argv) == 2 and "refused" in capsys.readouterr().err
    assert not (tmp_path / "PAYLOAD_RAN").exists()


# ------------------------------------------------------------------- item 9: vitlab's training checkpoints


def _logits(model, size=16):
    with torch.no_grad():
        return model.eval()(torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1)))


def test_a_training_checkpoint_loads_as_the_model_it_trained(tmp_path):
    model, path = tiny_run(tmp_path)
    loaded = vitlab.load(path)
    assert loaded.source_format == "vitlab-train"
    assert loaded.config == model.config  # registry config + overrides, head and image size from the weights
    torch.testing.assert_close(_logits(loaded), _logits(model), atol=0, rtol=0)
    assert loaded.class_names == SHAPES_CLASS_NAMES  # a shapes run: the data set's own names
    assert loaded.preprocessing == vitlab.Preprocessing.default_for(model.config)  # 16 px, no crop: as trained


def test_a_training_checkpoint_with_ema_gives_the_ema_weights(tmp_path):
    model, ema = tiny_vit(num_classes=6), tiny_vit(num_classes=6)
    path = train_checkpoint(tmp_path / "run", model, ema=ema, overrides=dict(embed_dim=96, depth=2, num_heads=2,
                                                                             mlp_dim=64))
    loaded = vitlab.load(path)
    torch.testing.assert_close(_logits(loaded), _logits(ema), atol=0, rtol=0)
    assert not torch.allclose(_logits(loaded), _logits(model))


def test_model_meta_in_the_checkpoint_wins(tmp_path):
    """The trainer may store the model's own metadata (vitlab.checkpoint.model_metadata): read as it is."""
    model = tiny_vit(num_classes=3, pool="gap", fc_norm=True)
    pre = vitlab.Preprocessing(img_size=(16, 16), mean=(0.1, 0.2, 0.3), std=(0.3, 0.2, 0.1), crop_pct=0.8)
    meta = model_metadata(model, pre, ["ant", "bee", "cat"])
    path = train_checkpoint(tmp_path / "run", model, name="no_such_model", model_meta=meta)
    loaded = vitlab.load(path)
    assert (loaded.config, loaded.preprocessing, loaded.class_names) == (model.config, pre, ["ant", "bee", "cat"])
    torch.testing.assert_close(_logits(loaded), _logits(model), atol=0, rtol=0)


def test_a_resnet_run_loads_as_a_resnet(tmp_path):
    from vitlab.cnn import ResNet, create_resnet

    model = randomize_(create_resnet("resnet20", num_classes=4))
    for m in model.modules():  # trained BatchNorm statistics, not the init's
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
    path = train_checkpoint(tmp_path / "run", model, name="resnet20", dataset="cifar10")
    loaded = vitlab.load(path)
    assert isinstance(loaded, ResNet) and loaded.config == model.config and loaded.source_format == "vitlab-train"
    torch.testing.assert_close(_logits(loaded, 32), _logits(model, 32), atol=0, rtol=0)


def test_a_fine_tuning_run_takes_the_architecture_of_its_init(tmp_path):
    """model.init: the heads (4 for width 96: the weights cannot say) and the init's preprocessing, at the size
    the run trained at (the position table's)."""
    init = tiny_vit(num_heads=4, norm_eps=1e-12, num_classes=3)
    pre = vitlab.Preprocessing(img_size=(16, 16), mean=(0.1, 0.2, 0.3), std=(0.3, 0.2, 0.1), crop_pct=0.9)
    vitlab.save(init, tmp_path / "init.safetensors", preprocessing=pre)
    tuned = tiny_vit(num_heads=4, norm_eps=1e-12, num_classes=5, img_size=24)
    path = train_checkpoint(tmp_path / "run", tuned, init=str(tmp_path / "init.safetensors"), image_size=24,
                            dataset="folder:/data/x")
    loaded = vitlab.load(path)
    assert loaded.config == tuned.config
    assert loaded.preprocessing == pre.replace(img_size=(24, 24), crop_pct=1.0)  # held in memory: no crop
    torch.testing.assert_close(_logits(loaded, 24), _logits(tuned, 24), atol=0, rtol=0)


def test_a_fine_tuning_run_whose_init_is_not_here_reads_the_weights(tmp_path):
    tuned = randomize_(vitlab.create_model("vit_tiny_patch4_32", depth=1, num_classes=5, img_size=16))
    path = train_checkpoint(tmp_path / "run", tuned, init="hf-hub:someone/elsewhere")
    loaded = vitlab.load(path)
    assert loaded.config == tuned.config and loaded.source_format == "vitlab-train"  # width 192: 3 heads
    torch.testing.assert_close(_logits(loaded), _logits(tuned), atol=0, rtol=0)


def test_fine_tuning_from_a_training_checkpoint(tmp_path):
    """What the trainer does with model.init = a training checkpoint: a new head and another size."""
    model, path = tiny_run(tmp_path)
    with pytest.warns(UserWarning, match="6 classes, 2 were asked for"):
        tuned = vitlab.create_model(str(path), num_classes=2, img_size=24)
    assert (tuned.config.num_classes, tuned.config.img_size, tuned.config.num_heads) == (2, (24, 24), 2)
    torch.testing.assert_close(tuned.blocks[1].mlp.fc1.weight, model.blocks[1].mlp.fc1.weight)


def test_the_training_format_name_is_the_trainers():
    from vitlab.convert import train as train_convert
    from vitlab.train.state import TRAIN_FORMAT, TRAIN_FORMAT_VERSION

    assert (train_convert.TRAIN_FORMAT, train_convert.TRAIN_FORMAT_VERSION) == (TRAIN_FORMAT, TRAIN_FORMAT_VERSION)


def test_training_checkpoint_through_info_predict_and_convert(tmp_path, capsys):
    model, path = tiny_run(tmp_path)
    before = path.read_bytes()
    assert main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    assert "format         vitlab-train" in out and "class names    6 (circle, square" in out

    assert main(["predict", str(png(tmp_path / "x.png")), "-m", str(path), "-k", "2"]) == 0
    out, err = capsys.readouterr()
    assert err == "" and re.search(r"1\. \d\.\d{4}  (circle|square|triangle|star|cross|ring)", out)

    assert main(["convert", str(path), str(tmp_path / "out.safetensors")]) == 0
    assert "from vitlab-train" in capsys.readouterr().out
    converted = vitlab.load(tmp_path / "out.safetensors")
    torch.testing.assert_close(_logits(converted), _logits(model), atol=0, rtol=0)
    assert converted.class_names == SHAPES_CLASS_NAMES
    assert path.read_bytes() == before


# ------------------------------------------------------------ items 8, 10, 11 through the Python API


def test_errors_are_checkpoint_errors_naming_the_file(tmp_path):
    vitlab_file(tmp_path / "m.safetensors", tiny_vit(), config="[1, 2")
    with pytest.raises(vitlab.CheckpointError, match=r"m.safetensors: the metadata field 'config' is not valid JSON "
                                                     r"\(Expecting ',' delimiter at line 1 column 6\)$"):
        vitlab.load(tmp_path / "m.safetensors")
    vitlab_file(tmp_path / "list.safetensors", tiny_vit(), config="[1, 2]")
    with pytest.raises(vitlab.CheckpointError, match="list.safetensors: the metadata field 'config' is a JSON list"):
        vitlab.load(tmp_path / "list.safetensors")
    vitlab_file(tmp_path / "odd.safetensors", tiny_vit(), config=json.dumps({"embed_dim": 96, "wings": 2}))
    with pytest.raises(vitlab.CheckpointError, match=r"odd.safetensors: the metadata is not a valid ViTConfig "
                                                     r"\(TypeError: unknown ViTConfig field\(s\) \['wings'\]"):
        vitlab.load(tmp_path / "odd.safetensors")


def test_an_argument_the_weights_contradict_is_named_as_such(tmp_path):
    torch.save(tiny_vit().state_dict(), tmp_path / "m.pth")
    with pytest.raises(vitlab.CheckpointError, match=r"m.pth: the arguments say mlp_dim=128 but "
                                                     r"blocks.0.mlp.fc1.weight is \(64, 96\) \(mlp_dim 64\)$"):
        vitlab.load(tmp_path / "m.pth", num_heads=2, mlp_dim=128)


def test_a_hand_made_hf_folder_loads(tmp_path):
    """The corpus' HF folders are right apart from the one field each case changes."""
    model = tiny_vit()
    loaded = vitlab.load(hf_folder(tmp_path / "hf", model))
    assert loaded.source_format == "hf" and loaded.config.num_heads == 2 and loaded.class_names == ["x", "y", "z"]
    torch.testing.assert_close(_logits(loaded), _logits(model))
