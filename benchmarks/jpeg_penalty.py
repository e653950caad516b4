"""How far below lossless does a JPEG copy of a dataset sit? An estimate by compressing it further.

Only the JPEG-Q75 copy of CIFAR-10 is at hand offline, so the lossless accuracy cannot be measured
directly. This script goes the other way: it re-encodes the stored images at lower qualities
(Pillow, 4:2:0 chroma like the stored copy), trains the same network with the same recipe (ikd's
teacher recipe) on each version -- train, validation and test all at that quality, as the stored
copy is -- and fits test accuracy against the images' distortion from the originals. The fit at zero
distortion estimates the lossless accuracy; its distance from the stored copy's accuracy is the
penalty.

Distortion from the originals = the stored copy's own (`--stored-psnr`, the median PSNR against
the originals that the data's README gives; 30.5 dB for CIFAR-10 JPEG-Q75) plus the re-encoding's,
measured here against the stored images (mean squared errors add for roughly independent errors).
Two fits are given, linear in MSE and linear in RMSE: how accuracy bends near zero distortion is the
assumption, so the two bracket the estimate; neither sees what 4:2:0 chroma already removed from
every version alike, so the estimate is a lower bound in that respect. Decisions: none; the network
keeps its best-by-validation weights, test accuracy is reported.
"""

from __future__ import annotations

import argparse
import io
import time
from dataclasses import replace

import numpy as np
import torch
from PIL import Image

from ikd.arch import preset
from ikd.config import TeacherConfig
from ikd.context import section_train_config
from ikd.data import DataSplits, ImageSet, load_dataset
from ikd.model import build_model
from ikd.runtime import resolve_precision
from ikd.shrink import shrink_width
from ikd.train import evaluate, train_model

from common import CPU, machine_line, print_result, publish

STORED = 0  # the `--qualities` entry meaning the images as stored, not re-encoded

# Pillow's `subsampling` for 4:2:0, the chroma layout of the stored CIFAR-10 copy
CHROMA_420 = 2


def reencode(images: torch.Tensor, quality: int) -> torch.Tensor:
    """Every image of a uint8 (N, C, H, W) batch through a JPEG encode/decode at `quality`."""
    out = np.empty_like(images.numpy())
    for i, image in enumerate(images.numpy()):
        grey = image.shape[0] == 1
        pil = Image.fromarray(image[0] if grey else image.transpose(1, 2, 0), mode="L" if grey else "RGB")
        buffer = io.BytesIO()
        pil.save(buffer, format="JPEG", quality=quality, subsampling=CHROMA_420)
        decoded = np.asarray(Image.open(buffer))
        out[i] = decoded[None] if grey else decoded.transpose(2, 0, 1)
    return torch.from_numpy(out)


def mse(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(((a.float() - b.float()) ** 2).mean())


def psnr(mean_squared_error: float) -> float:
    return float("inf") if mean_squared_error == 0 else 10 * np.log10(255**2 / mean_squared_error)


def at_quality(data: DataSplits, quality: int) -> tuple[DataSplits, float]:
    """The dataset re-encoded at `quality` (STORED: as it is) and its MSE against the stored images."""
    if quality == STORED:
        return data, 0.0
    parts = {name: getattr(data, name) for name in ("train", "val", "test")}
    encoded = {name: ImageSet(reencode(part.images, quality), part.labels) for name, part in parts.items()}
    pixels = {name: part.images.numel() for name, part in parts.items()}
    error = sum(mse(encoded[n].images, parts[n].images) * pixels[n] for n in parts) / sum(pixels.values())
    return replace(data, **encoded), error


def linear_fit(x: list[float], y: list[float]) -> tuple[float, float]:
    """(intercept at x = 0, its standard error) of a least-squares line; error nan below 3 points."""
    slope, intercept = np.polyfit(x, y, 1)
    if len(x) < 3:
        return float(intercept), float("nan")
    residual = np.asarray(y) - (slope * np.asarray(x) + intercept)
    sigma2 = float(residual @ residual) / (len(x) - 2)
    xs = np.asarray(x)
    se = np.sqrt(sigma2 * (1 / len(x) + xs.mean() ** 2 / float(((xs - xs.mean()) ** 2).sum())))
    return float(intercept), float(se)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="cifar10")
    parser.add_argument("--data-dir")
    parser.add_argument(
        "--qualities",
        type=int,
        nargs="+",
        default=[STORED, 50, 35, 25],
        help=f"JPEG qualities to re-encode at; {STORED} = the images as stored",
    )
    parser.add_argument(
        "--stored-psnr",
        type=float,
        default=30.5,
        help="median PSNR (dB) of the stored images against the originals (data README)",
    )
    parser.add_argument("--arch", default="vgg16")
    parser.add_argument("--width", type=float, default=0.25, help="conv widths of --arch times this")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--markdown")
    parser.add_argument("--note", action="append", default=[])
    parser.add_argument("--quick", action="store_true", help="digits, a tiny net, one epoch of a few steps")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args()

    steps = None
    if args.quick:
        args.dataset, args.qualities, args.epochs, args.width, steps = "digits", [STORED, 50, 30, 15], 1, 0.0625, 4
    if STORED not in args.qualities:
        parser.error(f"--qualities must include {STORED} (the stored images): the penalty is measured from them")
    data = load_dataset(args.dataset, args.data_dir)
    base = preset(args.arch, in_channels=data.in_channels, image_size=data.image_size, num_classes=data.num_classes)
    spec = base if args.width == 1 else shrink_width(base, args.width)
    if spec is None:
        parser.error(f"--width {args.width}: {args.arch} cannot be narrowed that far")
    precision = resolve_precision("auto", CPU)
    recipe = section_train_config(TeacherConfig(epochs=args.epochs), args.epochs, precision, CPU, seed=0)
    config = recipe.model_copy(update={"max_steps_per_epoch": steps})
    stored_mse = 255**2 / 10 ** (args.stored_psnr / 10)

    rows = []
    for quality in args.qualities:
        started = time.monotonic()
        version, extra_mse = at_quality(data, quality)
        accuracies = []
        for seed in args.seeds:
            model = build_model(spec, seed=seed)
            train_model(model, version, config.model_copy(update={"seed": seed}), progress=not args.quiet)
            test = evaluate(model, version.test, mean=data.mean, std=data.std, device=CPU, precision=precision)
            accuracies.append(100 * test["accuracy"])
        rows.append((quality, extra_mse, stored_mse + extra_mse, accuracies, (time.monotonic() - started) / 60))

    mean = {q: float(np.mean(a)) for q, _, _, a, _ in rows}
    total = [r[2] for r in rows]
    fits = {
        "MSE": linear_fit(total, [mean[r[0]] for r in rows]),
        "RMSE": linear_fit([t**0.5 for t in total], [mean[r[0]] for r in rows]),
    }
    lines = [
        "| JPEG quality | PSNR vs stored (dB) | est. PSNR vs originals (dB) | test % per seed | mean | minutes |",
        "|---|---|---|---|---|---|",
    ]
    for quality, extra, est, accuracies, minutes in rows:
        label = "stored" if quality == STORED else f"re-encoded at {quality}"
        lines.append(
            f"| {label} | {psnr(extra):.1f} | {psnr(est):.1f} | {' / '.join(f'{a:.2f}' for a in accuracies)} "
            f"| {mean[quality]:.2f} | {minutes:.1f} |"
        )
    stored = mean[STORED]
    fit_lines = [
        f"- linear in {name}: lossless estimate {at0:.2f}% (standard error {se:.2f}), "
        f"**penalty of the stored copy {at0 - stored:+.2f} points**"
        for name, (at0, se) in fits.items()
    ]
    text = "\n".join(
        [
            f"Machine: {machine_line()}.",
            f"Data: {data.name} ({len(data.train)} train / {len(data.val)} val / {len(data.test)} test), "
            f"stored copy's PSNR against the originals taken as {args.stored_psnr} dB.",
            f"Network: {args.arch} at width x{args.width} ({spec.summary()}, {spec.num_params():,} params), "
            f"{args.epochs} epoch(s) of ikd's teacher recipe (batch {config.batch_size}, peak lr {config.lr}, "
            f"{config.schedule}, label smoothing {config.label_smoothing}, EMA {config.ema_epochs} epoch), "
            f"augmentation `{data.augment}`, {precision.name}, seeds {' '.join(map(str, args.seeds))}.",
            "",
            *lines,
            "",
            "Accuracy at zero distortion, by a least-squares line through the mean of each version:",
            "",
            *fit_lines,
            *(["", *[f"- {note}" for note in args.note]] if args.note else []),
        ]
    )
    publish(text, args.markdown, f"JPEG penalty: {data.name} as stored against lossless, estimated")
    print_result(
        {"stored": f"{stored:.2f}"} | {f"penalty_{name}": f"{at0 - stored:.2f}" for name, (at0, _) in fits.items()}
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
