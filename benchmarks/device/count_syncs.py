"""Host-device waits in ikd's training loop on a GPU, counted by torch's CUDA sync debug mode.

Every wait inside a training step stops the host from queueing the next kernels until the GPU has
drained its queue, so the host's Python time and the GPU's time add up instead of overlapping. This
trains a VGG on random CIFAR-sized data for a few dozen steps with every per-step feature on
(augmentation with cutout, EMA, label smoothing) and counts the synchronising calls, grouped by the
ikd line that made them. Run it under two versions of ikd (PYTHONPATH) to compare.

    python benchmarks/device/count_syncs.py [--steps 40] [--arch vgg16] [--label NAME]

Last line: `RESULT label=... steps=... syncs=... syncs_per_step=...`. Needs CUDA (exit 2 without).
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
import traceback
import warnings
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--arch", default="vgg16")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--label", default="ikd", help="a name for this version of ikd in the RESULT line")
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"], help="cpu: run the loop, count nothing")
    args = parser.parse_args(argv)

    import torch

    on_gpu = args.device == "cuda"
    if on_gpu and not torch.cuda.is_available():
        print("count_syncs.py: no CUDA device; it counts GPU waits", file=sys.stderr)
        return 2

    from ikd.arch import preset
    from ikd.data import DataSplits, ImageSet
    from ikd.model import build_model
    from ikd.train import TrainConfig, train_model

    generator = torch.Generator().manual_seed(0)

    def split(n: int) -> ImageSet:
        images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=generator)
        return ImageSet(images, torch.randint(0, 10, (n,), generator=generator))

    n_train = args.batch * args.steps
    data = DataSplits(
        "random", split(n_train), split(2 * args.batch), split(2 * args.batch), [str(i) for i in range(10)],
        (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), "reflect-crop-flip-cutout", "generated",
    )  # fmt: skip
    model = build_model(preset(args.arch, in_channels=3, image_size=32, num_classes=10), seed=0)
    config = TrainConfig(
        epochs=1,
        batch_size=args.batch,
        lr=0.1,
        ema_epochs=1.0,
        label_smoothing=0.1,
        schedule="linear",
        device=args.device,
    )
    import ikd

    package = str(Path(ikd.__file__).parent) + os.sep
    where: collections.Counter[str] = collections.Counter()
    if on_gpu:
        torch.cuda.set_sync_debug_mode("warn")
    with warnings.catch_warnings():
        warnings.simplefilter("always")

        def record(message: Warning | str, *_: object, **__: object) -> None:  # where ikd made a waiting call
            if "synchroniz" not in str(message):
                return
            frames = [f for f in traceback.extract_stack()[:-1] if f.filename.startswith(package)]
            where[f"{frames[-1].filename[len(package) :]}:{frames[-1].lineno}" if frames else "outside ikd"] += 1

        warnings.showwarning = record
        train_model(model, data, config, progress=False)
    if on_gpu:
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("default")
    syncs = sum(where.values())
    print(f"{args.label}: {syncs} synchronising calls in one epoch of {args.steps} steps (validation included)")
    for site, count in where.most_common():
        print(f"  {count:5d}  {site}")
    print(f"RESULT label={args.label} steps={args.steps} syncs={syncs} syncs_per_step={syncs / args.steps:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
