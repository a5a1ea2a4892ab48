"""Several processes for one run: data-parallel operator training with torch.distributed.

Launch any script or command that fits a run with `torchrun --nproc-per-node N ...` (or accelerate, or Slurm's
srun with the same environment variables). Every process draws the same batches (they are seeded by seed and step),
takes its share of each batch's rows, and the gradients are summed across processes before the optimiser step, so
the operators are those one process trains, up to float summation order. States at the cut are computed shard by
shard and shared. Only the first process writes to the run directory; the others wait for it where they read what
it wrote. gloo on CPUs, NCCL on GPUs (one per process, by LOCAL_RANK).

Nothing here changes a single-process run: with no torchrun environment every function is a no-op.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist

from .errors import ConfigError


def launched_world_size() -> int:
    """The number of processes torchrun (or srun with its variables) started this one among."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def ensure_process_group(device: torch.device) -> None:
    """Join the launcher's process group once, when there is one to join."""
    if launched_world_size() <= 1 or dist.is_initialized():
        return
    missing = [name for name in ("RANK", "MASTER_ADDR", "MASTER_PORT") if name not in os.environ]
    if missing:
        raise ConfigError(f"WORLD_SIZE={os.environ['WORLD_SIZE']} is set but {', '.join(missing)} is not: launch several "
                          "processes with torchrun (e.g. torchrun --standalone --nproc-per-node 2 ...), or unset WORLD_SIZE")
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend=backend, timeout=timedelta(minutes=int(os.environ.get("STRIDE_DIST_TIMEOUT_MIN", "60"))))


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def is_main() -> bool:
    return rank() == 0


def local_device(name: str) -> torch.device | None:
    """cuda:LOCAL_RANK for `auto` or `cuda` when torchrun started one process per GPU; None to use the name as given."""
    if launched_world_size() > 1 and name in ("auto", "cuda") and torch.cuda.is_available():
        return torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', '0')) % torch.cuda.device_count()}")
    return None


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


@contextmanager
def main_first():
    """The first process does the block (writes what the others will read) while the others wait, then they run it."""
    if not is_main():
        barrier()
    try:
        yield
    finally:
        if is_main():
            barrier()


def my_share(count: int) -> np.ndarray:
    """This process's contiguous share of `count` items (shares differ by at most one; some may be empty)."""
    return np.array_split(np.arange(count), world_size())[rank()]


def sum_across(tensor: torch.Tensor) -> torch.Tensor:
    """In place: the elementwise sum over processes (each fills its own part of a zeroed tensor: the sum is exact)."""
    if dist.is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def sum_gradients(parameters) -> None:
    """Sum every parameter's gradient over processes; a process that computed none for a parameter sends zeros."""
    if not dist.is_initialized():
        return
    for parameter in parameters:
        if parameter.grad is None:
            parameter.grad = torch.zeros_like(parameter)
        dist.all_reduce(parameter.grad, op=dist.ReduceOp.SUM)


def sum_values(values: dict[str, float], device: torch.device) -> dict[str, float]:
    """Scalars summed over processes (each process's part of a step's logged losses)."""
    if not dist.is_initialized():
        return values
    names = sorted(values)
    packed = torch.tensor([values[name] for name in names], dtype=torch.float64, device=device)
    dist.all_reduce(packed, op=dist.ReduceOp.SUM)
    return dict(zip(names, packed.tolist()))
