"""Data-parallel training under `torchrun`: one process per core group or GPU, one model replica each.

`ikd train` started by `torchrun --nproc_per_node=N` joins the process group torchrun describes
(RANK, WORLD_SIZE, LOCAL_RANK in the environment; gloo on CPU, nccl on CUDA). Every rank walks the
same shuffled order of the training set and takes its own slice of each global batch, so the
effective batch size, the number of steps and the learning-rate schedule are those of a single
process: only the work is divided. Gradients are averaged by DistributedDataParallel; before each
validation rank 0's BatchNorm statistics are copied to every rank, so all ranks score the same
model and keep the same best epoch. Only rank 0 prints, evaluates on the test split and writes
the model. A resumable run (ikd.train's `state_dir`, on a disk every rank sees) saves the shared
training state from rank 0 and each rank's own random streams beside it.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ikd.errors import ConfigError


@dataclass(frozen=True)
class Group:
    rank: int
    world_size: int
    local_rank: int
    backend: str

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """This rank's slice of one global batch (every rank holds the same batch)."""
        return tuple(t[self.rank :: self.world_size] for t in tensors)

    def wrap(self, model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(model, device_ids=[self.local_rank] if device.type == "cuda" else None)

    def all_finite(self, value: float, device: torch.device) -> bool:
        """Whether the value is finite on every rank, so all ranks stop together instead of one
        leaving the others waiting in the next all-reduce."""
        return self.every([math.isfinite(value)], device)[0]

    def any(self, flag: bool, device: torch.device) -> bool:
        """Whether `flag` is true on some rank: one decision every rank takes together."""
        return not self.every([not flag], device)[0]

    def main_values(self, values: list[int], device: torch.device) -> list[int]:
        """Rank 0's `values`, on every rank."""
        size = torch.tensor(len(values), dtype=torch.long, device=device)
        dist.broadcast(size, src=0)
        if size.item() == 0:
            return []
        tensor = torch.tensor(values if self.is_main else [0] * int(size.item()), dtype=torch.long, device=device)
        dist.broadcast(tensor, src=0)
        return [int(v) for v in tensor.tolist()]

    def every(self, flags: list[bool], device: torch.device) -> list[bool]:
        """Position by position, whether the flag is true on every rank (all ranks give as many)."""
        if not flags:
            return []
        tensor = torch.tensor([1.0 if f else 0.0 for f in flags], device=device)
        dist.all_reduce(tensor, op=dist.ReduceOp.MIN)
        return [bool(v) for v in tensor.tolist()]

    def barrier(self) -> None:
        dist.barrier()

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        total = tensor.detach().clone()
        dist.all_reduce(total)
        return total

    def copy_buffers_from_main(self, model: torch.nn.Module) -> None:
        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)


def current() -> Group | None:
    """The process group this process belongs to, or None when it trains alone."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return None
    return Group(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)), dist.get_backend())


def saves_here() -> bool:
    """Whether this process writes the model: rank 0 of a torchrun group, or a process on its own. Read from
    the environment torchrun sets, so it is known before the group is joined."""
    return int(os.environ.get("WORLD_SIZE", "1")) <= 1 or int(os.environ.get("RANK", "0")) == 0


def init_from_environment(device: str) -> Group | None:
    """Join the group torchrun started this process in (None when not started by torchrun)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return None
    if not dist.is_available():
        raise ConfigError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if use_cuda:
        if local_rank >= torch.cuda.device_count():
            raise ConfigError(
                f"LOCAL_RANK {local_rank}: only {torch.cuda.device_count()} CUDA device(s); "
                "use --nproc_per_node <= the GPU count"
            )
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return current()


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
