"""Small decisions every rank must take together, on a CPU (gloo) group beside the training one.

Which checkpoint to resume from, whether a checkpoint reached the store on every node, whether
SIGTERM arrived on any rank: a rank that decides alone deadlocks or diverges the others. These
messages are tiny and go over gloo, so asking every step never waits for the GPU's queue.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Control:
    rank: int
    world_size: int
    group: object | None = None  # torch.distributed ProcessGroup (gloo); None for one process

    @classmethod
    def create(cls, rank: int, world_size: int) -> Control:
        if world_size == 1:
            return cls(rank, world_size)
        import torch.distributed as dist

        # Collective: every rank creates the group in the same order.
        return cls(rank, world_size, dist.new_group(backend="gloo"))

    def broadcast(self, obj, src: int = 0):
        """Rank `src`'s object, on every rank."""
        if self.group is None:
            return obj
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=src, group=self.group)
        return box[0]

    def gather(self, obj) -> list:
        """Every rank's object, in rank order, on every rank."""
        if self.group is None:
            return [obj]
        import torch.distributed as dist

        out: list = [None] * self.world_size
        dist.all_gather_object(out, obj, group=self.group)
        return out

    def any(self, flag: bool) -> bool:
        """True on every rank when it is true on any rank."""
        if self.group is None:
            return flag
        import torch
        import torch.distributed as dist

        t = torch.tensor([int(flag)], dtype=torch.int32)
        dist.all_reduce(t, op=dist.ReduceOp.MAX, group=self.group)
        return bool(t.item())

    def barrier(self) -> None:
        if self.group is not None:
            import torch.distributed as dist

            dist.barrier(group=self.group)

    def first_error(self, error: str | None) -> str | None:
        """Every rank's error (None where it succeeded); the first one, named by rank, on all."""
        for rank, err in enumerate(self.gather(error)):
            if err:
                return err if self.world_size == 1 else f"rank {rank}: {err}"
        return None
