"""CIFAR-10 batches: layouts, the tar.gz, validation, and the restricted unpickler."""

from __future__ import annotations

import builtins
import io
import os
import pickle
import re
import tarfile

import numpy as np
import pytest
import torch
from fuzzing import mutated
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ikd.data import load_dataset
from ikd.data.cifar import (
    ARCHIVE,
    BATCHES_DIR,
    CLASSES,
    load_batch_bytes,
    safe_unpickle,
)
from ikd.errors import DataError

pytestmark = pytest.mark.usefixtures("data_env")

NAMES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]


def batch(n: int, seed: int, *, bytes_keys: bool) -> dict:
    rng = np.random.default_rng(seed)
    k = (lambda s: s.encode()) if bytes_keys else (lambda s: s)
    return {
        k("batch_label"): k(f"batch {seed}"),
        k("labels"): [int(v) for v in rng.integers(0, 10, n)],
        k("data"): rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        k("filenames"): [k(f"img_{i}.png") for i in range(n)],
    }


def cifar_files(*, bytes_keys: bool, protocol: int, n: int = 6, meta: bool = True) -> dict[str, bytes]:
    """Pickled batches by file name; protocol 2 + bytes keys is how the official (Python 2) files look."""
    files = {name: pickle.dumps(batch(n, i, bytes_keys=bytes_keys), protocol=protocol) for i, name in enumerate(NAMES)}
    if meta:
        names = [f"class{i}" for i in range(10)]
        key = b"label_names" if bytes_keys else "label_names"
        files["batches.meta"] = pickle.dumps({key: [s.encode() if bytes_keys else s for s in names]}, protocol=protocol)
    return files


def write_dir(directory, files: dict[str, bytes]):
    directory.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (directory / name).write_bytes(data)
    return directory


def write_tar(path, files: dict[str, bytes], prefix: str = f"{BATCHES_DIR}/"):
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(prefix + name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def expected_arrays(n: int = 6, bytes_keys: bool = True):
    train = [batch(n, i, bytes_keys=bytes_keys) for i in range(5)]
    test = batch(n, 5, bytes_keys=bytes_keys)
    key = (lambda s: s.encode()) if bytes_keys else (lambda s: s)
    xtr = np.concatenate([b[key("data")] for b in train]).reshape(-1, 3, 32, 32)
    ytr = np.concatenate([b[key("labels")] for b in train])
    return xtr, ytr, test[key("data")].reshape(-1, 3, 32, 32), np.array(test[key("labels")])


@pytest.mark.parametrize("bytes_keys, protocol", [(True, 2), (False, 2), (True, 4), (False, 4), (False, 5)])
def test_batches_dir_round_trip(tmp_path, bytes_keys, protocol):
    write_dir(tmp_path / BATCHES_DIR, cifar_files(bytes_keys=bytes_keys, protocol=protocol))
    d = load_dataset("cifar10", tmp_path, val_fraction=0.2)
    xtr, ytr, xte, yte = expected_arrays(bytes_keys=bytes_keys)
    assert d.classes == [f"class{i}" for i in range(10)]
    assert d.augment == "reflect-crop-flip" and d.in_channels == 3 and d.image_size == 32
    assert d.source == str(tmp_path / BATCHES_DIR)
    assert d.test.images.dtype == torch.uint8 and d.test.images.is_contiguous()
    np.testing.assert_array_equal(d.test.images.numpy(), xte)
    np.testing.assert_array_equal(d.test.labels.numpy(), yte)
    assert len(d.train) + len(d.val) == len(xtr) == 30
    assert sorted(torch.cat([d.train.labels, d.val.labels]).tolist()) == sorted(ytr.tolist())


def test_data_dir_may_be_the_batches_dir_and_meta_is_optional(tmp_path):
    files = cifar_files(bytes_keys=True, protocol=2, meta=False)
    write_dir(tmp_path / "b", files)
    d = load_dataset("cifar10", tmp_path / "b")
    assert d.classes == CLASSES and d.source == str(tmp_path / "b")


def test_found_under_root_cifar10(tmp_path, monkeypatch):
    write_dir(tmp_path / "root" / "cifar10" / BATCHES_DIR, cifar_files(bytes_keys=True, protocol=2))
    monkeypatch.setenv("IKD_DATA_DIR", str(tmp_path / "root"))
    assert load_dataset("cifar10").source == str(tmp_path / "root" / "cifar10" / BATCHES_DIR)


def test_tar_gz_read_in_memory(tmp_path):
    write_tar(tmp_path / ARCHIVE, cifar_files(bytes_keys=True, protocol=2))
    before = sorted(p.name for p in tmp_path.rglob("*"))
    d = load_dataset("cifar10", tmp_path)
    assert sorted(p.name for p in tmp_path.rglob("*")) == before, "nothing may be extracted"
    _, _, xte, _ = expected_arrays()
    np.testing.assert_array_equal(d.test.images.numpy(), xte)
    assert d.source == str(tmp_path / ARCHIVE)
    # the archive file itself may be passed too
    assert load_dataset("cifar10", tmp_path / ARCHIVE).source == str(tmp_path / ARCHIVE)


def test_tar_member_paths_are_not_trusted(tmp_path):
    # traversal / absolute member names are read by base name only and never touch the disk
    files = cifar_files(bytes_keys=False, protocol=4)
    write_tar(tmp_path / "in" / ARCHIVE, files, prefix="../../escape/")
    load_dataset("cifar10", tmp_path / "in")
    write_tar(tmp_path / "abs" / ARCHIVE, files, prefix=str(tmp_path / "abs-escape") + "/")
    load_dataset("cifar10", tmp_path / "abs")
    assert not (tmp_path.parent / "escape").exists() and not (tmp_path / "abs-escape").exists()


def test_tar_duplicate_and_missing_members(tmp_path):
    files = cifar_files(bytes_keys=True, protocol=2)
    path = tmp_path / "dup" / ARCHIVE
    path.parent.mkdir()
    with tarfile.open(path, "w:gz") as tar:
        for prefix in ("a/", "b/"):
            info = tarfile.TarInfo(prefix + "test_batch")
            info.size = len(files["test_batch"])
            tar.addfile(info, io.BytesIO(files["test_batch"]))
    with pytest.raises(DataError, match="two members named test_batch"):
        load_dataset("cifar10", path.parent)
    del files["data_batch_3"]
    write_tar(tmp_path / "miss" / ARCHIVE, files)
    with pytest.raises(DataError, match=rf"{tmp_path / 'miss' / ARCHIVE}: no member {BATCHES_DIR}/data_batch_3"):
        load_dataset("cifar10", tmp_path / "miss")


def test_corrupt_tar(tmp_path):
    (tmp_path / ARCHIVE).write_bytes(b"\x1f\x8b\x08\x00garbage" * 10)
    with pytest.raises(DataError, match=rf"{tmp_path / ARCHIVE}: not a readable tar archive"):
        load_dataset("cifar10", tmp_path)


def test_missing_everything_names_searched_dirs(tmp_path):
    with pytest.raises(DataError) as e:
        load_dataset("cifar10", tmp_path)
    msg = str(e.value)
    assert f"searched {tmp_path}, {tmp_path / 'cifar10'}" in msg
    assert ARCHIVE in msg and BATCHES_DIR in msg and "\n" not in msg


def test_missing_batch_file(tmp_path):
    files = cifar_files(bytes_keys=True, protocol=2)
    del files["data_batch_4"]
    write_dir(tmp_path / BATCHES_DIR, files)
    with pytest.raises(DataError, match=rf"{tmp_path / BATCHES_DIR / 'data_batch_4'}: missing"):
        load_dataset("cifar10", tmp_path)


def _bad(**changes) -> bytes:
    b = batch(4, 0, bytes_keys=True)
    for k, v in changes.items():
        if v is None:
            del b[k.encode()]
        else:
            b[k.encode()] = v
    return pickle.dumps(b, protocol=2)


@pytest.mark.parametrize(
    "payload, pattern",
    [
        (
            _bad(data=np.zeros((4, 3072), np.float32)),
            r"'data' is float32 array of shape \(4, 3072\); expected a uint8 array of shape \(N, 3072\)",
        ),
        (_bad(data=np.zeros((4, 3000), np.uint8)), r"'data' is uint8 array of shape \(4, 3000\)"),
        (_bad(data=np.zeros((4, 3, 32, 32), np.uint8)), r"shape \(4, 3, 32, 32\)"),
        (_bad(data=[1, 2, 3]), r"'data' is list"),
        (_bad(labels=[0, 1, 2]), r"4 images but 3 labels"),
        (_bad(labels=[0, 1, 2, 10]), r"labels span 0..10; expected 0..9"),
        (_bad(labels=[0, -1, 2, 3]), r"labels span -1..3"),
        (_bad(labels=[0, 1, 2, "x"]), r"'labels' is <U21 array"),
        (_bad(labels=[0, 1.5, 2, 3]), r"'labels' is float64 array"),
        (_bad(labels=[0, 1, 2, 2**70]), r"'labels'"),
        (_bad(labels=None), r"batch has no 'labels' key"),
        (_bad(data=None), r"batch has no 'data' key"),
        (pickle.dumps([1, 2, 3], protocol=2), r"pickle holds a list; expected a dict"),
        (b"not a pickle", r"not a readable pickle"),
        (pickle.dumps(batch(4, 0, bytes_keys=True), protocol=2)[:-100], r"not a readable pickle"),
    ],
)
def test_bad_batches(payload, pattern):
    with pytest.raises(DataError, match=pattern) as e:
        load_batch_bytes(payload, "/x/data_batch_1")
    assert str(e.value).startswith("/x/data_batch_1: ") and "\n" not in str(e.value)


def test_bad_batch_in_dir_names_file(tmp_path):
    files = cifar_files(bytes_keys=True, protocol=2)
    files["data_batch_2"] = _bad(labels=[0, 1, 2, 11])
    write_dir(tmp_path / BATCHES_DIR, files)
    with pytest.raises(DataError, match=rf"{tmp_path / BATCHES_DIR / 'data_batch_2'}: labels span"):
        load_dataset("cifar10", tmp_path)


def test_bad_label_names(tmp_path):
    files = cifar_files(bytes_keys=True, protocol=2)
    files["batches.meta"] = pickle.dumps({b"label_names": [b"a", b"b"]}, protocol=2)
    write_dir(tmp_path / BATCHES_DIR, files)
    with pytest.raises(DataError, match=r"batches.meta: 'label_names' is list; expected a list of 10 names"):
        load_dataset("cifar10", tmp_path)
    # ten names, one twice: trained on, then its model's record of them was refused
    files["batches.meta"] = pickle.dumps({b"label_names": [b"x"] * 10}, protocol=2)
    write_dir(tmp_path / BATCHES_DIR, files)
    with pytest.raises(DataError, match=r"names class 'x' twice; expected distinct class names"):
        load_dataset("cifar10", tmp_path)


# --- malicious pickles ------------------------------------------------------------------------


class Evil:
    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _payloads(marker):
    return {
        "os.system": Evil(os.system, f"touch {marker}"),
        "builtins.open": Evil(builtins.open, str(marker), "w"),
        "builtins.exec": Evil(builtins.exec, f"open({str(marker)!r}, 'w').close()"),
        "nested": {b"data": Evil(os.system, f"touch {marker}"), b"labels": [0]},
    }


@pytest.mark.parametrize("kind", ["os.system", "builtins.open", "builtins.exec", "nested"])
@pytest.mark.parametrize("protocol", [0, 2, 4])
def test_malicious_pickle_is_refused_and_not_run(tmp_path, kind, protocol):
    marker = tmp_path / "pwned"
    data = pickle.dumps(_payloads(marker)[kind], protocol=protocol)
    with pytest.raises(
        DataError,
        match=r"/x/data_batch_1: pickle tries to load \S+; only plain data and numpy arrays are allowed",
    ):
        load_batch_bytes(data, "/x/data_batch_1")
    assert not marker.exists()


def test_malicious_batch_in_archive(tmp_path):
    marker = tmp_path / "pwned"
    files = cifar_files(bytes_keys=True, protocol=2)
    files["batches.meta"] = pickle.dumps(Evil(os.system, f"touch {marker}"), protocol=2)
    write_tar(tmp_path / ARCHIVE, files)
    with pytest.raises(DataError, match=r"member batches.meta\): pickle tries to load (posix|os).system"):
        load_dataset("cifar10", tmp_path)
    assert not marker.exists()


@pytest.mark.parametrize(
    "raw,said",
    [
        (b"cnumpy\nndarray.tofile\n.", "pickle tries to load numpy.ndarray.tofile"),  # a path inside an allowed module
        (b"cnumpy\nload\n.", "pickle tries to load numpy.load"),  # allowed module, other name
        (b"c_codecs\nencode\n(Vx\nVrot13\ntR.", "encoding 'rot13'; only latin1 is allowed"),  # other codec
    ],
)
def test_only_exact_allowed_globals(raw, said):
    with pytest.raises(DataError, match=re.escape(said)):
        safe_unpickle(raw, "f")


# --- fuzzing ------------------------------------------------------------------------------------

SMALL = {p: pickle.dumps(batch(2, 1, bytes_keys=p == 2), protocol=p) for p in (2, 4, 5)}


@settings(max_examples=200, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.one_of(st.binary(max_size=64), *(mutated(b) for b in SMALL.values())))
def test_fuzz_batch_loader(data):
    try:
        x, y = load_batch_bytes(data, "fuzz")
    except DataError:
        return
    assert x.dtype == np.uint8 and x.shape[1:] == (3, 32, 32) and y.shape == (x.shape[0],)
    assert y.dtype == np.int64 and (y.size == 0 or (y.min() >= 0 and y.max() <= 9))
