"""Where and in what precision training runs: device choice, autocast, and CPU capability checks."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import time
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import torch
import torch.nn.functional as F

from ikd._version import __version__
from ikd.atomic import atomic_write_json
from ikd.errors import ConfigError

DEVICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def resolve_device(name: str = "auto") -> torch.device:
    """The device `name` asks for (auto: CUDA, else MPS, else the CPU); on CUDA, also lets cuDNN time its
    convolution algorithms once per shape and keep the fastest (ikd's batch shapes are fixed: training
    drops the last partial batch), at the cost of GPU runs that are not bit-identical (they never were)."""
    device = _device(name)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    return device


def _device(name: str) -> torch.device:
    if name not in DEVICES:
        raise ConfigError(f"unknown device {name!r}; expected one of {', '.join(DEVICES)}")
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA device is available")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError("--device mps: MPS is not available")
    return torch.device(name)


def _cpu_identity() -> tuple[str, set[str]]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown", set()
    lines = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    lines = {key.strip(): value.strip() for key, value in lines.items()}
    return lines.get("model name", "unknown"), set(lines.get("flags", "").split())


def cpu_model_name() -> str:
    """The CPU's model name from /proc/cpuinfo, e.g. to say where a latency was measured."""
    return _cpu_identity()[0]


def cpu_name() -> str:
    """The CPU's model name, else what the platform module knows (no /proc/cpuinfo: macOS, Windows)."""
    name = cpu_model_name()
    return name if name != "unknown" else (platform.processor() or platform.machine())


def describe_machine(device: torch.device | None = None) -> str:
    """Where a run computes: CPU, torch threads, the accelerator when one is used, torch and ikd versions."""
    kind = "cuda" if device is None else device.type  # no device given: what this process could use
    accelerator = {
        "cuda": f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else "",
        "mps": ", Apple MPS",
    }.get(kind, "")
    return (
        f"{cpu_name()}, {torch.get_num_threads()} torch threads{accelerator}, torch {torch.__version__}, "
        f"ikd {__version__}"
    )


def cpu_has_bf16_instructions() -> bool:
    """Native bf16 dot products (AVX512-BF16 or AMX). Necessary for fast bf16, not sufficient."""
    _, flags = _cpu_identity()
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def _time_conv(dtype: torch.dtype) -> float:
    x = torch.randn(32, 128, 16, 16, dtype=dtype, requires_grad=True)
    w = torch.randn(128, 128, 3, 3, dtype=dtype, requires_grad=True)
    best = float("inf")
    for repeat in range(4):
        start = time.perf_counter()
        F.conv2d(x, w, padding=1).sum().backward()
        if repeat:  # the first call builds the kernels
            best = min(best, time.perf_counter() - start)
    return best


@cache
def cpu_bf16_pays() -> bool:
    """Whether bf16 convolutions train faster than fp32 on this CPU, measured once and cached.

    Having the instructions is not enough: on Intel CPUs with AVX512-BF16 but no AMX, oneDNN's bf16
    kernels run at about half the fp32 rate, while AMD Zen 4 and AMX parts run them about 2x faster.
    The verdict is stored per CPU model, flags and torch version under ~/.cache/ikd.
    """
    if not cpu_has_bf16_instructions():
        return False
    model, flags = _cpu_identity()
    key = hashlib.sha256(f"{model}|{sorted(flags)}|{torch.__version__}".encode()).hexdigest()[:16]
    cache_file = Path(os.environ.get("IKD_CACHE_DIR", Path.home() / ".cache" / "ikd")) / "cpu-bf16.json"
    try:
        known = json.loads(cache_file.read_text())
    except (OSError, ValueError):
        known = {}
    if isinstance(known, dict) and isinstance(known.get(key), bool):
        return known[key]
    verdict = _time_conv(torch.bfloat16) < 0.8 * _time_conv(torch.float32)
    # atomic, as torchrun's ranks may measure and write at once; an unwritable cache only costs re-measuring
    with contextlib.suppress(OSError):
        atomic_write_json(cache_file, {**(known if isinstance(known, dict) else {}), key: verdict})
    return verdict


@dataclass(frozen=True)
class Precision:
    """A resolved precision: the autocast dtype (None = fp32) and whether losses need scaling."""

    name: str
    device_type: str
    dtype: torch.dtype | None

    @property
    def needs_grad_scaler(self) -> bool:
        return self.dtype == torch.float16

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=self.dtype)


def resolve_precision(name: str, device: torch.device) -> Precision:
    """auto = bf16 autocast on CPUs where it measurably pays, AMP (bf16, else fp16) on CUDA, else fp32."""
    if name not in PRECISIONS:
        raise ConfigError(f"unknown precision {name!r}; expected one of {', '.join(PRECISIONS)}")
    kind = device.type
    if name == "auto":
        if kind == "cuda":
            name = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        elif kind == "cpu" and cpu_bf16_pays():
            name = "bf16"
        else:
            name = "fp32"
    if name == "fp16" and kind == "cpu":
        raise ConfigError("--precision fp16 is not supported on the CPU; use bf16 or fp32")
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[name]
    return Precision(name=name, device_type=kind, dtype=dtype)


# The narrowest first convolution (output channels) that trains faster channels-last on a CPU in bf16.
# Measured on a 2-core AMX Xeon, MNIST-sized VGGs (benchmarks/results/train_layout_28x28x1.md): first
# widths 64 (VGG-16) and 16 trained 1.21x and 1.33x faster channels-last, 8 about even, 4 (the small end
# of a chain) 1.18x slower.
CHANNELS_LAST_MIN_WIDTH = 8


def training_layout(model: torch.nn.Module, device: torch.device, dtype: torch.dtype | None) -> torch.memory_format:
    """The memory layout a model runs fastest in under autocast `dtype` (None: fp32): NHWC on CUDA, and
    on a CPU in bf16 unless its first convolution is too narrow for oneDNN's NHWC kernels to pay; NCHW
    in fp32 (no gain measured)."""
    if device.type == "cuda":
        return torch.channels_last
    if dtype != torch.bfloat16:
        return torch.contiguous_format
    first = next((m for m in model.modules() if isinstance(m, torch.nn.Conv2d)), None)
    wide = first is None or first.out_channels >= CHANNELS_LAST_MIN_WIDTH
    return torch.channels_last if wide else torch.contiguous_format
