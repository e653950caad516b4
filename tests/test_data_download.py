"""Downloading MNIST-style files: offline failure messages and a real fetch from a loopback server."""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import threading

import numpy as np
import pytest

from ikd.data import load_dataset, mnist
from ikd.errors import DataError

pytestmark = pytest.mark.usefixtures("data_env")


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch):
    # A proxy from the environment would swallow requests meant for 127.0.0.1.
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "*")
    monkeypatch.setenv("NO_PROXY", "*")


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep pytest output clean
        pass


@pytest.fixture
def served(tmp_path, make_idx_set):
    """A loopback HTTP server serving a gzipped fixture set; yields (base_url, arrays, raw md5s)."""
    www = tmp_path / "www"
    arrays = make_idx_set(www, gz=True, seed=7)
    md5s = {stem: hashlib.md5(gzip.decompress((www / f"{stem}.gz").read_bytes())).hexdigest() for stem in arrays}
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(www)))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/", arrays, md5s
    finally:
        server.shutdown()
        server.server_close()


def test_offline_download_failure_names_directory(tmp_path, monkeypatch):
    monkeypatch.setitem(mnist.MIRRORS, "mnist", ["http://127.0.0.1:9/"])
    with pytest.raises(DataError) as e:
        load_dataset("mnist", tmp_path / "data")
    msg = str(e.value)
    target = tmp_path / "data" / "mnist"
    assert msg.startswith(f"mnist: files not found in {target} (searched {tmp_path / 'data'}, {target})")
    assert "download failed (http://127.0.0.1:9/train-images-idx3-ubyte.gz:" in msg
    assert "put train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz" in msg and "--data-dir DIR" in msg
    assert "\n" not in msg
    assert not any(p.is_file() for p in target.rglob("*")), "a failed download must leave no files"


def test_non_http_mirror_is_refused(tmp_path, monkeypatch):
    (tmp_path / "secret").write_bytes(b"x")
    monkeypatch.setitem(mnist.MIRRORS, "mnist", [f"file://{tmp_path}/"])
    with pytest.raises(DataError, match="only http:// and https:// URLs are fetched"):
        load_dataset("mnist", tmp_path / "data")


def test_download_from_loopback_server(tmp_path, monkeypatch, served):
    url, arrays, md5s = served
    # the first mirror 404s, the second works: fallback across mirrors
    monkeypatch.setitem(mnist.MIRRORS, "mnist", [url + "missing/", url])
    monkeypatch.setitem(mnist.RAW_MD5, "mnist", md5s)
    root = tmp_path / "root"
    d = load_dataset("mnist", root)
    target = root / "mnist"
    assert d.source == str(target)
    assert sorted(p.name for p in target.iterdir()) == sorted(f"{s}.gz" for s in mnist.FILES)
    np.testing.assert_array_equal(d.test.images[:, 0].numpy(), arrays[mnist.TEST_IMAGES])
    # second load reads the cached files, even with the server gone
    monkeypatch.setitem(mnist.MIRRORS, "mnist", ["http://127.0.0.1:9/"])
    assert load_dataset("mnist", root).source == str(target)


def test_download_with_wrong_md5_is_rejected(tmp_path, monkeypatch, served):
    url, _, md5s = served
    monkeypatch.setitem(mnist.MIRRORS, "mnist", [url])
    monkeypatch.setitem(mnist.RAW_MD5, "mnist", {**md5s, mnist.TRAIN_IMAGES: "0" * 32})
    with pytest.raises(DataError) as e:
        load_dataset("mnist", tmp_path / "root")
    msg = str(e.value)
    assert "download failed" in msg and "expected 00000000000000000000000000000000" in msg
    assert not (tmp_path / "root" / "mnist" / f"{mnist.TRAIN_IMAGES}.gz").exists()
    assert [p.name for p in (tmp_path / "root" / "mnist").iterdir()] == []  # temp file cleaned up


def test_fashion_download_uses_its_own_mirrors(tmp_path, monkeypatch, served):
    url, arrays, md5s = served
    monkeypatch.setitem(mnist.MIRRORS, "fashion-mnist", [url])
    monkeypatch.setitem(mnist.RAW_MD5, "fashion-mnist", md5s)
    d = load_dataset("fashion-mnist", tmp_path / "root")
    assert d.source == str(tmp_path / "root" / "fashion-mnist")
    np.testing.assert_array_equal(d.test.labels.numpy(), arrays[mnist.TEST_LABELS])
