"""Pretrained weights by name, through huggingface_hub and its usual cache.

``"vit_base_patch16_224.augreg2_in21k_ft_in1k"`` means the timm hub repo of that name;
``"hf-hub:google/vit-base-patch16-224"`` any hub repo (timm or transformers layout). Downloads go to
huggingface_hub's cache, and offline mode (``HF_HUB_OFFLINE=1``) is honoured: with no network and
nothing cached, the error names the id and how to pass a local file instead.
"""

from __future__ import annotations

from pathlib import Path

from vitlab.errors import HubError  # noqa: F401 (re-exported)

HF_HUB_PREFIX = "hf-hub:"
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin")
OPTIONAL_FILES = ("preprocessor_config.json",)


def repo_id_for(source: str) -> str:
    """``"hf-hub:org/repo"`` -> ``"org/repo"``; a timm ``"architecture.tag"`` -> ``"timm/architecture.tag"``.
    (Which strings are hub ids is ``vitlab.factory.parse_spec``'s decision.)"""
    if source.startswith(HF_HUB_PREFIX):
        return source[len(HF_HUB_PREFIX):]
    return f"timm/{source}"


def download(source: str) -> Path:
    """Fetch config and weights of a hub id into the cache; return the local folder that holds them."""
    import huggingface_hub as hf  # the network stack (httpx): imported only to download
    from huggingface_hub import errors
    from huggingface_hub.errors import LocalEntryNotFoundError, RepositoryNotFoundError

    # A file missing from the repo (as opposed to missing from the cache while offline).
    not_in_repo = getattr(errors, "RemoteEntryNotFoundError", errors.EntryNotFoundError)

    repo_id = repo_id_for(source)
    advice = ("Connect to the internet once (the files are then cached), or download the weights elsewhere "
              "and pass the local file or folder, e.g. vitlab.load('path/to/model.safetensors')")
    try:
        config = hf.hf_hub_download(repo_id, "config.json")
        for name in WEIGHT_FILES:
            try:
                hf.hf_hub_download(repo_id, name)
                break
            except LocalEntryNotFoundError:
                raise
            except not_in_repo:
                continue
        else:
            raise HubError(f"hub repo {repo_id!r} has none of the weight files {WEIGHT_FILES}")
        for name in OPTIONAL_FILES:
            try:
                hf.hf_hub_download(repo_id, name)
            except (LocalEntryNotFoundError, not_in_repo):
                pass  # optional
    except RepositoryNotFoundError as e:
        raise HubError(f"no hub repo {repo_id!r} (from {source!r}); check the name, e.g. "
                       "'vit_base_patch16_224.augreg2_in21k_ft_in1k' or 'hf-hub:google/vit-base-patch16-224'") from e
    except LocalEntryNotFoundError as e:
        raise HubError(f"could not download {source!r} (hub repo {repo_id!r}): no network or offline mode, and "
                       f"it is not in the local cache. {advice}") from e
    except OSError as e:  # connection errors surface as OSError subclasses
        reason = " ".join(str(e).split())  # connection errors span lines
        raise HubError(f"could not download {source!r} (hub repo {repo_id!r}): {reason}. {advice}") from e
    return Path(config).parent
