"""imagefolder and npz sources."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from ikd.data import load_dataset
from ikd.errors import DataError

pytestmark = pytest.mark.usefixtures("data_env")


# --- imagefolder ------------------------------------------------------------------------------


def save(path, arr, mode=None, fmt=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr, mode=mode).save(path, format=fmt)


def make_folder(root, *, grey=False, size=8, per_class=4, classes=("cat", "dog", "eel"), test_classes=None):
    rng = np.random.default_rng(0)
    for split, names in (("train", classes), ("test", test_classes or classes)):
        for c in names:
            for i in range(per_class):
                shape = (size, size) if grey else (size, size, 3)
                save(root / split / c / f"{i}.png", rng.integers(0, 256, shape, dtype=np.uint8))
    return root


def test_imagefolder_rgb_round_trip(tmp_path):
    make_folder(tmp_path, size=32)
    (tmp_path / "train" / "cat" / "notes.txt").write_text("ignored: not an image extension")
    (tmp_path / "train" / "cat" / ".hidden.png").write_bytes(b"ignored: hidden")
    d = load_dataset("imagefolder", tmp_path, val_fraction=0.25)
    assert d.classes == ["cat", "dog", "eel"] and d.augment == "reflect-crop-flip"
    assert d.in_channels == 3 and d.image_size == 32
    assert len(d.train) == 9 and len(d.val) == 3 and len(d.test) == 12
    assert d.test.labels.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    want = np.asarray(Image.open(tmp_path / "test" / "dog" / "2.png")).transpose(2, 0, 1)
    np.testing.assert_array_equal(d.test.images[6].numpy(), want)


def test_imagefolder_greyscale_and_resize(tmp_path):
    make_folder(tmp_path, grey=True, size=10)
    d = load_dataset("imagefolder", tmp_path, image_size=6)
    assert d.in_channels == 1 and d.image_size == 6
    assert d.train.images.shape[1:] == (1, 6, 6)


def test_imagefolder_default_size_is_32_and_one_colour_image_makes_rgb(tmp_path):
    make_folder(tmp_path, grey=True, size=10)
    save(tmp_path / "train" / "dog" / "colour.jpg", np.zeros((5, 7, 3), np.uint8))
    d = load_dataset("imagefolder", tmp_path)
    assert d.in_channels == 3 and d.image_size == 32


def test_imagefolder_test_classes_subset(tmp_path):
    make_folder(tmp_path, test_classes=("dog",))
    d = load_dataset("imagefolder", tmp_path)
    assert d.test.labels.tolist() == [1] * 4 and d.num_classes == 3


def test_imagefolder_unknown_test_class(tmp_path):
    make_folder(tmp_path, test_classes=("dog", "fox"))
    with pytest.raises(DataError, match=rf"{tmp_path / 'test'}: class folders fox are not in {tmp_path / 'train'}"):
        load_dataset("imagefolder", tmp_path)


def test_imagefolder_empty_class(tmp_path):
    make_folder(tmp_path)
    (tmp_path / "train" / "empty").mkdir()
    with pytest.raises(DataError, match=rf"{tmp_path / 'train' / 'empty'}: class folder holds no images"):
        load_dataset("imagefolder", tmp_path)


@pytest.mark.parametrize("content", [b"not a png at all", None])
def test_imagefolder_unreadable_image(tmp_path, content):
    make_folder(tmp_path)
    bad = tmp_path / "train" / "dog" / "bad.png"
    if content is None:  # valid header, truncated pixel data: fails only while decoding
        good = (tmp_path / "train" / "dog" / "0.png").read_bytes()
        content = good[: len(good) // 2]
    bad.write_bytes(content)
    with pytest.raises(DataError, match=rf"{bad}: not a readable image"):
        load_dataset("imagefolder", tmp_path)


def test_imagefolder_layout_errors(tmp_path):
    with pytest.raises(DataError, match=rf"{tmp_path / 'train'}: not a directory"):
        load_dataset("imagefolder", tmp_path)
    (tmp_path / "train").mkdir()
    (tmp_path / "test").mkdir()
    with pytest.raises(DataError, match="no class subfolders"):
        load_dataset("imagefolder", tmp_path)
    with pytest.raises(DataError, match="imagefolder: no --data-dir given"):
        load_dataset("imagefolder")


def test_imagefolder_needs_two_classes_each_named_once(tmp_path):
    make_folder(tmp_path / "one", classes=("cat",))
    with pytest.raises(DataError, match=r"one class folder \(cat\); expected at least 2"):
        load_dataset("imagefolder", tmp_path / "one")
    make_folder(tmp_path / "twice", classes=("caf\u00e9", "cafe\u0301", "tea"))  # composed and decomposed
    with pytest.raises(DataError, match="one name in two Unicode forms"):
        load_dataset("imagefolder", tmp_path / "twice")


def test_imagefolder_follows_linked_folders_inside_a_class_once(tmp_path):
    make_folder(tmp_path / "data")
    make_folder(tmp_path / "more", classes=("extra",), per_class=3)
    (tmp_path / "data" / "train" / "cat" / "linked").symlink_to(tmp_path / "more" / "train" / "extra")
    (tmp_path / "data" / "train" / "cat" / "loop").symlink_to(tmp_path / "data" / "train" / "cat")
    d = load_dataset("imagefolder", tmp_path / "data", val_fraction=0.25)
    assert len(d.train) + len(d.val) == 15  # 4 + 3 linked cat images, 4 dog, 4 eel; the loop read once


def test_imagefolder_says_what_it_skipped(tmp_path, capsys):
    make_folder(tmp_path)
    for name in ("a.heic", "b.heic", "c.HEIC"):
        (tmp_path / "train" / "cat" / name).write_bytes(b"not read without a plugin")
    (tmp_path / "train" / "stray.png").write_bytes(b"outside every class folder")
    d = load_dataset("imagefolder", tmp_path)
    assert len(d.train) + len(d.val) == 12
    err = capsys.readouterr().err
    assert "skipped 3 files Pillow does not read (3 .heic) and 1 files outside the class folders" in err


def test_test_images_that_are_also_training_images_are_counted_in_a_warning(tmp_path, capsys):
    make_folder(tmp_path)
    load_dataset("imagefolder", tmp_path)
    assert "warning" not in capsys.readouterr().err
    # the same picture under another name, in another class even: pixels decide
    (tmp_path / "test" / "dog" / "copy.png").write_bytes((tmp_path / "train" / "cat" / "0.png").read_bytes())
    load_dataset("imagefolder", tmp_path)
    err = capsys.readouterr().err
    assert "1 of the 13 test images are also training images, pixel for pixel" in err
    a = arrays()
    a["x_test"][:2] = a["x_train"][5:7]
    load_dataset("npz", write_npz(tmp_path / "d.npz", **a))
    assert "2 of the 6 test images are also training images" in capsys.readouterr().err


def test_imagefolder_16_bit_images_are_scaled_and_32_bit_ones_refused(tmp_path):
    make_folder(tmp_path, grey=True)
    for c, level in (("cat", 8000), ("dog", 30000), ("eel", 65535)):
        path = tmp_path / "train" / c / "0.png"
        Image.fromarray(np.full((8, 8), level, np.uint16)).save(path)
        assert Image.open(path).mode == "I;16"
    d = load_dataset("imagefolder", tmp_path, val_fraction=0.25)
    images = torch.cat([d.train.images, d.val.images])
    labels = torch.cat([d.train.labels, d.val.labels])
    flat = {(int(labels[i]), int(images[i].min()), int(images[i].max())) for i in range(len(labels))}
    assert {(0, 31, 31), (1, 116, 116), (2, 255, 255)} <= flat  # level * 255 // 65535, not clipped to 255
    Image.fromarray(np.full((8, 8), 0.5, np.float32)).save(tmp_path / "train" / "cat" / "f.tiff")
    with pytest.raises(DataError, match=r"f.tiff: 32-bit float pixels \(mode F\)"):
        load_dataset("imagefolder", tmp_path)


def test_imagefolder_turns_images_upright_by_their_exif_orientation(tmp_path):
    make_folder(tmp_path, size=4)
    tall = np.zeros((4, 2, 3), np.uint8)
    tall[0, 0] = 255  # one bright corner, so every rotation and flip differs
    image = Image.fromarray(tall)
    exif = image.getexif()
    exif[0x0112] = 6  # to be shown rotated 90 degrees clockwise, as phones store portraits
    path = tmp_path / "test" / "cat" / "0.png"
    image.save(path, exif=exif)
    d = load_dataset("imagefolder", tmp_path, image_size=4)

    def resized(im: Image.Image) -> np.ndarray:
        return np.asarray(im.resize((4, 4), Image.Resampling.BILINEAR)).transpose(2, 0, 1)

    upright = ImageOps.exif_transpose(Image.open(path))
    assert upright.size == (4, 2) and not np.array_equal(resized(upright), resized(Image.open(path)))
    np.testing.assert_array_equal(d.test.images[0].numpy(), resized(upright))


# --- npz -------------------------------------------------------------------------------------


def arrays(n_train=20, n_test=6, shape=(8, 8), k=4, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "x_train": rng.integers(0, 256, (n_train, *shape), dtype=np.uint8),
        "y_train": np.arange(n_train) % k,
        "x_test": rng.integers(0, 256, (n_test, *shape), dtype=np.uint8),
        "y_test": np.arange(n_test) % k,
    }


def write_npz(path, **a):
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **a)
    return path


@pytest.mark.parametrize(
    "shape, to_nchw",
    [
        ((8, 8), lambda x: x[:, None]),
        ((8, 8, 1), lambda x: x.transpose(0, 3, 1, 2)),
        ((8, 8, 3), lambda x: x.transpose(0, 3, 1, 2)),
        ((3, 8, 8), lambda x: x),
        ((1, 8, 8), lambda x: x),
        ((3, 3, 3), lambda x: x.transpose(0, 3, 1, 2)),  # ambiguous: NHWC wins a tie
    ],
)
def test_npz_layouts(tmp_path, shape, to_nchw):
    a = arrays(shape=shape)
    d = load_dataset("npz", write_npz(tmp_path / "d.npz", **a))
    assert d.classes == ["0", "1", "2", "3"] and d.augment == "none"
    np.testing.assert_array_equal(d.test.images.numpy(), to_nchw(a["x_test"]))
    np.testing.assert_array_equal(d.test.labels.numpy(), a["y_test"])
    assert d.test.images.dtype == torch.uint8 and d.test.labels.dtype == torch.int64


def test_npz_float_scaled_and_keras_labels_and_class_names(tmp_path):
    a = arrays()
    a["x_train"] = a["x_train"].astype(np.float32) / 255
    a["y_train"] = a["y_train"][:, None]
    a["classes"] = np.array(["a", "b", "c", "d"])
    d = load_dataset("npz", write_npz(tmp_path / "sub" / "only.npz", **a), val_fraction=0.25)
    assert d.classes == ["a", "b", "c", "d"]
    both = torch.cat([d.train.images, d.val.images])
    assert both.dtype == torch.uint8 and len(both) == 20
    # a directory with exactly one .npz works too
    assert load_dataset("npz", tmp_path / "sub").source == str(tmp_path / "sub" / "only.npz")


@pytest.mark.parametrize(
    "change, pattern",
    [
        # the class count came from the largest label: {0, 2} made a class 1 without an image
        ({"y_train": np.arange(20) % 2 * 2, "y_test": np.arange(6) % 2 * 2}, r"no training image of class 1; expected"),
        ({"classes": np.array(list("abcde"))}, r"no training image of class e;"),
        ({"y_train": np.zeros(20, np.int64), "y_test": np.zeros(6, np.int64)}, r"1 class \(0\); expected at least 2"),
        ({"y_train": np.full(20, 2**63 + 1, np.uint64)}, r"holds label 9223372036854775809; expected class indices"),
        # without class names, a label of 1e9 built a billion of them (out of memory) before this check
        ({"y_train": np.arange(20) % 4 * 10**9}, r"holds label 3000000000 among 20 images; expected class indices"),
        ({"classes": np.array(list("abca"))}, r"names class 'a' twice; expected distinct class names"),
    ],
)
def test_npz_classes_that_cannot_be_learnt_are_refused(tmp_path, change, pattern):
    a = arrays() | change
    with pytest.raises(DataError, match=pattern):
        load_dataset("npz", write_npz(tmp_path / "d.npz", **a))


@pytest.mark.parametrize(
    "change, pattern",
    [
        ({"x_train": None}, r"missing key 'x_train' \(has: y_train, x_test, y_test\)"),
        (
            {"x_train": np.zeros((20, 8, 8), np.int64)},
            r"key 'x_train' is int64; expected uint8 0..255 or floats in \[0, 1\]",
        ),
        ({"x_train": np.full((20, 8, 8), 2.0)}, r"key 'x_train' is float64 with values outside \[0, 1\]"),
        ({"x_train": np.full((20, 8, 8), np.nan)}, r"float64 holding NaN or infinite values"),
        (
            {"x_train": np.zeros((20, 8, 8, 5), np.uint8)},
            r"key 'x_train' has shape \(20, 8, 8, 5\); expected \(N, H, W\)",
        ),
        ({"x_train": np.zeros((20, 64), np.uint8)}, r"has shape \(20, 64\)"),
        (
            {"x_test": np.zeros((6, 7, 7), np.uint8)},
            r"train images are \(1, 8, 8\) .* test images are \(1, 7, 7\)",
        ),
        ({"y_train": np.arange(19)}, r"key 'y_train' has 19 labels for 20 images"),
        (
            {"y_train": np.arange(20) * 0.5},
            r"key 'y_train' is float64 of shape \(20,\); expected integer labels",
        ),
        ({"y_train": np.arange(20) - 1}, r"key 'y_train' holds label -1; expected labels >= 0"),
        ({"y_test": np.full(6, 4)}, r"key 'y_test' holds label 4; expected labels 0..3 \(4 classes\)"),
        (
            {"x_train": np.zeros((20, 6, 8), np.uint8), "x_test": np.zeros((6, 6, 8), np.uint8)},
            r"images are 6x8 \(HxW\); expected square",
        ),
        (
            {"x_test": np.zeros((0, 8, 8), np.uint8), "y_test": np.zeros(0, np.int64)},
            r"the test set is empty; expected at least one image",
        ),
    ],
)
def test_npz_errors(tmp_path, change, pattern):
    a = arrays()
    for k, v in change.items():
        if v is None:
            del a[k]
        else:
            a[k] = v
    path = write_npz(tmp_path / "d.npz", **a)
    with pytest.raises(DataError, match=pattern) as e:
        load_dataset("npz", path)
    assert "\n" not in str(e.value)


def test_npz_non_square_resized_when_asked(tmp_path):
    a = arrays(shape=(6, 8))
    d = load_dataset("npz", write_npz(tmp_path / "d.npz", **a), image_size=4)
    assert d.test.images.shape == (6, 1, 4, 4)


def test_npz_file_errors(tmp_path):
    with pytest.raises(DataError, match="npz: no --data-dir given"):
        load_dataset("npz")
    with pytest.raises(DataError, match=rf"{tmp_path / 'nope.npz'}: not found"):
        load_dataset("npz", tmp_path / "nope.npz")
    (tmp_path / "bad.npz").write_bytes(b"PK\x03\x04 broken zip")
    with pytest.raises(DataError, match=rf"{tmp_path / 'bad.npz'}: not a readable .npz archive"):
        load_dataset("npz", tmp_path / "bad.npz")
    (tmp_path / "text.npz").write_text("not an archive")  # numpy's own error spoke of pickled data
    with pytest.raises(DataError, match=rf"{tmp_path / 'text.npz'}: not an .npz archive \(a zip of .npy arrays"):
        load_dataset("npz", tmp_path / "text.npz")
    (tmp_path / "text.npz").unlink()
    write_npz(tmp_path / "two.npz", **arrays())
    with pytest.raises(DataError, match=rf"{tmp_path}: holds 2 .npz files \(bad.npz, two.npz\); expected exactly one"):
        load_dataset("npz", tmp_path)
    np.save(tmp_path / "single.npy", np.zeros(3))
    with pytest.raises(DataError, match="holds a single array"):
        load_dataset("npz", tmp_path / "single.npy")


def test_npz_object_arrays_are_not_unpickled(tmp_path):
    a = arrays()
    a["y_train"] = np.array([object()] * 20, dtype=object)
    with pytest.raises(DataError, match=r"key 'y_train' is unreadable"):
        load_dataset("npz", write_npz(tmp_path / "d.npz", **a))
