"""load_dataset plumbing: data root, validation split, statistics, digits, resizing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ikd.data import DATASETS, DataSplits, ImageSet, load_dataset, resolve_data_root
from ikd.data.splits import channel_stats, stratified_split
from ikd.errors import DataError

pytestmark = pytest.mark.usefixtures("data_env")


def test_datasets_tuple():
    assert DATASETS == ("digits", "mnist", "fashion-mnist", "idx", "cifar10", "imagefolder", "npz")


def test_resolve_data_root_precedence(tmp_path, monkeypatch, data_env):
    assert resolve_data_root(None) == data_env / ".cache" / "ikd"
    monkeypatch.setenv("IKD_DATA_DIR", str(tmp_path / "env"))
    assert resolve_data_root(None) == tmp_path / "env"
    assert resolve_data_root(tmp_path / "arg") == tmp_path / "arg"
    assert resolve_data_root(str(tmp_path / "arg")) == tmp_path / "arg"
    monkeypatch.setenv("IKD_DATA_DIR", "")
    assert resolve_data_root(None) == data_env / ".cache" / "ikd"
    assert resolve_data_root("~/x") == data_env / "x"
    monkeypatch.chdir(tmp_path)
    assert resolve_data_root("rel") == tmp_path / "rel"  # absolute, so messages name full paths


def test_stratified_split_properties():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 7, 1000)
    kept, held = stratified_split(labels, 0.2, seed=3)
    assert len(held) == 200 and len(kept) == 800
    assert np.intersect1d(kept, held).size == 0
    np.testing.assert_array_equal(np.sort(np.concatenate([kept, held])), np.arange(1000))
    for c in range(7):
        n_c = (labels == c).sum()
        assert abs((labels[held] == c).sum() - 0.2 * n_c) < 1
    again = stratified_split(labels, 0.2, seed=3)
    np.testing.assert_array_equal(again[1], held)
    assert not np.array_equal(stratified_split(labels, 0.2, seed=4)[1], held)


def test_split_keeps_every_class_in_training():
    labels = np.array([0] * 10 + [1])  # a singleton class
    kept, held = stratified_split(labels, 0.5, seed=0)
    assert 10 in kept and len(held) == 6  # round(0.5 * 11), all from class 0


@pytest.fixture
def idx_dir(tmp_path, make_idx_set):
    make_idx_set(tmp_path / "d", n_train=100, n_test=10, size=4, num_classes=5)
    return tmp_path / "d"


def test_val_split_through_load_dataset(idx_dir):
    a = load_dataset("idx", idx_dir, val_fraction=0.2, split_seed=5)
    b = load_dataset("idx", idx_dir, val_fraction=0.2, split_seed=5)
    c = load_dataset("idx", idx_dir, val_fraction=0.2, split_seed=6)
    assert len(a.train) == 80 and len(a.val) == 20
    assert torch.equal(a.val.images, b.val.images) and torch.equal(a.train.labels, b.train.labels)
    assert not torch.equal(a.val.images, c.val.images)
    assert torch.bincount(a.val.labels).tolist() == [4] * 5
    # disjoint: no val image appears in train (the fixture images are random, so rows are unique)
    train_rows = {bytes(x) for x in a.train.images.numpy()}
    assert not any(bytes(x) in train_rows for x in a.val.images.numpy())
    assert torch.equal(a.test.images, c.test.images)  # the test set never depends on the seed


def test_mean_std_from_train_part_only(idx_dir):
    d = load_dataset("idx", idx_dir, val_fraction=0.3)
    x = d.train.images.double() / 255
    assert d.mean == pytest.approx((x.mean().item(),), abs=1e-12)
    assert d.std == pytest.approx((x.std(unbiased=False).item(),), abs=1e-12)
    assert all(type(v) is float for v in d.mean + d.std)


def test_channel_stats_exact_multichannel():
    imgs = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (50, 3, 5, 5), dtype=np.uint8))
    mean, std = channel_stats(imgs)
    x = imgs.double() / 255
    np.testing.assert_allclose(mean, x.mean(dim=(0, 2, 3)).numpy(), atol=1e-12)
    np.testing.assert_allclose(std, x.std(dim=(0, 2, 3), unbiased=False).numpy(), atol=1e-12)
    assert channel_stats(torch.full((2, 1, 3, 3), 7, dtype=torch.uint8))[1] == (1.0,)  # no divide by zero


@pytest.mark.parametrize("bad", [0, 1, -0.1, 1.5, float("nan"), "x"])
def test_val_fraction_validated(bad):
    with pytest.raises(DataError, match=r"val_fraction=.*: expected a number strictly between 0 and 1"):
        load_dataset("digits", val_fraction=bad)


def test_a_data_directory_for_the_built_in_digits_is_refused_not_ignored(tmp_path):
    with pytest.raises(DataError, match=r"--data-dir .*: the digits dataset is built into scikit-learn and reads no"):
        load_dataset("digits", tmp_path)
    assert load_dataset("digits", "").num_classes == 10  # an empty value is an unset one, as for every dataset


def test_unknown_dataset():
    with pytest.raises(DataError, match=r"dataset 'cifar100' is not known; expected one of: digits, mnist"):
        load_dataset("cifar100")


@pytest.mark.parametrize("bad", [-1, 1.5, "3", None])
def test_split_seed_validated(bad):
    with pytest.raises(DataError, match=r"split_seed=.*: expected a non-negative integer"):
        load_dataset("digits", split_seed=bad)


@pytest.mark.parametrize("bad", [0, -3, 2.5, True, 10**6])
def test_image_size_validated(bad):
    with pytest.raises(DataError, match=r"image_size="):
        load_dataset("digits", image_size=bad)


def test_digits():
    d = load_dataset("digits")
    assert isinstance(d, DataSplits) and d.name == "digits"
    assert len(d.train) + len(d.val) + len(d.test) == 1797
    assert len(d.test) == 359 and len(d.val) == 144
    assert d.classes == [str(i) for i in range(10)] and d.num_classes == 10
    assert d.in_channels == 1 and d.image_size == 8 and d.augment == "none"
    assert d.train.images.dtype == torch.uint8 and d.train.images.max() == 255
    # the test split is fixed whatever the split seed
    other = load_dataset("digits", split_seed=9)
    assert torch.equal(d.test.images, other.test.images)
    assert not torch.equal(d.val.labels, other.val.labels) or not torch.equal(d.val.images, other.val.images)


def test_digits_read_without_scikit_learn_are_its_own_digits(monkeypatch):
    from sklearn.datasets import load_digits

    import ikd.data.sources

    theirs = load_digits()
    pixels, labels = ikd.data.sources.digits_arrays()
    assert np.array_equal(pixels, theirs.images) and np.array_equal(labels, theirs.target)
    # where a version of scikit-learn keeps the file elsewhere, its own loader takes over
    monkeypatch.setattr(ikd.data.sources, "DIGITS_SHAPE", (0, 0))
    fallback, fallback_labels = ikd.data.sources.digits_arrays()
    assert np.array_equal(fallback, theirs.images) and np.array_equal(fallback_labels, theirs.target)


def test_digits_values_scaled():
    from sklearn.datasets import load_digits

    raw = load_digits().images
    d = load_dataset("digits")
    assert set(np.unique(d.test.images.numpy())) <= set(np.rint(np.arange(17) * 255 / 16).astype(int))
    assert raw.max() == 16


def test_resize_to_image_size():
    d = load_dataset("digits", image_size=16)
    assert d.image_size == 16 and d.train.images.shape[1:] == (1, 16, 16)
    assert d.train.images.dtype == torch.uint8


def test_imageset_checks():
    with pytest.raises(ValueError, match=r"ImageSet.images must be uint8 \(N, C, H, W\), got torch.float32"):
        ImageSet(torch.zeros(2, 1, 3, 3), torch.zeros(2, dtype=torch.int64))
    with pytest.raises(ValueError, match="ImageSet has 2 images but 3 labels"):
        ImageSet(torch.zeros(2, 1, 3, 3, dtype=torch.uint8), torch.zeros(3, dtype=torch.int64))
    s = ImageSet(torch.zeros(2, 3, 3, 1, dtype=torch.uint8).permute(0, 3, 1, 2), torch.zeros(2, dtype=torch.int64))
    assert s.images.is_contiguous() and len(s) == 2
    assert s.to("cpu").images.shape == (2, 1, 3, 3)


def test_source_recorded(idx_dir):
    assert Path(load_dataset("idx", idx_dir).source) == idx_dir


def test_an_ikd_command_on_digits_imports_neither_scikit_learn_nor_scipy_stats():
    # over two seconds of every ikd process's start (the digits are read from scikit-learn's file directly)
    probe = (
        "import sys, ikd.cli; from ikd.data import load_dataset; load_dataset('digits'); "
        "print(sorted(m for m in ('sklearn', 'scipy.stats') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
