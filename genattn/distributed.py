"""Data-parallel training under `torchrun`: PyTorch's process group and DDP, nothing home-made.

`torchrun --standalone --nproc-per-node N -m genattn.cli train ...` sets RANK / WORLD_SIZE /
LOCAL_RANK / MASTER_ADDR; multi-node is the same command with `--nnodes` and
`--rdzv-endpoint` (docs/training.md). Without those variables everything here is a no-op,
so single-process training takes the same code path.
"""
from __future__ import annotations

import datetime
import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)


class DistributedError(RuntimeError):
    """The torchrun environment is inconsistent or the process group cannot start."""


@dataclass
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0
    owns_group: bool = False  # this World started the process group, so it ends it

    @property
    def enabled(self) -> bool:
        return self.size > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls, device: str) -> "World":
        """Join the group torchrun describes (gloo on CPU, NCCL on CUDA); a plain run is world 1."""
        try:
            size = int(os.environ.get("WORLD_SIZE", "1"))
            rank = int(os.environ.get("RANK", "0"))
            local = int(os.environ.get("LOCAL_RANK", str(rank)))
        except ValueError as e:
            raise DistributedError(f"WORLD_SIZE / RANK / LOCAL_RANK must be integers: {e}") from e
        if size <= 1:
            return cls()
        if not 0 <= rank < size:
            raise DistributedError(f"RANK={rank} is outside WORLD_SIZE={size}")
        if dist.is_initialized():
            return cls(dist.get_rank(), dist.get_world_size(), local)
        backend = "nccl" if device.startswith("cuda") else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local)
        try:
            dist.init_process_group(backend, timeout=datetime.timedelta(minutes=30))
        except (RuntimeError, ValueError) as e:
            raise DistributedError(f"cannot start the {backend} process group (rank {rank} of {size}): {e}") from e
        log.info("data parallel: rank %d of %d (%s)", rank, size, backend)
        return cls(rank, size, local, owns_group=True)

    def device(self, device: torch.device) -> torch.device:
        """Each rank's own GPU under NCCL; CPU ranks share the CPU."""
        return torch.device("cuda", self.local_rank) if device.type == "cuda" and self.enabled else device

    def mean(self, values: list[float]) -> list[float]:
        """Element-wise mean over ranks (one small all-reduce)."""
        if not self.enabled:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64,
                         device="cuda" if dist.get_backend() == "nccl" else "cpu")
        dist.all_reduce(t)
        return (t / self.size).tolist()

    def gather(self, obj) -> list:
        """Every rank's `obj`, in rank order, on every rank."""
        if not self.enabled:
            return [obj]
        out = [None] * self.size
        dist.all_gather_object(out, obj)
        return out

    def agree(self, flag: bool) -> bool:
        """Rank 0's decision, on every rank (wall-time budgets differ per process)."""
        if not self.enabled:
            return flag
        box = [flag]
        dist.broadcast_object_list(box, src=0)
        return bool(box[0])

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def close(self) -> None:
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()
