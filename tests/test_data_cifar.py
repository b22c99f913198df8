"""The CIFAR downloader and reader, against small archives of the official format served from 127.0.0.1."""

import dataclasses
import hashlib
import http.server
import io
import os
import pickle
import tarfile
import threading

import numpy as np
import pytest
import torch

from vitlab.data import DownloadError, load_dataset
from vitlab.data import cifar as cifar_mod

NAMES10 = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]


def _batch(rng, n, label_key=b"labels", classes=10):
    data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
    labels = rng.integers(0, classes, n).tolist()
    return {b"batch_label": b"fake", label_key: labels, b"data": data, b"filenames": [b"x.png"] * n}


def _tar(members: dict[str, dict]) -> bytes:
    """A .tar.gz of pickles (protocol 2, bytes keys: what Python 2's cPickle wrote) at the given paths."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, obj in members.items():
            data = pickle.dumps(obj, protocol=2)
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.fixture
def cifar10_archive():
    rng = np.random.default_rng(0)
    members = {f"cifar-10-batches-py/data_batch_{i}": _batch(rng, 3) for i in range(1, 6)}
    members["cifar-10-batches-py/test_batch"] = _batch(rng, 4)
    members["cifar-10-batches-py/batches.meta"] = {b"label_names": NAMES10, b"num_cases_per_batch": 3}
    return _tar(members), members


@pytest.fixture
def server():
    """An HTTP server on 127.0.0.1 serving `server.payload`; `server.truncate` cuts the body short."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            srv.requests += 1
            body = srv.payload
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[:len(body) // 2] if srv.truncate else body)
            self.wfile.flush()
            self.close_connection = True

        def log_message(self, *args):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.payload, srv.truncate, srv.requests = b"", False, 0
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}/cifar-10-python.tar.gz"
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def _serve(monkeypatch, server, payload, md5=None, name="cifar10"):
    server.payload = payload
    md5 = md5 or hashlib.md5(payload).hexdigest()
    monkeypatch.setitem(cifar_mod.ARCHIVES, name, dataclasses.replace(cifar_mod.ARCHIVES[name], url=server.url,
                                                                      md5=md5))


def test_download_verify_extract_then_use_the_cache(tmp_path, monkeypatch, server, cifar10_archive):
    payload, members = cifar10_archive
    _serve(monkeypatch, server, payload)
    monkeypatch.setenv("VITLAB_DATA", str(tmp_path / "cache"))  # the default cache folder
    train = load_dataset("cifar10", "train")
    assert server.requests == 1
    assert sorted(os.listdir(tmp_path / "cache")) == ["cifar-10-batches-py"]  # no archive, .part or temp folder
    assert len(train) == 15 and train.class_names[:2] == ["airplane", "automobile"]
    first = members["cifar-10-batches-py/data_batch_1"]
    # Rows are 1024 red, 1024 green, 1024 blue values, each plane row-major.
    assert torch.equal(train.images[0, 1], torch.from_numpy(first[b"data"][0, 1024:2048].reshape(32, 32)))
    assert train.labels[:3].tolist() == first[b"labels"]
    val, test = load_dataset("cifar10", "val"), load_dataset("cifar10", "test")
    assert server.requests == 1  # the cache serves every later call
    assert len(val) == 4 and torch.equal(val.images, test.images)
    assert torch.equal(test.labels, torch.tensor(members["cifar-10-batches-py/test_batch"][b"labels"]))
    assert load_dataset("cifar10", "train", img_size=16).images.shape == (15, 3, 16, 16)


def test_checksum_mismatch_leaves_no_cache(tmp_path, monkeypatch, server, cifar10_archive):
    _serve(monkeypatch, server, cifar10_archive[0], md5="0" * 32)
    with pytest.raises(DownloadError, match="is corrupt: md5 .*, expected 00000000"):
        load_dataset("cifar10", "train", data_dir=tmp_path / "cache")
    assert os.listdir(tmp_path / "cache") == []


def test_interrupted_download_leaves_no_cache(tmp_path, monkeypatch, server, cifar10_archive):
    _serve(monkeypatch, server, cifar10_archive[0])
    server.truncate = True
    with pytest.raises(DownloadError, match="cifar-10-python.tar.gz"):
        load_dataset("cifar10", "train", data_dir=tmp_path / "cache")
    assert os.listdir(tmp_path / "cache") == []
    server.truncate = False  # the next attempt starts clean and succeeds
    assert len(load_dataset("cifar10", "train", data_dir=tmp_path / "cache")) == 15


def test_existing_copy_is_used_as_is(tmp_path, cifar10_archive):
    with tarfile.open(fileobj=io.BytesIO(cifar10_archive[0])) as tar:
        tar.extractall(tmp_path, filter="data")
    for data_dir in (tmp_path, tmp_path / "cifar-10-batches-py"):  # the parent or the folder itself
        assert len(load_dataset("cifar10", "test", data_dir=data_dir, download=False)) == 4
    with pytest.raises(FileNotFoundError, match="pass download=True"):
        load_dataset("cifar10", "train", data_dir=tmp_path / "elsewhere", download=False)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(FileNotFoundError, match="incomplete cifar-10-batches-py copy: data_batch_3 missing"):
        load_dataset("cifar10", "train", data_dir=tmp_path)


def test_cifar100_format(tmp_path, monkeypatch, server):
    rng = np.random.default_rng(1)
    fine = [f"class{i:03d}".encode() for i in range(100)]
    payload = _tar({
        "cifar-100-python/train": _batch(rng, 7, b"fine_labels", 100),
        "cifar-100-python/test": _batch(rng, 5, b"fine_labels", 100),
        "cifar-100-python/meta": {b"fine_label_names": fine, b"coarse_label_names": [b"c"] * 20},
    })
    _serve(monkeypatch, server, payload, name="cifar100")
    ds = load_dataset("cifar100", "train", data_dir=tmp_path)
    assert len(ds) == 7 and len(ds.class_names) == 100 and ds.class_names[5] == "class005"


def test_unpickling_never_runs_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps({b"data": Evil()}, protocol=2))
    with pytest.raises(ValueError, match=r"refusing to unpickle (posix|nt|os)\.system"):
        cifar_mod.load_batch(path)
    # The official files were written with numpy 1 (numpy.core...); numpy 2 writes numpy._core: both load.
    arr = np.arange(12, dtype=np.uint8).reshape(3, 4)
    data = pickle.dumps({b"data": arr}, protocol=2)
    for module in (b"numpy.core.multiarray", b"numpy._core.multiarray"):
        path.write_bytes(data.replace(b"numpy._core.multiarray", module).replace(b"numpy.core.multiarray", module))
        assert np.array_equal(cifar_mod.load_batch(path)[b"data"], arr)
