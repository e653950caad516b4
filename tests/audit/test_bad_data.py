"""Broken and hostile dataset files (IDX as MNIST ships it, CIFAR-10's pickles and archive): each
is refused in one `ikd: error:` line naming the file and the problem, and changes no file."""

from __future__ import annotations

import gzip
import pickle
import random
import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from audit.harness import BadInput, Maker, Shared, assert_ok, global_call, params, run_bad_input, write_files

IDX_NAMES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def idx_bytes(array: np.ndarray) -> bytes:
    array = np.ascontiguousarray(array, dtype=np.uint8)
    return bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def idx_files(n_train: int = 60, n_test: int = 20, size: int = 6) -> dict[str, bytes]:
    rng = np.random.default_rng(0)
    return {
        IDX_NAMES[0]: idx_bytes(rng.integers(0, 256, (n_train, size, size))),
        IDX_NAMES[1]: idx_bytes(np.arange(n_train) % 10),
        IDX_NAMES[2]: idx_bytes(rng.integers(0, 256, (n_test, size, size))),
        IDX_NAMES[3]: idx_bytes(np.arange(n_test) % 10),
    }


def idx_case(edit: Callable[[dict[str, bytes]], object], *, command: str = "compress") -> Maker:
    def make(case: Path, shared: Shared) -> list[str]:
        files = idx_files()
        edit(files)
        data = write_files(case / "data", files)
        if command == "train-mnist":  # the official name: checked against MNIST's md5 sums
            return [
                "train",
                "--dataset",
                "mnist",
                "--data-dir",
                str(data),
                "--epochs",
                "1",
                "--out",
                str(case / "model"),
                "--quiet",
            ]
        return [
            "compress",
            "--dataset",
            "idx",
            "--data-dir",
            str(data),
            "--run-dir",
            str(case / "run"),
            "--epochs",
            "1",
            "--quiet",
        ]

    return make


def cifar_batch(n: int = 4, seed: int = 0, **changes) -> bytes:
    rng = np.random.default_rng(seed)
    batch = {
        b"batch_label": b"batch",
        b"labels": [int(v) for v in rng.integers(0, 10, n)],
        b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
    }
    for key, value in changes.items():
        if value is None:
            batch.pop(key.encode())
        else:
            batch[key.encode()] = value
    return pickle.dumps(batch, protocol=2)  # how the official (Python 2) files are written


def cifar_case(replace: dict[str, bytes | None]) -> Maker:
    """A cifar-10-batches-py directory with some files replaced (None: removed). MARKER in a
    replacement stands for a file the hostile pickle would create if it ran."""

    def make(case: Path, shared: Shared) -> list[str]:
        files = {f"data_batch_{i}": cifar_batch(seed=i) for i in range(1, 6)}
        files["test_batch"] = cifar_batch(seed=6)
        files["batches.meta"] = pickle.dumps({b"label_names": [f"c{i}".encode() for i in range(10)]}, protocol=2)
        for name, data in replace.items():
            if data is None:
                files.pop(name)
            else:
                files[name] = data.replace(b"MARKER", str(case / "pwned").encode())
        data_dir = write_files(case / "data" / "cifar-10-batches-py", files)
        return [
            "compress",
            "--dataset",
            "cifar10",
            "--data-dir",
            str(data_dir),
            "--run-dir",
            str(case / "run"),
            "--epochs",
            "1",
            "--quiet",
        ]

    return make


def cifar_archive_case(content: bytes) -> Maker:
    def make(case: Path, shared: Shared) -> list[str]:
        data_dir = write_files(case / "data", {"cifar-10-python.tar.gz": content})
        return [
            "compress",
            "--dataset",
            "cifar10",
            "--data-dir",
            str(data_dir),
            "--run-dir",
            str(case / "run"),
            "--epochs",
            "1",
            "--quiet",
        ]

    return make


def set_file(name: str, data: Callable[[dict[str, bytes]], bytes]) -> Callable[[dict[str, bytes]], None]:
    """An edit of the IDX files: `name` gets `data(files)`."""

    def edit(files: dict[str, bytes]) -> None:
        files[name] = data(files)

    return edit


def idx_cases() -> list[BadInput]:
    images, labels, test_images, test_labels = IDX_NAMES

    def gzipped_images(files):
        files[images + ".gz"] = b"\x1f\x8b\x08\x00garbage"
        del files[images]

    group = "dataset (IDX)"
    return [
        BadInput(
            "idx-wrong-magic",
            group,
            "wrong magic number",
            quick=True,
            make=idx_case(set_file(images, lambda f: b"\x00\x00\x08\x01" + f[images][4:])),
        ),
        BadInput(
            "idx-wrong-dtype",
            group,
            "dtype byte",
            make=idx_case(set_file(images, lambda f: f[images][:2] + b"\x0d" + f[images][3:])),
        ),
        BadInput("idx-truncated-data", group, "truncated", make=idx_case(set_file(images, lambda f: f[images][:-5]))),
        BadInput("idx-truncated-header", group, "truncated", make=idx_case(set_file(labels, lambda f: f[labels][:6]))),
        BadInput(
            "idx-extra-bytes", group, "extra bytes", make=idx_case(set_file(images, lambda f: f[images] + b"xyz"))
        ),
        BadInput("idx-empty-file", group, "too short", make=idx_case(set_file(test_images, lambda f: b""))),
        BadInput("idx-corrupt-gzip", group, "not a valid gzip", make=idx_case(gzipped_images)),
        BadInput(
            "idx-gzip-truncated",
            group,
            "not a valid gzip",
            make=idx_case(set_file(images, lambda f: gzip.compress(f[images])[:50])),
        ),
        BadInput(
            "idx-count-mismatch",
            group,
            "expected the same count",
            make=idx_case(set_file(labels, lambda f: idx_bytes(np.arange(59) % 10))),
        ),
        BadInput(
            "idx-label-out-of-range",
            group,
            "out of range",
            make=idx_case(set_file(test_labels, lambda f: idx_bytes(np.array([0, 1, 200] + [2] * 17)))),
        ),
        BadInput(
            "idx-image-shape-mismatch",
            group,
            "expected the same size",
            make=idx_case(set_file(test_images, lambda f: idx_files(size=5)[test_images])),
        ),
        BadInput(
            "idx-zero-size-images",
            group,
            "image size",
            make=idx_case(set_file(images, lambda f: idx_bytes(np.zeros((60, 6, 0))))),
        ),
        BadInput(
            "idx-labels-where-images-belong",
            group,
            "wrong magic number",
            make=idx_case(set_file(images, lambda f: f[labels])),
        ),
        BadInput("idx-missing-file", group, "files not found", make=idx_case(lambda f: f.pop(test_labels))),
        BadInput("mnist-wrong-checksum", group, "md5", make=idx_case(lambda f: None, command="train-mnist")),
    ]


def cifar_cases() -> list[BadInput]:
    rng = random.Random(0)
    group = "dataset (CIFAR pickle)"
    return [
        BadInput(
            "cifar-pickle-calls-os-system",
            group,
            "pickle tries to load",
            quick=True,
            make=cifar_case({"data_batch_1": global_call("os", "system", "touch MARKER")}),
        ),
        BadInput(
            "cifar-pickle-calls-eval",
            group,
            "pickle tries to load builtins.eval",
            make=cifar_case({"data_batch_2": global_call("builtins", "eval", "open('MARKER', 'w')")}),
        ),
        BadInput(
            "cifar-pickle-calls-numpy-load",
            group,
            "pickle tries to load numpy.load",
            make=cifar_case({"test_batch": global_call("numpy", "load", "/etc/passwd")}),
        ),
        BadInput(
            "cifar-pickle-getattr-chain",
            group,
            "pickle tries to load builtins.getattr",
            make=cifar_case({"data_batch_1": global_call("builtins", "getattr", "os", "system")}),
        ),
        BadInput(
            "cifar-pickle-codecs-not-latin1",
            group,
            "latin1",
            make=cifar_case({"data_batch_1": global_call("_codecs", "encode", "abc", "rot13")}),
        ),
        BadInput(
            "cifar-not-a-dict",
            group,
            "expected a dict",
            make=cifar_case({"data_batch_1": pickle.dumps([1, 2, 3], protocol=2)}),
        ),
        BadInput(
            "cifar-missing-labels",
            group,
            "no 'labels' key",
            make=cifar_case({"data_batch_3": cifar_batch(labels=None)}),
        ),
        BadInput(
            "cifar-wrong-image-shape",
            group,
            "expected a uint8 array of shape",
            make=cifar_case({"data_batch_1": cifar_batch(data=np.zeros((4, 1000), np.uint8))}),
        ),
        BadInput(
            "cifar-wrong-dtype",
            group,
            "expected a uint8 array",
            make=cifar_case({"data_batch_1": cifar_batch(data=np.zeros((4, 3072), np.float32))}),
        ),
        BadInput(
            "cifar-label-out-of-range",
            group,
            "expected 0..9",
            make=cifar_case({"data_batch_4": cifar_batch(labels=[0, 1, 10, 2])}),
        ),
        BadInput(
            "cifar-count-mismatch",
            group,
            "expected the same count",
            make=cifar_case({"test_batch": cifar_batch(labels=[0, 1, 2])}),
        ),
        BadInput(
            "cifar-truncated-pickle",
            group,
            "not a readable pickle",
            make=cifar_case({"data_batch_5": cifar_batch()[:2000]}),
        ),
        BadInput(
            "cifar-random-bytes", group, "not a readable pickle", make=cifar_case({"data_batch_1": rng.randbytes(300)})
        ),
        BadInput("cifar-missing-batch", group, "missing", make=cifar_case({"data_batch_3": None})),
        BadInput(
            "cifar-bad-label-names",
            group,
            "label_names",
            make=cifar_case({"batches.meta": pickle.dumps({b"label_names": [b"a", b"b"]}, protocol=2)}),
        ),
        BadInput(
            "cifar-corrupt-archive",
            group,
            "not a readable tar archive",
            make=cifar_archive_case(b"\x1f\x8b\x08\x00" + rng.randbytes(200)),
        ),
    ]


@pytest.mark.parametrize("case", params(idx_cases() + cifar_cases()))
def test_a_bad_dataset_file_is_refused_in_one_line(case, shared, record):
    row = run_bad_input(case, shared)
    record.bad_inputs.append(row)
    assert_ok(row)
