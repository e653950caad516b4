"""Carry a trained teacher back from a GPU lease in fp16 parts, and rebuild it as an `ikd train` folder.

A lease returns files of at most 16 MiB, so `--split MODEL_DIR PREFIX` (run there by cifar_evidence.sh) writes the
weights in fp16 as `PREFIX.part0.safetensors`, `PREFIX.part1.safetensors`, ... (each under 15 MiB: two for a VGG-16,
three for a VGG-19) and `PREFIX.model.json`. Given `PREFIX OUT`, this joins every part, casts the floating tensors
back to fp32 and writes `OUT/model.safetensors` + `OUT/model.json`, which `ikd eval`, `--teacher` and every
benchmark load like any trained model. fp16 rounding moves weights by at most about one part in 2,000: evaluate
the result (`ikd eval OUT`) before trusting the accuracy its model.json records.

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
from ikd.errors import CheckpointError

PART_BYTES = 15 * 2**20  # under the lease's 16 MiB per file, with room for each file's header


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(path)
    except (SafetensorError, OSError) as exc:
        raise SystemExit(f"restore_teacher.py: {path}: not a readable safetensors file ({exc})") from None


def split(model_dir: Path, prefix: Path, part_bytes: int = PART_BYTES) -> int:
    """The weights in fp16, in as few files of at most `part_bytes` of tensors as the order allows, and the
    metadata beside them; returns how many parts."""
    half = {k: v.half() if v.is_floating_point() else v for k, v in read_weights(model_dir / WEIGHTS_FILE).items()}
    parts: list[dict[str, torch.Tensor]] = [{}]
    for key, value in half.items():
        if value.nbytes > part_bytes:
            raise SystemExit(f"restore_teacher.py: {model_dir}: {key} alone is {value.nbytes:,} bytes in fp16")
        if sum(v.nbytes for v in parts[-1].values()) + value.nbytes > part_bytes:
            parts.append({})
        parts[-1][key] = value
    for i, part in enumerate(parts):
        save_file(part, f"{prefix}.part{i}.safetensors")
    shutil.copyfile(model_dir / META_FILE, f"{prefix}.{META_FILE}")
    return len(parts)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("prefix", help="the parts' common prefix (PREFIX.part0.safetensors ...)")
    parser.add_argument("out", nargs="?", help="the folder to write model.safetensors and model.json into")
    parser.add_argument(
        "--split", metavar="MODEL_DIR", help="the other way: write MODEL_DIR's weights as parts at PREFIX"
    )
    args = parser.parse_args()
    if args.split:
        if args.out:
            parser.error(f"--split {args.split} PREFIX takes no OUT (got {args.out})")
        if not (Path(args.split) / WEIGHTS_FILE).is_file():
            parser.error(f"--split {args.split}: no {WEIGHTS_FILE} there; expected a trained model's folder")
        count = split(Path(args.split), Path(args.prefix))
        print(f"split {args.split} into {count} fp16 parts at {args.prefix}.part*.safetensors")
        return 0
    if not args.out:
        parser.error("expected PREFIX OUT (or --split MODEL_DIR PREFIX)")
    prefix, out = Path(args.prefix), Path(args.out)
    parts, meta = [], Path(f"{prefix}.{META_FILE}")
    while (part := Path(f"{prefix}.part{len(parts)}.safetensors")).is_file():
        parts.append(part)
    for needed in [meta] + ([] if parts else [Path(f"{prefix}.part0.safetensors")]):
        if not needed.is_file():
            raise SystemExit(f"restore_teacher.py: {needed}: not found; expected what cifar_evidence.sh brought back")
    weights: dict[str, torch.Tensor] = {}
    for part in parts:
        weights |= {k: v.float() if v.is_floating_point() else v for k, v in read_weights(part).items()}
    out.mkdir(parents=True, exist_ok=True)
    save_file(weights, out / WEIGHTS_FILE)
    shutil.copyfile(meta, out / META_FILE)
    try:  # a part missing shows here, as a key the recorded architecture needs
        model, _ = load_model(out)
    except CheckpointError as exc:
        raise SystemExit(f"restore_teacher.py: {prefix}: the parts do not make the model ({exc})") from None
    print(f"restored {out} from {len(parts)} parts: {sum(p.numel() for p in model.parameters()):,} parameters, fp32")
    return 0


if __name__ == "__main__":
    sys.exit(main())
