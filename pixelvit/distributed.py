"""Where a run happens: this process's place among the DDP processes, and its device.

    torchrun --nproc_per_node=2 -m pixelvit.train ...     two processes, each 1/2 of every global batch

torchrun tells each process its RANK, WORLD_SIZE and LOCAL_RANK through the environment; without
torchrun a run is rank 0 of 1 and every method here is a no-op (or returns its input).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class Processes:
    """This process's place among the DDP processes torchrun started (rank 0 of 1 without torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls) -> Processes:
        return cls(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                   int(os.environ.get("LOCAL_RANK", 0)))

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def start(self, device: torch.device) -> bool:
        """Join the process group if needed; True when this call created it (and so must destroy it)."""
        if not self.distributed or dist.is_initialized():
            return False
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        return True

    def barrier(self):
        if self.distributed:
            dist.barrier()

    def main_first(self, action) -> None:
        """Rank 0 calls action(); every process returns only once it has (a barrier after it). For a change
        to shared files the other ranks must not see half done, e.g. --restart deleting a finished run."""
        if self.main:
            action()
        self.barrier()

    def sum(self, values: list[float], device) -> list[float]:
        """`values` added up over all processes (float64)."""
        tensor = torch.tensor(values, dtype=torch.float64, device=device)
        if self.distributed:
            dist.all_reduce(tensor)
        return tensor.tolist()

    def gather(self, obj) -> list:
        """Every process's `obj`, in rank order."""
        if not self.distributed:
            return [obj]
        gathered = [None] * self.world_size
        dist.all_gather_object(gathered, obj)
        return gathered


def resolve_device(name: str, processes: Processes | None = None) -> torch.device:
    """"auto" -> this process's GPU if there is one, else the CPU; "cuda" without a GPU -> ValueError."""
    processes = processes or Processes.from_env()
    if name == "auto":
        name = f"cuda:{processes.local_rank}" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise ValueError(f"unknown device {name!r}: use auto, cpu, cuda or cuda:N") from error
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for, but this machine has no CUDA GPU: use --device cpu or auto")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return device


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"cpu ({os.cpu_count()} cores, {torch.get_num_threads()} threads)"


def replicas_in_sync(model, processes: Processes) -> bool:
    """Do all DDP processes hold exactly the same weights? (Broadcast rank 0's and compare.)"""
    if not processes.distributed:
        return True
    largest = torch.zeros((), dtype=torch.float64, device=next(model.parameters()).device)
    for tensor in model.state_dict().values():
        reference = tensor.detach().clone()
        dist.broadcast(reference, src=0)
        largest = torch.maximum(largest, (reference.double() - tensor.double()).abs().max())
    dist.all_reduce(largest, op=dist.ReduceOp.MAX)
    return largest.item() == 0.0
