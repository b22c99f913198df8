"""vitlab.factory: every kind of model spec classified in one place, and create_model, load and model_from_spec
agreeing on it. Hub downloads are replaced by local files (never the network)."""

import ast
from pathlib import Path

import pytest
import torch
from conftest import randomize_

import vitlab
from vitlab.cnn import ResNet
from vitlab.factory import model_from_spec, parse_spec

TAGGED = "vit_base_patch16_224.augreg2_in21k_ft_in1k"


def _tiny(**kw):
    return randomize_(vitlab.create_model("Ti/4@32", depth=1, **kw))


@pytest.mark.parametrize("text,name", [
    ("vit_tiny_patch16_224", "vit_tiny_patch16_224"), ("Ti/16", "vit_tiny_patch16_224"),
    ("Ti/4@32", "vit_tiny_patch4_32"), ("B/16@384", "vit_base_patch16_384"),
])
def test_names_and_aliases(text, name):
    spec = parse_spec(text)
    assert (spec.kind, spec.name, spec.tag, spec.weights) == ("name", name, None, None)


def test_a_pretrained_tag_names_the_timm_hub_repo():
    spec = parse_spec(TAGGED)
    assert (spec.kind, spec.name, spec.tag, spec.weights) == ("name", "vit_base_patch16_224", "augreg2_in21k_ft_in1k",
                                                              TAGGED)
    assert parse_spec("B/16.augreg2_in21k_ft_in1k").weights == TAGGED  # an alias with a tag: the registered name


def test_resnet_baselines():
    spec = parse_spec("resnet20")
    assert (spec.kind, spec.name, spec.weights) == ("resnet", "resnet20", None)


def test_files_folders_and_trainer_checkpoints_are_paths(tmp_path):
    (tmp_path / "m.safetensors").touch()
    for spec in (str(tmp_path / "m.safetensors"), tmp_path / "m.safetensors", str(tmp_path), tmp_path):
        parsed = parse_spec(spec)
        assert (parsed.kind, parsed.path) == ("path", Path(spec))
    # A file not there yet is still a path (loading says "checkpoint not found"), by its suffix or its folders.
    for spec in ("runs/cifar10/ckpt-step00001000.pt", "model.npz", "exports/vit", "./vit"):
        assert parse_spec(spec).kind == "path"
        assert parse_spec(spec).weights == Path(spec)


def test_hub_ids():
    assert parse_spec("hf-hub:google/vit-base-patch16-224").weights == "hf-hub:google/vit-base-patch16-224"
    # A timm repo whose architecture vitlab has no name for: its weights are still readable.
    spec = parse_spec("deit_tiny_patch16_224.fb_in1k")
    assert (spec.kind, spec.weights) == ("hub", "deit_tiny_patch16_224.fb_in1k")


def test_a_name_wins_over_a_folder_of_that_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("vit_tiny_patch16_224").mkdir()  # e.g. a run folder named after its model
    assert parse_spec("vit_tiny_patch16_224").kind == "name"
    assert parse_spec("./vit_tiny_patch16_224").kind == "path"
    assert parse_spec(Path("vit_tiny_patch16_224")).kind == "path"
    Path("my_run").mkdir()
    assert parse_spec("my_run").kind == "path"  # an existing folder with no model's name


def test_unknown_specs_are_clear_errors():
    with pytest.raises(ValueError) as e:
        parse_spec("vit_gigantic")
    msg = str(e.value)
    assert msg.startswith("'vit_gigantic' is neither an existing checkpoint file or folder, nor a hub id")
    for accepted in ("registered name or alias", "pretrained tag", "resnet20", "checkpoint file or folder",
                     "hf-hub:org/repo", "unknown model 'vit_gigantic'", "vit_base_patch16_224"):
        assert accepted in msg
    with pytest.raises(ValueError, match="unknown model 'vit_base_patch17_224'"):  # a misspelt alias, not a path
        parse_spec("B/17")
    with pytest.raises(ValueError, match="names no repo"):
        parse_spec("hf-hub:")
    with pytest.raises(ValueError, match="the model spec is empty; a model is a registered name"):
        parse_spec("")  # not the current folder
    with pytest.raises(TypeError, match="string or a pathlib.Path, got int"):
        parse_spec(16)


def test_a_checkpoint_loads_the_same_through_every_entry_point(tmp_path):
    model = _tiny(num_classes=3)
    path = vitlab.save(model, tmp_path / "m.safetensors")
    x = torch.randn(2, 3, 32, 32)
    for spec in (path, str(path)):
        loaded = [vitlab.load(spec), vitlab.create_model(spec), model_from_spec(spec).model,
                  model_from_spec(spec, pretrained=True).model]
        assert model_from_spec(spec).trained
        with torch.no_grad():
            for other in loaded:
                assert other.config == model.config
                torch.testing.assert_close(other.eval()(x), model(x), atol=0, rtol=0)
    with pytest.warns(UserWarning, match="3 classes, 5 were asked for"):
        tuned = model_from_spec(str(path), num_classes=5, img_size=64).model  # what a fine-tuning run asks
    assert tuned.config.num_classes == 5 and tuned.config.img_size == (64, 64)


def test_a_trainer_checkpoint_is_read_as_a_path(tmp_path):
    model = _tiny()
    path = tmp_path / "runs" / "tiny" / "ckpt-step00000010.pt"
    path.parent.mkdir(parents=True)
    torch.save({"model": model.state_dict(), "step": 10}, path)
    loaded, trained = model_from_spec(str(path))
    assert trained and loaded.config == model.config


def test_a_name_builds_random_weights_and_is_no_checkpoint():
    model, trained = model_from_spec("Ti/4@32", depth=1, num_classes=7)
    assert not trained and isinstance(model, vitlab.VisionTransformer)
    assert model.config == vitlab.create_model("vit_tiny_patch4_32", depth=1, num_classes=7).config
    assert model.class_names is None and model.preprocessing.img_size == (32, 32)
    with pytest.raises(ValueError, match="'Ti/4@32' is a model name, not a checkpoint: vitlab.create_model"):
        vitlab.load("Ti/4@32")


def test_resnet_names_build_the_cnn_baseline_without_weights():
    model, trained = model_from_spec("resnet20", num_classes=4)
    assert isinstance(model, ResNet) and not trained and model.config.num_classes == 4
    with pytest.raises(ValueError, match="no pretrained ResNet weights"):
        model_from_spec("resnet20", pretrained=True)
    with pytest.raises(ValueError, match="no pretrained ResNet weights"):
        vitlab.create_model("resnet20.a1_in1k")
    with pytest.raises(ValueError, match="is a model name, not a checkpoint"):
        vitlab.load("resnet20")


@pytest.fixture
def fake_download(tmp_path, monkeypatch):
    """vitlab.hub.download replaced by a local checkpoint; the ids asked for are recorded."""
    path = vitlab.save(_tiny(num_classes=3), tmp_path / "hub.safetensors")
    asked = []

    def download(source):
        asked.append(source)
        return path

    monkeypatch.setattr("vitlab.hub.download", download)
    return asked


def test_weights_from_the_hub_through_every_entry_point(fake_download):
    asked = fake_download
    assert model_from_spec("hf-hub:me/my-vit").trained
    assert model_from_spec("Ti/4@32.mytag").trained
    model, trained = model_from_spec("Ti/16", pretrained=True)  # the default tag of vit_tiny_patch16_224
    assert trained and model.config.depth == 1  # the architecture is the checkpoint's
    vitlab.load("vit_tiny_patch4_32.other")
    vitlab.create_model("Ti/4@32", pretrained="tag2")
    vitlab.create_model("Ti/4@32", pretrained="hf-hub:me/other")
    vitlab.create_model("hf-hub:me/third", num_classes=3)
    assert asked == ["hf-hub:me/my-vit", "vit_tiny_patch4_32.mytag", "vit_tiny_patch16_224.augreg_in21k_ft_in1k",
                     "vit_tiny_patch4_32.other", "vit_tiny_patch4_32.tag2", "hf-hub:me/other", "hf-hub:me/third"]
    with pytest.raises(ValueError, match="pretrained='B/16' names no weights"):
        vitlab.create_model("Ti/4@32", pretrained="B/16")


def _import_graph() -> dict[str, set[str]]:
    """module -> the vitlab modules it imports at module level (imports inside functions are not followed)."""
    root = Path(vitlab.__file__).parent
    files = {}
    for f in root.rglob("*.py"):
        parts = f.relative_to(root.parent).with_suffix("").parts
        files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    graph = {}
    for module, f in files.items():
        found = set()
        for node in ast.parse(f.read_text()).body:
            if isinstance(node, ast.Import):
                found.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module:  # `from vitlab import hub` imports vitlab.hub
                found.update(f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in files else node.module
                             for a in node.names)
        graph[module] = {m for m in found if m in files and m != module}
    return graph


def test_the_package_has_no_import_cycles():
    graph = _import_graph()
    assert graph["vitlab.registry"] == {"vitlab.config", "vitlab.errors"}  # names and configs only
    assert "vitlab.factory" not in graph["vitlab.checkpoint"]
    done = set()

    def visit(module, path):  # depth-first; a module met again on the current path closes a cycle
        assert module not in path, f"import cycle: {' -> '.join([*path, module])}"
        if module not in done:
            for imported in sorted(graph[module]):
                visit(imported, [*path, module])
            done.add(module)

    for module in sorted(graph):
        visit(module, [])


def test_the_head_table_is_the_size_table():
    from vitlab.convert import HEADS_BY_WIDTH
    from vitlab.registry import SIZES

    assert HEADS_BY_WIDTH == {192: 3, 384: 6, 768: 12, 1024: 16, 1280: 16}
    assert all(HEADS_BY_WIDTH[dim] == heads for dim, _, heads, _ in SIZES.values())
