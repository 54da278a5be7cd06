"""Helpers of the reliability tests: tiny checkpoints and configs, the CLI run in-process or as a real
process, file hashes, and the "is every output file readable" check used after each SIGKILL."""
import contextlib
import io
import json
import os
import resource
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
FASLAND = [sys.executable, "-m", "fasland"]
MPIEXEC = Path(sys.executable).with_name("mpiexec")

# the tiny training run of the issue: 2 epochs × 3 steps, 4 images per domain, 24 held-out images
TINY_TRAIN = {"train": {"epochs": 2, "steps_per_epoch": 3, "batch_per_domain": 4, "eval_samples": 24}}
CONFIG = {"protocol": "ICM2O", "method": "erm", "data": {"root": "synth", "image_size": 32, "seed": 0},
          "model": {"name": "resnet18", "head": "linear"}, "hparams": {}, "train": {}}
ARCH = {"name": "resnet18", "head": "linear"}


def write_tiny_config(path) -> Path:
    import yaml

    Path(path).write_text(yaml.safe_dump(TINY_TRAIN))
    return Path(path)


def make_checkpoint(path, seed: int = 0, state: dict | None = None, arch: dict | None = None, config: dict | None = None) -> Path:
    """A fasland checkpoint of a fresh seeded ResNet18 (or of the given state_dict / arch / config)."""
    from training.checkpoint import save_checkpoint
    from training.model import build_model

    if state is None:
        torch.manual_seed(seed)
        model = build_model(ARCH)
    else:
        model = _StateOnly(state)
    save_checkpoint(path, model, arch or ARCH, config or CONFIG, 1, {"final": None})
    return Path(path)


class _StateOnly(torch.nn.Module):
    """Carries an arbitrary state_dict into save_checkpoint."""

    def __init__(self, state):
        super().__init__()
        self._state = state

    def state_dict(self, *args, **kwargs):
        return dict(self._state)


@dataclass
class Result:
    code: int
    out: str
    err: str

    def error_lines(self) -> list[str]:
        """The error sentences: lines that say 'error:' (tqdm bars and usage lines are not errors)."""
        return [l for l in self.err.replace("\r", "\n").splitlines() if "error:" in l]


def cli(argv) -> Result:
    """`fasland ARGV` in this process (fasland.cli.main), stdout and stderr captured; argparse's exit
    becomes the exit code."""
    from fasland.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([str(a) for a in argv])
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
    return Result(code, out.getvalue(), err.getvalue())


def env(**extra) -> dict:
    """The child's environment: this checkout first on the path, one thread, no MPI unless launched."""
    e = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
         "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    e.update(extra)
    return e


def start(argv, ranks: int | None = None, cwd=None) -> subprocess.Popen:
    """`fasland ARGV` as a real process (under `mpiexec -n RANKS` when given), in its own session so
    the whole process tree can be killed."""
    cmd = ([str(MPIEXEC), "-n", str(ranks)] if ranks else []) + FASLAND + [str(a) for a in argv]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env(), cwd=cwd,
                            start_new_session=True)


@contextlib.contextmanager
def full_disk(limit: int):
    """Files this process writes cannot grow past `limit` bytes (RLIMIT_FSIZE; Python ignores SIGXFSZ,
    so the write fails with EFBIG like a full disk would, even for root)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    assert signal.getsignal(signal.SIGXFSZ) == signal.SIG_IGN
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


def kill_tree(p: subprocess.Popen) -> None:
    """SIGKILL the process and everything it started (its process group and every descendant)."""
    if p.poll() is None:
        for pid in [p.pid, *children(p.pid)]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(p.pid, signal.SIGKILL)
    with contextlib.suppress(ValueError):
        p.communicate(timeout=60)


def wait_for(condition, p: subprocess.Popen, timeout: float = 120, poll: float = 0.02) -> bool:
    """Poll until condition() holds; False if the process ended first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        if p.poll() is not None:
            return condition()
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout} s waiting for the job's progress")


def children(pid: int) -> list[int]:
    """Every descendant of `pid` (from /proc)."""
    kids = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            kids.setdefault(ppid, []).append(int(d.name))
    out, todo = [], [pid]
    while todo:
        for c in kids.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def mpi_rank_pids(pid: int) -> dict[int, int]:
    """{rank: pid} of the MPI ranks under an mpiexec (their PMI_RANK environment variable)."""
    ranks = {}
    for c in children(pid):
        try:
            environ = Path(f"/proc/{c}/environ").read_bytes().split(b"\0")
            cmdline = Path(f"/proc/{c}/cmdline").read_bytes()
        except OSError:
            continue
        if b"\0fasland\0" not in cmdline:   # python -m fasland …
            continue
        for item in environ:
            if item.startswith(b"PMI_RANK="):
                ranks[int(item[9:])] = c
    return ranks


def is_temporary(p: Path) -> bool:
    """Files being written: `.NAME.PID.tmp` (checkpoints, surfaces, directions) and NAME.tmp."""
    return p.name.endswith(".tmp")


def assert_readable(folder) -> list[str]:
    """Every output file below `folder` opens as what it claims to be: .pt with torch.load(weights_only),
    .h5 with h5py, .json/.yaml parse, .jsonl and .journal every complete line parses. Lock files are empty by design.
    Returns the files checked."""
    import h5py
    import yaml

    checked = []
    for p in sorted(Path(folder).rglob("*")):
        if not p.is_file() or is_temporary(p) or p.name.endswith(".lock"):
            continue
        if p.suffix == ".pt":
            torch.load(p, map_location="cpu", weights_only=True)
        elif p.suffix == ".h5":
            with h5py.File(p, "r") as f:
                list(f.keys())
        elif p.suffix == ".json":
            json.loads(p.read_text())
        elif p.suffix == ".yaml":
            yaml.safe_load(p.read_text())
        elif p.suffix in (".jsonl", ".journal"):
            lines = p.read_text().split("\n")
            for line in lines[:-1]:               # appended line by line: the last one may be in flight
                json.loads(line)
        checked.append(str(p.relative_to(folder)))
    return checked


def train_args(config_path, out, method: str = "erm") -> list:
    """`fasland train` of the tiny config on ICM2O at 32 px, one thread."""
    return ["train", "--protocol", "ICM2O", "--method", method, "--image-size", "32", "--threads", "1",
            "--config", config_path, "--out", out]


def weights(path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def assert_same_weights(a, b) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), f"{a} and {b} differ in {k}"


def stale_temporaries(folder) -> list[str]:
    """`.NAME.PID.tmp` files left below `folder`."""
    return [str(p) for p in Path(folder).rglob(".*.tmp")]


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """(run dir, config path) of one uninterrupted tiny `fasland train` run, made in this process."""
    d = tmp_path_factory.mktemp("tiny_run")
    config = write_tiny_config(d / "tiny.yaml")
    r = cli(train_args(config, d / "run"))
    assert r.code == 0, r.err[-2000:]
    return d / "run", config


def done_count(path) -> int:
    """Points recorded so far: those the surface file holds and those journaled since its last rewrite
    (the file itself is rewritten only now and then, so alone it can jump from a few points to all)."""
    import h5py

    path, done = Path(path), set()
    try:
        with h5py.File(path, "r") as f:
            done.update(np.flatnonzero(f["done"][()]).tolist())
    except (OSError, KeyError):
        pass
    journal = path.with_name(f".{path.name}.journal")
    try:
        lines = journal.read_text().split("\n")[1:-1]    # after the header; the last one may be torn
    except OSError:
        lines = []
    done.update(json.loads(line)[0] for line in lines)
    return len(done)


def datasets(path) -> dict:
    """Every dataset of an HDF5 file by its full name (groups walked), as numpy arrays."""
    import h5py

    out = {}

    def visit(name, obj):
        if isinstance(obj, h5py.Dataset):
            out[name] = obj[()]

    with h5py.File(path, "r") as f:
        f.visititems(visit)
    return out


def write_dataset(root: Path, kinds=("live", "spoof"), skip=None, label_word=True, corrupt=None):
    """A real-layout dataset: one 8×8 frame per video, one video per kind, per domain and split."""
    from PIL import Image

    for dom in ("replay", "oulu", "casia", "msu"):
        for split in ("train", "test"):
            for kind in kinds:
                if skip and (dom, split, kind) == skip:
                    continue
                d = root / dom / split / (kind if label_word else "") / ("v1" if label_word else f"v1_{kind[:2]}")
                d.mkdir(parents=True, exist_ok=True)
                Image.fromarray(np.full((8, 8, 3), 60 if kind == "live" else 180, np.uint8)).save(d / "crop_0.jpg")
    if corrupt:
        (root / corrupt).write_bytes(b"not a jpeg")
