"""MPI for the analyses: which rank am I, sum a tensor over ranks, agree on a decision.

Under `mpiexec -n N` every rank holds a shard of the work; `World.sum` all-reduces a tensor so each rank
ends with the same total. Outside mpiexec, or without mpi4py, the world is one process and every call
is the identity — no MPI library is even imported. Launch detection and the error agreement between
ranks are landscape.mpi's.
"""
import numpy as np
import torch


class World:
    """rank, size and the three collectives the analyses need; a single process when comm is None."""

    def __init__(self, comm=None):
        self.comm = comm
        self.rank = comm.Get_rank() if comm is not None else 0
        self.size = comm.Get_size() if comm is not None else 1

    @property
    def is_root(self) -> bool:
        return self.rank == 0

    def sum(self, t: torch.Tensor) -> torch.Tensor:
        """t ← Σ_ranks t in place (through host memory for a GPU tensor); returns t."""
        if self.size == 1:
            return t
        from mpi4py import MPI
        host = t.detach().cpu().contiguous()
        buf = host.numpy()
        self.comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)
        if host.data_ptr() != t.data_ptr():
            t.copy_(host)
        return t

    def sum_scalar(self, x: float) -> float:
        return x if self.size == 1 else self.comm.allreduce(x)

    def agree(self, obj):
        """Rank 0's value of `obj` on every rank: keeps ranks in lock-step on data-dependent decisions
        (stop or go on), so a last-bit difference can never leave one rank waiting in a collective."""
        return obj if self.size == 1 else self.comm.bcast(obj, root=0)

    def gather(self, obj) -> list | None:
        """[obj of rank 0, …, obj of rank N-1] on rank 0, None elsewhere."""
        return [obj] if self.size == 1 else self.comm.gather(obj, root=0)

    def barrier(self) -> None:
        if self.size > 1:
            self.comm.Barrier()


def shard(batches, rank: int, size: int) -> list:
    """This rank's part of every (x, y) batch: rows [n·rank/size, n·(rank+1)/size) of each, so every rank
    gets an equal share whatever the batch sizes (empty parts are dropped)."""
    out = []
    for x, y in batches:
        lo, hi = len(y) * rank // size, len(y) * (rank + 1) // size
        if hi > lo:
            out.append((x[lo:hi], y[lo:hi]))
    return out


_WORLD = None


def world() -> World:
    """The MPI world when mpiexec started several ranks (landscape.mpi.world decides), else one process."""
    global _WORLD
    if _WORLD is None:
        from landscape import mpi
        _WORLD = World(mpi.world())
    return _WORLD
