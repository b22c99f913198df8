"""Pretrained weights by name: a mocked hub serving local files, and offline mode. Never the network."""

import json
import shutil

import pytest
import torch
from conftest import randomize_
from huggingface_hub import errors
from safetensors.torch import save_file

import vitlab
from vitlab.factory import parse_spec
from vitlab.hub import HubError, repo_id_for

NOT_IN_REPO = getattr(errors, "RemoteEntryNotFoundError", errors.EntryNotFoundError)


def _not_in_repo(msg):
    exc = NOT_IN_REPO.__new__(NOT_IN_REPO)
    Exception.__init__(exc, msg)
    return exc


@pytest.fixture
def fake_hub(tmp_path, monkeypatch):
    """Repos as local folders under remote/<org>/<name>; downloads copy into a cache folder."""
    remote, cache = tmp_path / "remote", tmp_path / "cache"
    requests = []

    def hf_hub_download(repo_id, filename, **kwargs):
        requests.append((repo_id, filename))
        src = remote / repo_id / filename
        if not (remote / repo_id).is_dir():
            raise errors.RepositoryNotFoundError.__new__(errors.RepositoryNotFoundError)
        if not src.is_file():
            raise _not_in_repo(f"{filename} not in {repo_id}")
        dst = cache / repo_id / filename
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, dst)
        return str(dst)

    monkeypatch.setattr("huggingface_hub.hf_hub_download", hf_hub_download)
    return remote, requests


def _timm_repo(remote, name, tag):
    import timm
    ref = randomize_(timm.create_model(name, depth=2))
    folder = remote / "timm" / f"{name}.{tag}"
    folder.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(folder / "model.safetensors"))
    config = {"architecture": name, "num_classes": 1000, "global_pool": "token", "model_args": {"depth": 2},
              "pretrained_cfg": {"input_size": [3, 224, 224], "interpolation": "bicubic", "crop_pct": 0.9,
                                 "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}}
    (folder / "config.json").write_text(json.dumps(config))
    return ref


def test_pretrained_by_name_downloads_the_timm_repo(fake_hub):
    remote, requests = fake_hub
    ref = _timm_repo(remote, "vit_tiny_patch16_224", "augreg_in21k_ft_in1k")
    model = vitlab.create_model("vit_tiny_patch16_224", pretrained=True).eval()
    assert ("timm/vit_tiny_patch16_224.augreg_in21k_ft_in1k", "model.safetensors") in requests
    assert model.preprocessing.mean == (0.5, 0.5, 0.5) and model.preprocessing.crop_pct == 0.9
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert (model(x) - ref(x)).abs().max() <= 1e-4
    with pytest.warns(UserWarning, match="1000 classes, 10 were asked for"):
        tagged = vitlab.create_model("vit_tiny_patch16_224.augreg_in21k_ft_in1k", num_classes=10)
    assert tagged.config.num_classes == 10


def test_hf_hub_id_and_weight_file_fallback(fake_hub):
    remote, requests = fake_hub
    ref = _timm_repo(remote, "vit_tiny_patch16_224", "x")
    folder = remote / "me" / "my-vit"
    shutil.copytree(remote / "timm" / "vit_tiny_patch16_224.x", folder)
    (folder / "model.safetensors").unlink()
    torch.save(ref.state_dict(), folder / "pytorch_model.bin")
    model = vitlab.load("hf-hub:me/my-vit")
    assert ("me/my-vit", "model.safetensors") in requests and ("me/my-vit", "pytorch_model.bin") in requests
    assert model.config.depth == 2


def test_unknown_repo_is_a_clear_error(fake_hub):
    with pytest.raises(HubError, match="no hub repo 'timm/vit_tiny_patch16_224.nope'"):
        vitlab.load("vit_tiny_patch16_224.nope")


def test_offline_with_empty_cache_names_the_id_and_the_way_out(tmp_path, monkeypatch):
    # What HF_HUB_OFFLINE=1 and an empty HF_HOME set when huggingface_hub is imported, without a new process.
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    with pytest.raises(HubError) as e:
        vitlab.create_model("vit_base_patch16_224", pretrained=True)
    assert "vit_base_patch16_224.augreg2_in21k_ft_in1k" in str(e.value)
    assert "not in the local cache" in str(e.value) and "pass the local file" in str(e.value)


def test_hub_id_parsing():
    tagged = parse_spec("vit_base_patch16_224.augreg2_in21k_ft_in1k")
    assert repo_id_for(tagged.hub_id) == "timm/vit_base_patch16_224.augreg2_in21k_ft_in1k"
    assert repo_id_for(parse_spec("hf-hub:google/vit-base").hub_id) == "google/vit-base"
    assert parse_spec("model.safetensors").hub_id is None and parse_spec("ckpt/last.pth").hub_id is None
    assert repo_id_for("vit_small_patch16_224.dino") == "timm/vit_small_patch16_224.dino"


def test_no_default_weights_is_a_clear_error():
    with pytest.raises(ValueError, match="no default pretrained weights are known for 'vit_tiny_patch4_32'"):
        vitlab.create_model("Ti/4@32", pretrained=True)
