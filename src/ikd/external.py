"""Bring your own teacher: any trained nn.Module that maps images to logits can be the root.

The hint layer is named by module path (as in `model.named_modules()`) and read with a forward
hook; its output must be a feature map (N, C, H, W). The module sees batches normalised with the
dataset's per-channel mean and std, like every ikd model.
"""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

import torch
from torch import nn
from torch.export.passes import move_to_device_pass
from torch.utils.flop_counter import FlopCounterMode

from ikd.errors import ConfigError
from ikd.model import VGG

# What a user's forward may raise on an input it was not built for (shape, dtype, device, arity).
_FORWARD_ERRORS = (RuntimeError, TypeError, ValueError, IndexError, AttributeError, NotImplementedError)


def module_digest(module: nn.Module) -> str:
    """SHA-256 of a module's state (names, dtypes, shapes and values): the same teacher, or not."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        if isinstance(tensor, torch.Tensor):
            data = tensor.detach().cpu().contiguous().reshape(-1)
            digest.update(f"{name}:{data.dtype}:{tuple(tensor.shape)};".encode())
            digest.update(data.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def counted_macs(module: nn.Module, example: torch.Tensor) -> int | None:
    """Multiply-accumulates per image of `module`'s forward on `example`, as torch's FlopCounterMode counts
    them (convolutions and matrix products, two FLOPs each: what ArchSpec.macs counts of a VGG, and the two
    agree exactly), or None where it counts nothing. Best effort, after the module passed its check: ops
    torch has no formula for (quantized or custom kernels) count 0, and a forward the counter breaks is
    left uncounted rather than refused."""
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            module(example)
    except _FORWARD_ERRORS:
        return None
    return counter.get_total_flops() // (2 * example.shape[0]) or None


# ops that behave differently in training mode, and the argument that says which mode a program froze
_MODE_FLAGS = {
    "aten.batch_norm.default": 5,
    "aten.native_batch_norm.default": 5,
    "aten._native_batch_norm_legit.default": 5,
    "aten.dropout.default": 2,
    "aten.native_dropout.default": 2,
    "aten.feature_dropout.default": 2,
    "aten.alpha_dropout.default": 2,
}
_TRAINING_ONLY = ("aten._native_batch_norm_legit_functional", "aten._batch_norm_with_update")


def _trains(node: torch.fx.Node) -> bool:
    """Whether a program's node computes in training mode (batch statistics, random dropout)."""
    target = str(node.target)
    flag = _MODE_FLAGS.get(target)
    return target.startswith(_TRAINING_ONLY) or (flag is not None and len(node.args) > flag and node.args[flag] is True)


def _checked_program(path: str, device: torch.device) -> torch.export.ExportedProgram:
    """The program saved at `path`, checked as load_program says and moved to `device`."""
    where = f"teacher.program {path}"
    if not Path(path).is_file():
        raise ConfigError(f"{where}: no such file")
    try:
        with warnings.catch_warnings():  # torch's own deprecation notices, not the user's to act on
            warnings.simplefilter("ignore", FutureWarning)
            program = torch.export.load(path)
    except Exception as exc:  # a bad file fails deep in torch, in many ways: one line says which
        raise ConfigError(f"{where}: not a program saved by torch.export.save ({first_line(exc)})") from None
    names = program.graph_signature.user_inputs
    inputs = [n for n in program.graph.nodes if n.op == "placeholder" and n.name in names]
    example = inputs[0].meta.get("val") if len(names) == len(inputs) == 1 else None
    if not isinstance(example, torch.Tensor):
        raise ConfigError(f"{where}: expected a program of one input, a batch of images; it takes {list(names)}")
    if isinstance(example.shape[0], int):
        raise ConfigError(
            f"{where}: exported for batches of exactly {example.shape[0]} images; export it with a dynamic batch "
            "dimension: torch.export.export(model, (x,), dynamic_shapes=({0: torch.export.Dim('batch')},))"
        )
    training = sorted({str(n.target) for n in program.graph.nodes if _trains(n)})
    if training:
        raise ConfigError(
            f"{where}: exported in training mode ({', '.join(training)}); call model.eval() before exporting"
        )
    # constants and device arguments the export froze on its own device move too, not only the weights
    return move_to_device_pass(program, device)


def first_line(exc: BaseException) -> str:
    """An exception as one short line: its type and the first line of its message."""
    return f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0][:200]}"


def load_program(path: str, device: torch.device) -> nn.Module:
    """A model saved by torch.export.save, on `device`, as a module whose submodules keep their names
    (torch.export.unflatten), so a hint layer can be named. Refused with one line: a file that is not
    such a program, one of other inputs than one batch of images, one exported with a fixed batch size
    (ikd feeds batches of every size), or one exported in training mode (BatchNorm on each batch's
    statistics, dropout). torch.export.load unpickles parts of the file: load only programs you trust."""
    program = _checked_program(path, device)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return torch.export.unflatten(program)


class FrozenProgram(nn.Module):
    """A program as one flat graph (ExportedProgram.module()), for timing: the unflattened module runs its
    graphs through torch.fx's interpreter, about twice as slow at batch 1 (a ResNet on MNIST: 9.9 against
    4.9 ms), which would inflate its speed-ups. train() and eval() leave it in the mode it was exported in
    (torch refuses to switch a program's; load_program's checks refuse one exported in training mode)."""

    def __init__(self, program: nn.Module):
        super().__init__()
        self.program = program

    def train(self, mode: bool = True) -> FrozenProgram:
        self.training = mode
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.program(x)


def load_program_for_timing(path: str) -> FrozenProgram:
    """The program at `path` on the CPU as one flat graph (FrozenProgram), checked as load_program checks
    it; module_digest of its `.program` is load_program's."""
    return FrozenProgram(_checked_program(path, torch.device("cpu")).module())


NO_HINT_LAYER = "the teacher module has no hint_layer; name one, or set loss.gamma to 0"


class ExternalTeacher(nn.Module):
    """Wraps a user's module so the objective can ask it for logits and one hint feature map. One
    forward on `example` checks it first, so a module that cannot be the root is refused before
    anything is recorded."""

    def __init__(self, module: nn.Module, hint_layer: str | None, example: torch.Tensor, num_classes: int):
        super().__init__()
        if not isinstance(module, nn.Module):
            raise ConfigError(
                f"teacher: expected a torch.nn.Module mapping images to logits, got {type(module).__name__}"
            )
        self.module = module.eval()
        self.hint_layer = hint_layer
        self.hint_channels: int | None = None
        self._captured: torch.Tensor | None = None
        if hint_layer is not None:
            names = [name for name, _ in module.named_modules() if name]
            if hint_layer not in names:
                shown = ", ".join(names[:8]) + (" ..." if len(names) > 8 else "")
                raise ConfigError(f"hint_layer {hint_layer!r} is not a submodule of the teacher; it has: {shown}")
            module.get_submodule(hint_layer).register_forward_hook(self._capture)
        given = f"a batch of {tuple(example.shape)} {str(example.dtype).removeprefix('torch.')} normalised images"
        try:
            with torch.no_grad():
                logits, features = self.forward_features(example)
        except _FORWARD_ERRORS as exc:
            first_line = (str(exc).strip().splitlines() or [""])[0]
            raise ConfigError(f"the teacher module fails on {given} ({type(exc).__name__}: {first_line})") from None
        expected = (example.shape[0], num_classes)
        if not isinstance(logits, torch.Tensor) or tuple(logits.shape) != expected or not logits.is_floating_point():
            got = (
                f"a {str(logits.dtype).removeprefix('torch.')} tensor of shape {tuple(logits.shape)}"
                if isinstance(logits, torch.Tensor)
                else f"a {type(logits).__name__}"
            )
            raise ConfigError(
                f"the teacher module returns {got} for {given}; expected float logits of shape {expected}"
            )
        if features and (not isinstance(features[0], torch.Tensor) or features[0].dim() != 4):
            shape = tuple(features[0].shape) if isinstance(features[0], torch.Tensor) else type(features[0]).__name__
            raise ConfigError(f"hint_layer {hint_layer!r} outputs {shape}; expected a feature map (N, C, H, W)")
        self.hint_channels = features[0].shape[1] if features else None
        self.macs = counted_macs(module, example)

    def _capture(self, module, inputs, output) -> None:
        self._captured = output

    def num_params(self) -> int:
        return sum(p.numel() for p in self.module.parameters())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x)

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Logits and a one-element list: the hint layer's output (block index 0)."""
        self._captured = None
        logits = self.module(x)
        if self.hint_layer is None:
            return logits, []
        if self._captured is None:  # a submodule the teacher's forward never calls
            raise ConfigError(f"hint_layer {self.hint_layer!r} is not called in the teacher's forward pass")
        return logits, [self._captured]


Teacher = VGG | ExternalTeacher  # what can teach: an ikd model or a wrapped user module
