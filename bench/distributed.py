"""Sharding a matrix over processes started by torchrun (gloo on CPU, NCCL on GPUs).

Every rank runs every cell on its contiguous share of the samples; per-sample seeds make the
union identical to a one-process run.  Results are gathered to rank 0, which computes the
metrics and alone writes ``rows.jsonl`` and ``run.json``.  Multi-node works the same way
(``torchrun --nnodes N --node_rank R --rdzv_endpoint HOST:PORT -m samplerbench run SPEC``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls, device: torch.device) -> "Dist":
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        import torch.distributed as td

        local = int(os.environ.get("LOCAL_RANK", "0"))
        if not td.is_initialized():
            backend = "nccl" if device.type == "cuda" else "gloo"
            if device.type == "cuda":
                torch.cuda.set_device(local)
            td.init_process_group(backend=backend)
        return cls(rank=td.get_rank(), world=td.get_world_size(), local_rank=local)

    def shard(self, n: int) -> slice:
        """This rank's contiguous share of n samples (sizes differ by at most one)."""
        lo = self.rank * n // self.world
        hi = (self.rank + 1) * n // self.world
        return slice(lo, hi)

    def all_gather(self, obj) -> list:
        if self.world == 1:
            return [obj]
        import torch.distributed as td

        out = [None] * self.world
        td.all_gather_object(out, obj)
        return out

    def broadcast(self, obj):
        if self.world == 1:
            return obj
        import torch.distributed as td

        box = [obj]
        td.broadcast_object_list(box, src=0)
        return box[0]

    def close(self) -> None:
        if self.world > 1:
            import torch.distributed as td

            if td.is_initialized():
                td.destroy_process_group()
