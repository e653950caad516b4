"""Carry a trained teacher back from a GPU lease as fp16 halves, and rebuild it as an `ikd train` folder.

A lease returns files of at most 16 MiB, so cifar_evidence.sh writes the trained VGG-16's weights in fp16, split
in two (`--split MODEL_DIR PREFIX` writes `PREFIX.part0.safetensors`, `PREFIX.part1.safetensors` and
`PREFIX.model.json`). Given `PREFIX OUT`, this joins them, casts the floating tensors back to fp32 and writes
`OUT/model.safetensors` + `OUT/model.json`, which `ikd eval`, `--teacher` and every benchmark load like any trained
model. fp16 rounding moves weights by at most about one part in 2,000: evaluate the result (`ikd eval OUT`)
before trusting the accuracy its model.json records.

    python benchmarks/device/restore_teacher.py --split runs/cifar-evidence/teacher-vgg16 $OUT/teacher-vgg16-fp16
    python benchmarks/device/restore_teacher.py runs/device/teacher-vgg16-fp16 runs/teachers/cifar10-vgg16-gpu
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ikd.checkpoint import META_FILE, WEIGHTS_FILE, load_model


def split(model_dir: Path, prefix: Path) -> None:
    """The weights in fp16, in two files of about half the bytes each, and the metadata beside them."""
    half = {k: v.half() if v.is_floating_point() else v for k, v in load_file(model_dir / WEIGHTS_FILE).items()}
    parts: tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]] = ({}, {})
    total, size = sum(v.nbytes for v in half.values()), 0
    for key, value in half.items():
        parts[size >= total / 2][key] = value
        size += value.nbytes
    for i, part in enumerate(parts):
        save_file(part, f"{prefix}.part{i}.safetensors")
    shutil.copyfile(model_dir / META_FILE, f"{prefix}.{META_FILE}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("prefix", help="the halves' common prefix (PREFIX.part0.safetensors ...)")
    parser.add_argument("out", nargs="?", help="the folder to write model.safetensors and model.json into")
    parser.add_argument(
        "--split", metavar="MODEL_DIR", help="the other way: write MODEL_DIR's weights as halves at PREFIX"
    )
    args = parser.parse_args()
    if args.split:
        if args.out or not (Path(args.split) / WEIGHTS_FILE).is_file():
            parser.error(
                f"--split {args.split} PREFIX: expected a model folder (with {WEIGHTS_FILE}) and a prefix only"
            )
        split(Path(args.split), Path(args.prefix))
        print(f"split {args.split} into {args.prefix}.part0/1.safetensors (fp16)")
        return 0
    if not args.out:
        parser.error("expected PREFIX OUT (or --split MODEL_DIR PREFIX)")
    prefix, out = Path(args.prefix), Path(args.out)
    sources = [Path(f"{prefix}.part{i}.safetensors") for i in (0, 1)] + [Path(f"{prefix}.{META_FILE}")]
    for source in sources:
        if not source.is_file():
            raise SystemExit(f"restore_teacher.py: {source}: not found; expected what cifar_evidence.sh brought back")
    weights: dict[str, torch.Tensor] = {}
    for part in sources[:2]:
        try:
            weights |= {k: v.float() if v.is_floating_point() else v for k, v in load_file(part).items()}
        except SafetensorError as exc:
            raise SystemExit(f"restore_teacher.py: {part}: not a safetensors file ({exc})") from None
    out.mkdir(parents=True, exist_ok=True)
    save_file(weights, out / WEIGHTS_FILE)
    shutil.copyfile(sources[2], out / META_FILE)
    model, _ = load_model(out)  # fails with the key or shape that does not match the recorded architecture
    print(f"restored {out}: {sum(p.numel() for p in model.parameters()):,} parameters, fp16 -> fp32")
    return 0


if __name__ == "__main__":
    sys.exit(main())
