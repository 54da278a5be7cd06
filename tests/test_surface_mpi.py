"""Surface jobs as real processes: a failing or killed MPI rank fails the job and the rerun on two ranks
completes it with the arrays of one rank (tests/test_surface.py also runs `mpiexec -n 2 fasland
surface`); SIGKILL at any moment leaves a readable file and the rerun equals an uninterrupted run.
Run as a script, this file is the job: `python test_surface_mpi.py OUT [options]`."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from reliability_fixtures import done_count

HERE = Path(__file__).resolve().parent
MPIEXEC = Path(sys.executable).with_name("mpiexec")
XS, YS = np.linspace(-1, 1, 6), np.linspace(-1, 1, 5)


def tiny_problem():
    """A small conv net, a plane of seeded random directions and a torch-only probe (loss and accuracy
    per domain) over random tensors: imports stay light, so each process starts fast."""
    import torch
    from torch import nn

    from landscape.directions import Directions, random_direction

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4),
                        nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 1), nn.Flatten(0)).eval()
    g = torch.Generator().manual_seed(1)
    data = {d: (torch.randn(12, 3, 8, 8, generator=g), torch.tensor([0.0, 1.0] * 6)) for d in "ABT"}

    @torch.inference_mode()
    def probe(model):
        out = {}
        for d, (x, y) in data.items():
            z = model(x)
            out[f"loss_{d}"] = nn.functional.binary_cross_entropy_with_logits(z, y).item()
            out[f"acc_{d}"] = ((z > 0).float() == y).float().mean().item()
        out["train_loss"] = (out["loss_A"] + out["loss_B"]) / 2
        return out

    g = torch.Generator().manual_seed(2)
    dirs = Directions(random_direction(net, generator=g), random_direction(net, generator=g), "weights", {"seed": 2})
    return net, probe, dirs


def job(out, slow=0.0, fail_rank=None, comm="world", setup_fail_rank=None):
    """The tiny surface, with an optional delay per point and a rank that fails at its second point
    (or during set-up, as when a node lacks the data)."""
    import torch

    from landscape import mpi
    from landscape.surface import compute_surface

    torch.set_num_threads(1)
    comm = mpi.world() if comm == "world" else None
    (net, probe, dirs), rank = tiny_problem(), mpi.rank(comm)

    def setup():
        if setup_fail_rank == rank:
            raise FaslandError("data folder '/nodes/2/data' not found; copy the data to every node")
    from training.errors import FaslandError
    mpi.on_every_rank(comm, setup)
    if out is not None:
        Path(f"{out}.rank{rank}.pid").write_text(str(os.getpid()))
    calls = [0]

    def timed_probe(model):
        calls[0] += 1
        if fail_rank == rank and calls[0] == 2:
            raise RuntimeError("simulated failure")
        time.sleep(slow)
        return {**probe(model), "rank": float(rank)}

    return compute_surface(net, timed_probe, dirs, XS, YS, out_path=out, progress=False,
                           provenance={"checkpoint_sha256": "tiny"}, comm=comm)


def run(out, ranks=None, *options, wait=True):
    cmd = ([str(MPIEXEC), "-n", str(ranks)] if ranks else []) + [sys.executable, str(Path(__file__)), str(out), *options]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE.parent), os.environ.get("PYTHONPATH", "")])}
    if not wait:
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted single-process surface, computed in this process."""
    store = job(None, comm=None)
    return {k: v for k, v in store.arrays.items() if k != "rank"}


def assert_equal_surfaces(path, reference):
    from landscape.store import read_store

    s = read_store(path)
    assert s.done.all()
    for k, v in reference.items():
        np.testing.assert_allclose(s.arrays[k], v, rtol=1e-6, atol=1e-7, err_msg=k)
    return s


def test_a_failing_or_killed_rank_fails_the_job_and_the_rerun_completes(tmp_path, reference):
    out = tmp_path / "s.h5"
    r = run(out, 2, "--setup-fail-rank", "1")     # set-up fails on rank 1 only: no rank hangs, rank 0 says why
    assert r.returncode == 2 and "MPI rank 1: data folder" in r.stderr and r.stderr.count("error:") == 1
    r = run(out, 2, "--fail-rank", "1", "--slow", "0.05")   # an exception on rank 1: rank 0 names it, saves, exits 2
    # (--slow: rank 0 must not race through nearly every point before rank 1 fails, or nothing is left to kill)
    assert r.returncode == 2
    assert "MPI rank 1 failed at grid point" in r.stderr and "rerun the same command to resume" in r.stderr
    assert "Traceback" not in r.stderr
    first = done_count(out)
    assert 0 < first < XS.size * YS.size
    pid = Path(f"{out}.rank1.pid")
    pid.unlink()                                  # the failed run's; this run writes its own after set-up
    p = run(out, 2, "--slow", "0.2", wait=False)  # rank 1 SIGKILLed: the launcher ends the job
    deadline = time.monotonic() + 60
    while (done_count(out) < first + 3 or not pid.exists()) and p.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert p.poll() is None, f"the job ended before rank 1 could be killed: {p.communicate()[1][-2000:]}"
    os.kill(int(pid.read_text()), signal.SIGKILL)
    p.communicate(timeout=60)
    assert p.returncode != 0
    assert first < done_count(out) < XS.size * YS.size
    from landscape.store import read_store
    left = ~read_store(out).done
    r = run(out, 2, "--slow", "0.01")             # the rerun on two ranks completes the same surface
    assert r.returncode == 0, r.stderr[-2000:]
    s = assert_equal_surfaces(out, reference)
    assert left.sum() >= 4 and set(np.unique(s.arrays["rank"][left])) == {0.0, 1.0}   # rank 0 computes too, rank 1 gets work


def test_sigkill_at_any_moment_then_rerun_equals_uninterrupted(tmp_path, reference):
    out = tmp_path / "s.h5"
    rng = np.random.default_rng()
    for kill_after_points in (3, 12):             # early, then in the resumed run
        p = run(out, None, "--slow", "0.15", wait=False)
        deadline = time.monotonic() + 60
        while done_count(out) < kill_after_points and p.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(rng.uniform(0, 0.15))          # anywhere within a point or a save
        p.send_signal(signal.SIGKILL)
        p.wait()
        assert done_count(out) < XS.size * YS.size
        if out.exists():
            from landscape.store import read_store
            read_store(out)                        # never torn
    r = run(out)
    assert r.returncode == 0, r.stderr[-2000:]
    assert_equal_surfaces(out, reference)


if __name__ == "__main__":
    import argparse

    sys.path.insert(0, str(HERE))
    a = argparse.ArgumentParser()
    a.add_argument("out")
    a.add_argument("--slow", type=float, default=0.0)
    a.add_argument("--fail-rank", type=int, default=None)
    a.add_argument("--setup-fail-rank", type=int, default=None)
    args = a.parse_args()
    from training.errors import FaslandError
    try:
        job(args.out, args.slow, args.fail_rank, setup_fail_rank=args.setup_fail_rank)
    except FaslandError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
