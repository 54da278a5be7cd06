"""The surface file (DESIGN §3): HDF5 the reference loss-landscape scripts read.

Datasets: `xcoordinates` (nx,), `ycoordinates` (ny,) for 2-D; every metric of the probe (train_loss,
train_acc, test_loss, test_acc, test_hter, test_auc, loss_<D>, acc_<D>) and a `done` mask (uint8), each
of shape (nx,) or (nx, ny); `dir_file` (the direction file's path); PCA surfaces add `proj_xcoord`,
`proj_ycoord`, `proj_epochs`, `explained_variance_ratio_`, `explained_variance_`, `singular_values_`.

Value order is the reference's: flat index k = iy·nx + ix holds f(x[ix], y[iy]), so
`a.reshape(ny, nx)[iy, ix]` is the point (x[ix], y[iy]) — rows follow y, as matplotlib's contour and the
reference's plot_2D.py/h52vtp.py read it. Points not computed yet are NaN with done = 0.

Kill safety: the whole file (a few kB to MB) is rewritten to a temporary file, fsynced and renamed over
the old one, so after a SIGKILL at any moment the file is the last complete write. Between those
rewrites (which take at most ~2% of the job) every point is also appended, as one JSON line, to a side
journal `.SURF.h5.journal` whose first line names the surface; reopening replays it (a torn last line
is the point that was in flight), so a kill loses at most that point. An flock on a side lock file keeps
two jobs from writing one surface.
"""
import errno
import fcntl
import json
import os
import time
from pathlib import Path

import numpy as np

from training.checkpoint import atomic_write
from training.errors import FaslandError

FORMAT = "fasland-surface-1"
LAYOUT = "reference"   # flat k = iy*nx + ix
IDENTITY = {"checkpoint_sha256": "checkpoint", "directions": "set of directions", "data": "data spec",
            "data_sha256": "data content", "evaluation": "evaluation (precision, BatchNorm statistics, curvature)"}


def flat_index(ix: int, iy: int, nx: int) -> int:
    return iy * nx + ix


def grid_view(values: np.ndarray, nx: int, ny: int) -> np.ndarray:
    """A 2-D surface array as [iy, ix] (rows follow y): the array contour(x, y, Z) expects."""
    return np.asarray(values).reshape(ny, nx)


class SurfaceStore:
    """One surface file held in memory; `record` fills a point, `save` writes the file atomically."""

    def __init__(self, path, xcoords, ycoords=None, provenance: dict | None = None, extra: dict | None = None):
        self.path = None if path is None else Path(path)
        self.x = np.asarray(xcoords, dtype=np.float64)
        self.y = None if ycoords is None else np.asarray(ycoords, dtype=np.float64)
        self.shape = (len(self.x),) if self.y is None else (len(self.x), len(self.y))
        self.provenance = dict(provenance or {})
        self.extra = dict(extra or {})
        self.arrays: dict[str, np.ndarray] = {}
        self.done = np.zeros(self.shape, dtype=bool)
        self.last_save, self.save_cost = time.monotonic(), 0.0
        self.lock = None
        self.journal = None  # open append-only text file while a writer holds the store
        self.dirty = False   # points recorded since the last save

    # --- opening -----------------------------------------------------------------------------------
    @classmethod
    def open(cls, path, xcoords, ycoords=None, provenance: dict | None = None, extra: dict | None = None) -> "SurfaceStore":
        """Resume `path` if it holds this very surface (same grid, checkpoint, directions, data),
        refuse it if it holds another, create it otherwise. Takes the writer's lock."""
        store = cls(path, xcoords, ycoords, provenance, extra)
        store.acquire()
        try:
            existed = store.path.exists()
            if existed:
                store.load_existing()
            if store.replay_journal() or not existed:
                store.save()
            else:
                store.start_journal()
        except BaseException:
            store.release()
            raise
        return store

    def acquire(self) -> None:
        if self.path.exists() and not self.path.is_file():
            raise FaslandError(f"--out '{self.path}' is a folder; pass a file path such as {self.path}/surface.h5")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path.with_name(f".{self.path.name}.lock"), os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise FaslandError(f"cannot write next to '{self.path}' ({e.strerror}); choose a writable --out folder") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                os.close(fd)
                raise FaslandError(f"another fasland job is writing '{self.path}'; wait for it to finish or choose another --out") from None
            # a file system without flock (some NFS/Lustre mounts): go on unlocked, as the reference always does
        self.lock = fd
        for stale in self.path.parent.glob(f".{self.path.name}.*.tmp"):
            stale.unlink(missing_ok=True)   # left by a killed writer; we hold the lock, so no one else writes

    def release(self) -> None:
        if self.journal is not None:
            self.journal.close()
            self.journal = None
        if self.lock is not None:
            os.close(self.lock)
            self.lock = None

    def load_existing(self) -> None:
        existing = read_store(self.path)
        check_same_surface(existing, self)
        self.arrays, self.done = existing.arrays, existing.done
        self.provenance = {**self.provenance, **{k: v for k, v in existing.provenance.items() if k not in ("versions",)}}
        self.extra = {**existing.extra, **self.extra}

    # --- filling -----------------------------------------------------------------------------------
    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    def missing(self) -> list[int]:
        """Flat indices (reference order) of the points not computed yet."""
        return np.flatnonzero(~self.done.reshape(-1)).tolist()

    def record(self, k: int, metrics: dict) -> None:
        """Point k's metrics; non-finite values are kept as they are (NaN/inf)."""
        if self.journal is not None:
            self.journal.write(json.dumps([int(k), {n: float(v) for n, v in metrics.items()}]) + "\n")
            self.journal.flush()
        self.fill(k, metrics)

    def fill(self, k: int, metrics: dict) -> None:
        for name, value in metrics.items():
            if name not in self.arrays:
                self.arrays[name] = np.full(self.shape, np.nan)
            self.arrays[name].reshape(-1)[k] = float(value)
        self.done.reshape(-1)[k] = True
        self.dirty = True

    def save_if_due(self, overhead: float = 0.02) -> bool:
        """Save when the time since the last save is at least 1/overhead times a save's cost: at most
        `overhead` of the job is spent writing, and a slow point is never lost to a kill."""
        if self.dirty and time.monotonic() - self.last_save >= self.save_cost / overhead:
            self.save()
            return True
        return False

    # --- writing -----------------------------------------------------------------------------------
    def save(self) -> None:
        import h5py

        if self.path is None:
            return
        start = time.monotonic()

        def write(tmp):
            with h5py.File(tmp, "w", locking=False) as f:
                f["xcoordinates"] = self.x
                if self.y is not None:
                    f["ycoordinates"] = self.y
                for name, a in self.arrays.items():
                    f[name] = a
                f["done"] = self.done.astype(np.uint8)
                f["dir_file"] = str(self.provenance.get("dir_file", ""))
                for name, v in self.extra.items():
                    f[name] = v
                f.attrs["format"] = FORMAT
                f.attrs["layout"] = LAYOUT
                for k, v in self.provenance.items():
                    f.attrs[k] = attr_value(v)
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())

        atomic_write(self.path, write)
        self.start_journal()
        self.last_save = time.monotonic()
        self.save_cost = self.last_save - start
        self.dirty = False

    def close(self) -> None:
        """Save what is not saved yet (nothing to do for a finished surface), drop the journal and the lock."""
        if self.dirty:
            self.save()
        if self.journal is not None:
            self.journal.close()
            self.journal = None
            self.journal_path().unlink(missing_ok=True)
        self.release()

    # --- journal -----------------------------------------------------------------------------------
    def journal_path(self) -> Path:
        return self.path.with_name(f".{self.path.name}.journal")

    def identity(self) -> str:
        """What a journal line belongs to: the grid and the identity provenance."""
        ident = {"x": self.x.tolist(), "y": None if self.y is None else self.y.tolist(),
                 **{k: attr_value(self.provenance[k]) for k in IDENTITY if k in self.provenance}}
        return json.dumps(ident, sort_keys=True)

    def start_journal(self) -> None:
        """Empty the journal (its points are in the file now), headed by this surface's identity."""
        if self.journal is not None:
            self.journal.close()
        self.journal = open(self.journal_path(), "w")
        self.journal.write(json.dumps({"journal": FORMAT, "surface": self.identity()}) + "\n")
        self.journal.flush()

    def replay_journal(self) -> int:
        """Fill the points a killed writer journaled after its last save; a journal of another surface
        or a torn last line is ignored. Returns the number of points replayed."""
        path = self.journal_path()
        if not path.is_file():
            return 0
        with open(path) as f:
            lines = f.read().split("\n")
        try:
            header = json.loads(lines[0])
        except (json.JSONDecodeError, IndexError):
            return 0
        if header.get("surface") != self.identity():
            return 0
        n = 0
        for line in lines[1:]:
            try:
                k, metrics = json.loads(line)
            except (json.JSONDecodeError, ValueError, TypeError):
                break                      # the torn last line: the point in flight
            if 0 <= k < self.size:
                self.fill(k, metrics)
                n += 1
        return n


def attr_value(v):
    """HDF5 attributes hold strings and numbers; dicts and lists go in as JSON."""
    if isinstance(v, (dict, list, tuple)):
        return json.dumps(v, sort_keys=True)
    if v is None:
        return ""
    return v


def read_store(path) -> SurfaceStore:
    """A fasland surface file back into a SurfaceStore (no lock taken)."""
    import h5py

    path = Path(path)
    try:
        f = h5py.File(path, "r", locking=False)
    except OSError:
        raise FaslandError(f"'{path}' exists but is not a readable HDF5 file; pass a new --out path or delete it") from None
    with f:
        if f.attrs.get("format") != FORMAT or "xcoordinates" not in f or "done" not in f:
            raise FaslandError(f"'{path}' is not a fasland surface file; pass a new --out path (fasland never overwrites other files)")
        x = f["xcoordinates"][()]
        y = f["ycoordinates"][()] if "ycoordinates" in f else None
        provenance = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items() if k not in ("format", "layout")}
        store = SurfaceStore(path, x, y, provenance)
        skip = {"xcoordinates", "ycoordinates", "done", "dir_file"}
        for name, ds in f.items():
            if name in skip or not isinstance(ds, h5py.Dataset):
                continue
            if ds.shape == store.shape and not name.startswith("proj_"):
                store.arrays[name] = ds[()].astype(np.float64)
            else:
                store.extra[name] = ds[()]
        store.done = f["done"][()].astype(bool).reshape(store.shape)
    return store


def check_same_surface(old: SurfaceStore, new: SurfaceStore) -> None:
    """Refuse to mix: the grid, checkpoint, directions and data must all be the ones of the file."""
    path = new.path
    if old.shape != new.shape or not np.array_equal(old.x, new.x) or not _same(old.y, new.y):
        raise FaslandError(f"'{path}' holds a surface on another grid ({describe_grid(old)} vs {describe_grid(new)}); "
                           "pass a new --out or delete the file to start over")
    for key, what in IDENTITY.items():
        a, b = old.provenance.get(key), attr_value(new.provenance.get(key))
        if key in new.provenance and a != b:
            raise FaslandError(f"'{path}' was made with another {what} ({difference(a, b)}); pass a new --out or delete the file to start over")


def _same(a, b) -> bool:
    return (a is None and b is None) or (a is not None and b is not None and np.array_equal(a, b))


def describe_grid(s: SurfaceStore) -> str:
    axes = [s.x] + ([s.y] if s.y is not None else [])
    return " x ".join(f"{a[0]:g}:{a[-1]:g}:{len(a)}" for a in axes)


def difference(old, new) -> str:
    """Every differing key of two JSON attributes with its old and new value ('a.b 1 → 2; …'), else 'OLD → NEW'."""
    from training.presets import config_differences

    try:
        a, b = json.loads(old), json.loads(new)
    except (TypeError, ValueError):
        a = b = None
    if isinstance(a, dict) and isinstance(b, dict):
        return "; ".join(config_differences(a, b))
    return f"{old!r} → {new!r}"
