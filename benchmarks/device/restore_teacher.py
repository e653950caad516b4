"""Rebuild a teacher that a GPU lease brought back as fp16 halves (cifar_evidence.sh) into an `ikd train` folder.

A lease returns files of at most 16 MiB, so cifar_evidence.sh writes the trained VGG-16's weights in fp16, split
in two (`PREFIX.part0.safetensors`, `PREFIX.part1.safetensors`, with `PREFIX.model.json` beside them). This joins
them, casts the floating tensors back to fp32 and writes `OUT/model.safetensors` + `OUT/model.json`, which
`ikd eval`, `--teacher` and every benchmark load like any trained model. fp16 rounding moves weights by at most
about one part in 2,000: evaluate the result (`ikd eval OUT`) before trusting the accuracy its model.json records.

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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("prefix", help="the halves' common prefix (PREFIX.part0.safetensors ...)")
    parser.add_argument("out", help="the folder to write model.safetensors and model.json into")
    args = parser.parse_args()
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
