"""Kill at any moment: the real `fasland` CLI is SIGKILLed at seeded random moments, every file left
behind is readable and agrees with an uninterrupted run, and the rerun finishes with exactly the result
of the uninterrupted run (weights torch.equal, surface arrays equal). Under MPI a rank that dies ends
the job (no hang) and the rerun completes."""
import json
import os
import random
import re
import shutil
import signal
import time

import h5py
import numpy as np
import pytest

from reliability_fixtures import (assert_readable, assert_same_weights, cli, datasets, done_count, kill_tree,
                                  mpi_rank_pids, stale_temporaries, start, tiny_run, train_args, wait_for)

SURFACE = ["--x", "-1:1:5", "--y", "-1:1:4", "--max-samples", "8", "--threads", "1"]
POINTS = 5 * 4
__all__ = ["tiny_run"]   # the shared uninterrupted training run (a session fixture)


def surface_arrays(path) -> dict:
    with h5py.File(path, "r") as f:
        return {k: f[k][()] for k in f if isinstance(f[k], h5py.Dataset) and k != "dir_file"}


def assert_agrees_with(path, reference: dict, complete: bool) -> None:
    """Every point the file holds equals the uninterrupted surface; with `complete`, every point is there."""
    got = surface_arrays(path)
    done = got["done"].astype(bool)
    assert done.all() if complete else done.sum() < done.size
    assert got.keys() >= reference.keys() - {"done"} or not done.any()
    for name, ref in reference.items():
        if name in ("done",) or name not in got:
            continue
        a = got[name]
        if name in ("xcoordinates", "ycoordinates"):
            assert np.array_equal(a, ref), name
        else:
            assert np.array_equal(a[done], ref[done], equal_nan=True), f"{name} differs from the uninterrupted run"

    journal = path.with_name(f".{path.name}.journal")     # points recorded since the file's last rewrite
    if journal.exists():
        lines = journal.read_text().split("\n")[1:-1]      # after the header; the last one may be torn
        for k, metrics in map(json.loads, lines):
            for name, value in metrics.items():
                assert np.array_equal(value, reference[name].reshape(-1)[k], equal_nan=True), f"journal {name}[{k}]"


# ----------------------------------------------------------------------------------------------- train

def test_train_killed_twice_then_rerun_equals_uninterrupted(tiny_run, tmp_path):
    reference, config = tiny_run
    run = tmp_path / "run"
    rng = random.Random(8)

    def writing_resume():
        return any(run.glob(".resume.pt.*.tmp"))

    for condition, delay in ((writing_resume, rng.uniform(0.0, 0.05)),   # in the middle of writing resume.pt
                             (None, rng.uniform(0.0, 0.5))):              # in epoch 2 or the final saves
        p, started = start(train_args(config, run)), time.time()
        if condition is None:                     # this process's own epoch 1 is saved
            condition = lambda: (run / "resume.pt").exists() and (run / "resume.pt").stat().st_mtime > started
        wait_for(condition, p, timeout=240)
        time.sleep(delay)
        kill_tree(p)
        checked = assert_readable(run)
        for name in checked:                      # whatever a killed run left equals the uninterrupted run's file
            if name.startswith("checkpoints/") or name == "checkpoint.pt":
                assert_same_weights(run / name, reference / name)
    r = cli(train_args(config, run))
    assert r.code == 0, r.err[-2000:]
    for name in ("checkpoint.pt", "checkpoints/epoch_000.pt", "checkpoints/epoch_001.pt", "checkpoints/epoch_002.pt"):
        assert_same_weights(run / name, reference / name)
    assert json.loads((run / "metrics.json").read_text()) == json.loads((reference / "metrics.json").read_text())
    assert (run / "steps.jsonl").read_text() == (reference / "steps.jsonl").read_text()
    assert stale_temporaries(run) == []


def test_train_killed_between_its_last_saves_finishes_on_rerun(tiny_run, tmp_path):
    """The window after the last resume.pt but before checkpoint.pt / metrics.json: the rerun must finish
    (not redo or crash)."""
    reference, config = tiny_run
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    (run / "checkpoint.pt").unlink()
    (run / "metrics.json").unlink()
    r = cli(train_args(config, run))
    assert r.code == 0 and "Traceback" not in r.err, r.err[-2000:]
    assert_same_weights(run / "checkpoint.pt", reference / "checkpoint.pt")
    assert json.loads((run / "metrics.json").read_text()) == json.loads((reference / "metrics.json").read_text())


def test_train_resumes_over_a_torn_step_log_line(tiny_run, tmp_path, monkeypatch):
    """steps.jsonl is appended through a buffer: a kill can leave half a line, which the rerun must drop."""
    import yaml

    from training.algorithms import ALGORITHMS
    from training.trainer import train

    reference, config_path = tiny_run
    run = tmp_path / "run"
    real, calls = ALGORITHMS["erm"].update, {"n": 0}

    def stopped_in_epoch_two(self, minibatches):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return real(self, minibatches)

    monkeypatch.setattr(ALGORITHMS["erm"], "update", stopped_in_epoch_two)
    with pytest.raises(KeyboardInterrupt):
        train(yaml.safe_load((reference / "config.yaml").read_text()), run, progress=False)
    monkeypatch.undo()
    with (run / "steps.jsonl").open("a") as f:
        f.write('{"epoch": 2, "step": 4, "lo')        # the kill came in the middle of a buffered line
    r = cli(train_args(config_path, run))
    assert r.code == 0 and "Traceback" not in r.err, r.err[-2000:]
    assert_same_weights(run / "checkpoint.pt", reference / "checkpoint.pt")
    assert (run / "steps.jsonl").read_text() == (reference / "steps.jsonl").read_text()


# ----------------------------------------------------------------------------------------------- surface

@pytest.fixture(scope="module")
def surface_reference(tiny_run, tmp_path_factory):
    """The uninterrupted surface of the tiny run's checkpoint, computed in this process."""
    reference, _ = tiny_run
    out = tmp_path_factory.mktemp("surface_ref") / "ref.h5"
    r = cli(["surface", "--checkpoint", reference / "checkpoint.pt", *SURFACE, "--out", out])
    assert r.code == 0, r.err[-2000:]
    return reference / "checkpoint.pt", surface_arrays(out), datasets(out.with_name("ref.dirs.h5"))


def test_surface_killed_on_one_rank_then_a_dead_mpi_rank_then_rerun_equals_uninterrupted(surface_reference, tmp_path):
    """One surface, three runs: one rank SIGKILLed at a random moment of its start-up; `mpiexec -n 2`
    whose rank 1 is SIGKILLed after a random number of points (mpiexec then ends the whole job, the
    writing rank 0 included, instead of hanging); the rerun in this process finishes it."""
    checkpoint, reference, directions = surface_reference
    out = tmp_path / "s.h5"
    argv = ["surface", "--checkpoint", checkpoint, *SURFACE, "--out", out]
    rng = random.Random(4)

    def left_behind_is_sound():
        assert_readable(tmp_path)
        if out.exists():
            assert_agrees_with(out, reference, complete=False)

    p = start(argv)                                      # 1. one rank, killed in its start-up
    wait_for(lambda: (tmp_path / "s.dirs.h5").exists(), p, timeout=240)
    time.sleep(rng.uniform(0.0, 1.0))
    assert p.poll() is None
    kill_tree(p)
    left_behind_is_sound()

    p = start(argv, ranks=2)                             # 2. two ranks, rank 1 dies mid-way
    try:
        k = rng.randint(3, POINTS // 2)
        wait_for(lambda: len(mpi_rank_pids(p.pid)) == 2, p, timeout=240)
        rank1 = mpi_rank_pids(p.pid)[1]
        wait_for(lambda: done_count(out) >= k, p, timeout=240, poll=0.005)
        os.kill(rank1, signal.SIGKILL)                   # it holds a point, so the surface cannot finish
        stdout, stderr = p.communicate(timeout=60)       # no hang
    finally:
        kill_tree(p)
    assert p.returncode != 0
    assert re.search(r"BAD TERMINATION|signal 9|Killed|exited on signal", stdout + stderr), (stdout + stderr)[-2000:]
    left_behind_is_sound()
    assert 0 < done_count(out) < POINTS

    r = cli(argv)                                        # 3. the rerun completes the same surface
    assert r.code == 0, r.err[-2000:]
    assert_agrees_with(out, reference, complete=True)
    assert stale_temporaries(tmp_path) == [] and not (tmp_path / ".s.h5.journal").exists()
    made_by_the_killed_job = datasets(tmp_path / "s.dirs.h5")
    assert made_by_the_killed_job.keys() == directions.keys()
    assert all(np.array_equal(made_by_the_killed_job[k], directions[k]) for k in directions)


# ----------------------------------------------------------------------------------------------- hessian

HESSIAN = ["--top-k", "1", "--max-iter", "2", "--trace", "--trace-samples", "2", "--per-domain", "--max-samples", "2",
           "--threads", "1"]


def hessian_numbers(path) -> dict:
    """What a Hessian result says (timings and versions left out)."""
    r = json.loads(path.read_text())
    return {"eigenvalues": r.get("eigenvalues"), "train_loss": r.get("train_loss"), "trace": r.get("trace"),
            "per_domain": r.get("per_domain"),
            "sections": {k: (v["settings"], v["hvps"]) for k, v in r.get("sections", {}).items()}}


def test_hessian_killed_twice_then_rerun_equals_uninterrupted(tiny_run, tmp_path):
    reference_run, _ = tiny_run
    checkpoint = reference_run / "checkpoint.pt"
    r = cli(["hessian", "--checkpoint", checkpoint, *HESSIAN, "--out", tmp_path / "ref.json"])
    assert r.code == 0, r.err[-2000:]
    reference = hessian_numbers(tmp_path / "ref.json")
    assert len(reference["sections"]) == 6          # eigenvalues, trace, λ_max of I, C, M and O

    out = tmp_path / "run" / "h.json"
    argv = ["hessian", "--checkpoint", checkpoint, *HESSIAN, "--out", out]
    rng = random.Random(5)
    sections = lambda: len(hessian_numbers(out)["sections"]) if out.exists() else 0
    for delay in (rng.uniform(0.0, 1.0), rng.uniform(0.0, 0.5)):
        before, p = sections(), start(argv)
        wait_for(lambda: sections() > before, p, timeout=240)   # this process saved a section of its own
        time.sleep(delay)
        running = p.poll() is None
        kill_tree(p)
        assert_readable(tmp_path / "run")
        partial = hessian_numbers(out)
        for name in partial["sections"]:               # what a killed run kept equals the uninterrupted run's
            assert partial["sections"][name] == reference["sections"][name]
        for key in ("eigenvalues", "train_loss", "trace"):
            assert partial[key] in (None, reference[key]), key
        for d, v in (partial["per_domain"] or {}).items():
            assert v == reference["per_domain"][d]
    assert running and sections() < 6
    r = cli(argv)
    assert r.code == 0, r.err[-2000:]
    assert hessian_numbers(out) == reference
    assert stale_temporaries(tmp_path) == []
