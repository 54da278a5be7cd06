"""Surface points spread over MPI ranks with dynamic load balancing.

Rank 0 runs a small dispatcher thread that answers "give me a point" requests (each carrying the
worker's last result) from a shared queue of point indices, while rank 0's main thread computes points
from the same queue. Only rank 0 records and writes. No collective over the grid per point (the
reference reduces the whole grid after every point). Started without an MPI launcher, or with one rank,
everything runs in this process.

Across nodes: `mpiexec -f hosts -n 8 fasland surface …` with an mpich host file (one `host:slots` a
line; the output folder must be on a file system every node sees, and each node needs the data).
Under Slurm, run `mpiexec -n $SLURM_NTASKS fasland surface …` inside the sbatch/salloc allocation
(mpich's launcher starts the ranks through Slurm), or `srun --mpi=pmi2 fasland surface …` where the
MPI library was built with Slurm's PMI. Each rank takes GPU (local rank mod GPUs on its node) and, on
CPU, cores / (ranks on its node) threads.
"""
import os
import queue
import re
import threading
import time

from training.errors import FaslandError

LAUNCHER_VARS = ("PMI_RANK", "PMI_SIZE", "PMI_FD", "PMIX_RANK", "OMPI_COMM_WORLD_SIZE")
TAG = 17          # point requests and results
SETUP_TAG = 18    # set-up results and verdicts
POLL_SECONDS = 0.002   # the dispatcher thread sleeps this long between polls: ~0 CPU, ms latency


def world():
    """MPI.COMM_WORLD when an MPI launcher started several ranks, else None (a plain single process).
    FASLAND_MPI=0 forces a plain run."""
    if os.environ.get("FASLAND_MPI") == "0" or not any(v in os.environ for v in LAUNCHER_VARS):
        return None
    try:
        from mpi4py import MPI
    except ImportError:
        if int(os.environ.get("PMI_SIZE", os.environ.get("OMPI_COMM_WORLD_SIZE", 1))) > 1:
            raise FaslandError("an MPI launcher started several ranks but mpi4py is not installed; pip install mpi4py, or run a single process") from None
        return None
    comm = MPI.COMM_WORLD
    return comm if comm.Get_size() > 1 else None


def rank(comm) -> int:
    return 0 if comm is None else comm.Get_rank()


def local_ranks() -> int:
    """Ranks sharing this node (for splitting its cores between them), from the launcher's variables."""
    for var in ("MPI_LOCALNRANKS", "OMPI_COMM_WORLD_LOCAL_SIZE", "SLURM_NTASKS_PER_NODE"):
        digits = re.match(r"\d+", os.environ.get(var, ""))   # Slurm may write e.g. "2(x3)"
        if digits and int(digits.group()) > 0:
            return int(digits.group())
    return 1


def quiet_recv(comm, source: int, tag: int):
    """comm.recv without MPI's busy wait (a blocking receive spins a core at 100%, which on a shared or
    small machine slows the ranks that compute): poll for the message, sleeping in between."""
    while not comm.Iprobe(source=source, tag=tag):
        time.sleep(POLL_SECONDS)
    return comm.recv(source=source, tag=tag)


def to_all(comm, message, tag: int) -> None:
    """Rank 0 sends `message` to every other rank."""
    for r in range(1, comm.Get_size()):
        comm.send(message, dest=r, tag=tag)


def on_root(comm, fn):
    """fn() on rank 0 only (the others wait quietly); its result reaches every rank. If it fails,
    rank 0 raises the error and the other ranks exit quietly with status 2 (one message, by rank 0)."""
    if comm is None:
        return fn()
    if comm.Get_rank() == 0:
        try:
            result = fn()
        except BaseException:
            to_all(comm, ("error", None), SETUP_TAG)
            raise
        to_all(comm, ("ok", result), SETUP_TAG)
        return result
    status, result = quiet_recv(comm, 0, SETUP_TAG)
    if status == "error":
        raise SystemExit(2)
    return result


def on_every_rank(comm, fn):
    """fn() on every rank. If it fails on any rank, every rank learns it (no rank is left waiting for
    a dead one): rank 0 raises that rank's error, the others exit quietly with status 2."""
    if comm is None:
        return fn()
    result, error, original = None, None, None
    try:
        result = fn()
    except FaslandError as e:
        error, original = str(e), e
    except Exception as e:
        error, original = f"{type(e).__name__}: {e}", e
    if comm.Get_rank() != 0:
        comm.send(error, dest=0, tag=SETUP_TAG)
        if quiet_recv(comm, 0, SETUP_TAG):
            raise SystemExit(2)
        return result
    failed = [(0, error)] if error is not None else []
    for r in range(1, comm.Get_size()):
        e = quiet_recv(comm, r, SETUP_TAG)
        if e is not None:
            failed.append((r, e))
    to_all(comm, bool(failed), SETUP_TAG)
    if not failed:
        return result
    r, message = failed[0]
    if r == 0 and not isinstance(original, FaslandError):
        raise original
    raise FaslandError(message if r == 0 else f"MPI rank {r}: {message}")


def map_points(comm, todo, evaluate, record, root_computes: bool = True) -> None:
    """record(k, evaluate(k)) for every k in `todo`; under MPI evaluate runs on any rank and record on
    rank 0 only. A rank whose evaluate raises fails the job with a message naming it."""
    if comm is None:
        for k in todo:
            record(k, evaluate(k))
    elif comm.Get_rank() == 0:
        Dispatcher(comm, todo).run(evaluate, record, root_computes)
    else:
        work(comm, evaluate)


class Dispatcher:
    """Rank 0: hands out point indices on request and collects the results."""

    def __init__(self, comm, todo):
        self.comm = comm
        self.pending = iter(list(todo))
        self.lock = threading.Lock()
        self.results = queue.Queue()
        self.failure = None
        self.stopping = False

    def next_point(self):
        with self.lock:
            return None if self.stopping else next(self.pending, None)

    def serve(self) -> None:
        """Thread: until every worker was told to stop, answer each message with the next index."""
        from mpi4py import MPI

        workers, status = set(range(1, self.comm.Get_size())), MPI.Status()
        while workers:
            if not self.comm.Iprobe(source=MPI.ANY_SOURCE, tag=TAG, status=status):
                time.sleep(POLL_SECONDS)
                continue
            src = status.Get_source()
            msg = self.comm.recv(source=src, tag=TAG)
            if msg[0] == "failed":
                self.failure = self.failure or (src, msg[1], msg[2])
                self.stopping = True
                workers.discard(src)
                continue
            if msg[0] == "result":
                self.results.put((msg[1], msg[2]))
            k = self.next_point()
            self.comm.send(k, dest=src, tag=TAG)
            if k is None:
                workers.discard(src)

    def drain(self, record) -> None:
        while True:
            try:
                k, metrics = self.results.get_nowait()
            except queue.Empty:
                return
            record(k, metrics)

    def run(self, evaluate, record, root_computes: bool) -> None:
        thread = threading.Thread(target=self.serve, name="fasland-dispatcher", daemon=True)
        thread.start()
        try:
            while root_computes and (k := self.next_point()) is not None:
                metrics = evaluate(k)
                record(k, metrics)
                self.drain(record)
        except BaseException:
            self.stopping = True
            self.finish(thread, record)
            raise
        self.finish(thread, record)
        if self.failure:
            r, k, message = self.failure
            raise FaslandError(f"MPI rank {r} failed at grid point {k} ({message}); the finished points are saved, rerun the same command to resume")

    def finish(self, thread, record) -> None:
        """Wait for the workers' last points, recording results as they come."""
        while thread.is_alive():
            thread.join(0.05)
            self.drain(record)
        self.drain(record)


def work(comm, evaluate) -> None:
    """Ranks > 0: ask for a point, compute it, send it back with the next request, until told to stop."""
    comm.send(("ready",), dest=0, tag=TAG)
    while (k := quiet_recv(comm, 0, TAG)) is not None:
        try:
            metrics = evaluate(k)
        except Exception as e:
            comm.send(("failed", k, f"{type(e).__name__}: {e}"), dest=0, tag=TAG)
            raise SystemExit(2)   # rank 0 prints the message; mpiexec then exits 2 like a plain run
        comm.send(("result", k, metrics), dest=0, tag=TAG)
