"""The readers against real data, where this machine has it (skipped elsewhere)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ikd.data import load_dataset

pytestmark = pytest.mark.usefixtures("data_env")

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"  # read-only real datasets next to the project checkout
MNIST_DIR = SHARED / "mnist"
CIFAR_DIR = ROOT / ".cache" / "data"  # built by shared/data/cifar10-jpeg75/build_batches.py
FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")  # Debian package dataset-fashion-mnist


@pytest.mark.skipif(not (MNIST_DIR / "train-images-idx3-ubyte.gz").is_file(), reason="real MNIST not on this machine")
def test_real_mnist():
    d = load_dataset("mnist", MNIST_DIR, download=False)
    train = torch.cat([d.train.labels, d.val.labels])
    assert torch.bincount(train).tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert len(d.val) == 6000 and len(d.test) == 10000
    hist = torch.bincount(d.train.images.flatten(), minlength=256) + torch.bincount(
        d.val.images.flatten(), minlength=256
    )
    mean = (hist.double() * torch.arange(256, dtype=torch.float64)).sum() / hist.sum()
    assert mean.item() == pytest.approx(33.318, abs=1e-3)


@pytest.mark.skipif(
    not (CIFAR_DIR / "cifar-10-batches-py" / "data_batch_1").is_file(), reason="CIFAR-10 batches not built"
)
def test_real_cifar10():
    d = load_dataset("cifar10", CIFAR_DIR)
    assert (len(d.train), len(d.val), len(d.test)) == (45000, 5000, 10000)
    assert d.classes[0] == "airplane" and d.classes[9] == "truck"
    assert torch.bincount(torch.cat([d.train.labels, d.val.labels])).tolist() == [5000] * 10
    assert torch.bincount(d.val.labels).tolist() == [500] * 10
    assert d.train.images.shape[1:] == (3, 32, 32)


@pytest.mark.skipif(
    not (FASHION_DIR / "train-images-idx3-ubyte.gz").is_file(), reason="dataset-fashion-mnist not installed"
)
def test_real_fashion_mnist():
    d = load_dataset("fashion-mnist", FASHION_DIR, download=False)
    assert torch.bincount(torch.cat([d.train.labels, d.val.labels])).tolist() == [6000] * 10
    assert d.classes[-1] == "Ankle boot"
