"""IDX parsing, the mnist / fashion-mnist / idx sources and their checksum and search rules."""

from __future__ import annotations

import gzip
import hashlib
import struct

import numpy as np
import pytest
import torch
from fuzzing import mutated
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ikd.data import load_dataset, mnist
from ikd.data.idx import gunzip, parse_idx, read_maybe_gzip
from ikd.errors import DataError, IkdError

pytestmark = pytest.mark.usefixtures("data_env")

FILES = mnist.FILES


def idx(arr: np.ndarray, *, magic: bytes | None = None) -> bytes:
    arr = np.ascontiguousarray(arr, dtype=np.uint8)
    head = magic if magic is not None else bytes([0, 0, 8, arr.ndim])
    return head + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()


def raw_md5s(arrays: dict[str, np.ndarray]) -> dict[str, str]:
    return {stem: hashlib.md5(idx(a)).hexdigest() for stem, a in arrays.items()}


# --- parse_idx -------------------------------------------------------------------------------


def test_parse_images_and_labels_round_trip():
    imgs = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    out = parse_idx(idx(imgs), "f", 3)
    assert out.shape == (2, 3, 4) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, imgs)
    labels = np.array([3, 1, 4], dtype=np.uint8)
    np.testing.assert_array_equal(parse_idx(idx(labels), "f", 1), labels)


@pytest.mark.parametrize(
    "data, ndim, pattern",
    [
        (
            idx(np.zeros(3, np.uint8)),
            3,
            r"f: wrong magic number 0x00000801 .*expected 0x00000803 \(IDX uint8 images\)",
        ),
        (
            idx(np.zeros((1, 2, 2), np.uint8)),
            1,
            r"wrong magic number 0x00000803 .*expected 0x00000801 \(IDX uint8 labels\)",
        ),
        (b"\x1f\x8b\x08\x00" + bytes(20), 3, r"wrong magic number 0x1F8B0800"),
        (
            bytes([0, 0, 0x0D, 3]) + struct.pack(">3I", 1, 1, 1) + bytes(4),
            3,
            r"dtype byte is 0x0D \(float32\), expected 0x08",
        ),
        (bytes([0, 0, 8]), 3, r"3 bytes is too short"),
        (bytes([0, 0, 8, 3, 0, 0]), 3, r"truncated: header needs 16 bytes, file has 6"),
        (
            idx(np.zeros((2, 3, 3), np.uint8))[:-5],
            3,
            r"truncated: header promises 18 bytes \(2x3x3\), file has 13",
        ),
        (idx(np.zeros((2, 3, 3), np.uint8)) + b"xyz", 3, r"3 extra bytes after the 18 bytes \(2x3x3\)"),
        (idx(np.zeros((2, 0, 3), np.uint8)), 3, r"image size 0x3"),
    ],
)
def test_parse_rejects_bad_headers(data, ndim, pattern):
    with pytest.raises(DataError, match=pattern) as e:
        parse_idx(data, "f", ndim)
    assert "\n" not in str(e.value)


def test_corrupt_gzip_is_data_error(tmp_path):
    good = gzip.compress(idx(np.zeros((2, 3, 3), np.uint8)))
    p = tmp_path / "train-images-idx3-ubyte.gz"
    p.write_bytes(good[: len(good) // 2])
    with pytest.raises(DataError, match=f"{p}: not a valid gzip file"):
        read_maybe_gzip(p)
    p.write_bytes(good[:10] + bytes(b ^ 0xFF for b in good[10:20]) + good[20:])
    with pytest.raises(DataError, match="not a valid gzip file"):
        read_maybe_gzip(p)
    p.write_bytes(b"plain text, not gzip")
    with pytest.raises(DataError, match="not a valid gzip file"):
        read_maybe_gzip(p)


def test_gzip_detected_by_content_even_without_suffix(tmp_path):
    arr = np.ones((1, 2, 2), np.uint8)
    p = tmp_path / "train-images-idx3-ubyte"
    p.write_bytes(gzip.compress(idx(arr)))
    np.testing.assert_array_equal(parse_idx(read_maybe_gzip(p), str(p), 3), arr)


# --- the idx / mnist / fashion-mnist sources --------------------------------------------------


@pytest.mark.parametrize("gz", [False, True])
def test_idx_dataset_round_trip(tmp_path, make_idx_set, gz):
    arrays = make_idx_set(tmp_path, n_train=50, n_test=10, size=5, num_classes=4, gz=gz)
    d = load_dataset("idx", tmp_path, val_fraction=0.2)
    assert d.classes == ["0", "1", "2", "3"] and d.num_classes == 4
    assert d.in_channels == 1 and d.image_size == 5 and d.augment == "none"
    assert d.source == str(tmp_path)
    assert len(d.train) == 40 and len(d.val) == 10 and len(d.test) == 10
    assert d.test.images.dtype == torch.uint8 and d.test.images.shape == (10, 1, 5, 5)
    assert d.test.labels.dtype == torch.int64
    np.testing.assert_array_equal(d.test.images[:, 0].numpy(), arrays[FILES[2]])
    np.testing.assert_array_equal(d.test.labels.numpy(), arrays[FILES[3]])
    # train + val together are exactly the training file
    both = torch.cat([d.train.images, d.val.images])[:, 0].numpy()
    assert sorted(map(bytes, both)) == sorted(map(bytes, arrays[FILES[0]]))


def test_raw_file_preferred_over_gz(tmp_path, make_idx_set):
    raw = make_idx_set(tmp_path, seed=1)
    (tmp_path / f"{FILES[2]}.gz").write_bytes(b"broken gzip that must not be read")
    d = load_dataset("idx", tmp_path)
    np.testing.assert_array_equal(d.test.images[:, 0].numpy(), raw[FILES[2]])


def test_count_mismatch_names_both_files(tmp_path, make_idx_set):
    make_idx_set(tmp_path, n_train=30)
    (tmp_path / FILES[1]).write_bytes(idx(np.zeros(29, np.uint8)))
    with pytest.raises(
        DataError, match=rf"{tmp_path / FILES[0]} has 30 images but {tmp_path / FILES[1]} has 29 labels"
    ):
        load_dataset("idx", tmp_path)


def test_test_labels_beyond_train_classes(tmp_path, make_idx_set):
    make_idx_set(tmp_path, num_classes=3)
    (tmp_path / FILES[3]).write_bytes(idx(np.full(20, 7, np.uint8)))
    with pytest.raises(
        DataError, match=r"t10k-labels-idx1-ubyte: label 7 at index 0 is out of range; expected labels 0..2"
    ):
        load_dataset("idx", tmp_path)


def test_mnist_labels_out_of_range(tmp_path, make_idx_set, monkeypatch):
    arrays = make_idx_set(tmp_path)
    labels = arrays[FILES[1]].copy()
    labels[5] = 10
    (tmp_path / FILES[1]).write_bytes(idx(labels))
    arrays[FILES[1]] = labels
    monkeypatch.setitem(mnist.RAW_MD5, "mnist", raw_md5s(arrays))
    with pytest.raises(DataError, match=r"label 10 at index 5 is out of range; expected labels 0..9"):
        load_dataset("mnist", tmp_path, download=False)


def test_mnist_md5_mismatch(tmp_path, make_idx_set):
    make_idx_set(tmp_path, gz=True)
    with pytest.raises(DataError) as e:
        load_dataset("mnist", tmp_path, download=False)
    msg = str(e.value)
    assert str(tmp_path / f"{FILES[0]}.gz") in msg
    assert "expected 6bbc9ace898e44ae57da46a324031adb" in msg
    assert hashlib.md5(idx(np.zeros(0, np.uint8))).hexdigest() not in msg
    assert "--dataset idx" in msg and "\n" not in msg


def test_mnist_with_matching_md5_loads(tmp_path, make_idx_set, monkeypatch):
    arrays = make_idx_set(tmp_path / "mnist", gz=True)
    monkeypatch.setitem(mnist.RAW_MD5, "mnist", raw_md5s(arrays))
    # found under root/mnist when data_dir is the root
    d = load_dataset("mnist", tmp_path, download=False)
    assert d.classes == [str(i) for i in range(10)] and d.source == str(tmp_path / "mnist")
    np.testing.assert_array_equal(d.test.images[:, 0].numpy(), arrays[FILES[2]])


def test_env_data_root_is_searched(tmp_path, make_idx_set, monkeypatch):
    arrays = make_idx_set(tmp_path / "envroot" / "mnist")
    monkeypatch.setitem(mnist.RAW_MD5, "mnist", raw_md5s(arrays))
    monkeypatch.setenv("IKD_DATA_DIR", str(tmp_path / "envroot"))
    assert load_dataset("mnist", download=False).source == str(tmp_path / "envroot" / "mnist")


def test_fashion_found_in_system_dir(tmp_path, make_idx_set, monkeypatch):
    system = tmp_path / "usr-share-datasets-fashion-mnist"
    arrays = make_idx_set(system, gz=True, seed=3)
    monkeypatch.setattr(mnist, "FASHION_SYSTEM_DIR", system)
    monkeypatch.setitem(mnist.RAW_MD5, "fashion-mnist", raw_md5s(arrays))
    d = load_dataset("fashion-mnist", download=False)
    assert d.source == str(system)
    assert d.classes[0] == "T-shirt/top" and d.classes[9] == "Ankle boot"
    np.testing.assert_array_equal(d.test.labels.numpy(), arrays[FILES[3]])


def test_missing_files_without_download(tmp_path, data_env):
    with pytest.raises(DataError) as e:
        load_dataset("mnist", download=False)
    msg = str(e.value)
    target = data_env / ".cache" / "ikd" / "mnist"
    assert msg.startswith(f"mnist: files not found in {target} (searched {target})")
    assert "download" not in msg and "train-images-idx3-ubyte.gz" in msg and "--data-dir" in msg


def test_idx_missing_names_dirs(tmp_path):
    with pytest.raises(
        DataError,
        match=rf"idx: files not found in {tmp_path / 'idx'} \(searched {tmp_path}, {tmp_path / 'idx'}\)",
    ):
        load_dataset("idx", tmp_path)


def test_partial_set_is_not_used(tmp_path, make_idx_set):
    make_idx_set(tmp_path)
    (tmp_path / FILES[3]).unlink()
    with pytest.raises(DataError, match="files not found"):
        load_dataset("idx", tmp_path)


# --- fuzzing: anything fed to the reader loads or raises DataError, never anything else -------

VALID_IMAGES = idx(np.arange(2 * 4 * 4, dtype=np.uint8).reshape(2, 4, 4))
VALID_LABELS = idx(np.array([1, 2, 3], np.uint8))


def _parse_or_data_error(data: bytes, ndim: int) -> None:
    try:
        out = parse_idx(data, "fuzz", ndim)
    except DataError:
        return
    assert out.dtype == np.uint8 and out.ndim == ndim


FUZZ = settings(max_examples=200, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(
    data=st.one_of(st.binary(max_size=64), mutated(VALID_IMAGES), mutated(VALID_LABELS)),
    ndim=st.sampled_from([1, 3]),
)
def test_fuzz_parse_idx(data, ndim):
    _parse_or_data_error(data, ndim)


@FUZZ
@given(data=st.one_of(mutated(gzip.compress(VALID_IMAGES)), st.binary(max_size=64).map(lambda b: b"\x1f\x8b" + b)))
def test_fuzz_gzipped_idx(data):
    try:
        raw = gunzip(data, "fuzz")
    except DataError:
        return
    _parse_or_data_error(raw, 3)


def test_errors_are_ikd_errors():
    assert issubclass(DataError, IkdError)
