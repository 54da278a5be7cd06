"""The surface file (docs/ARCHITECTURE.md, "File formats"): HDF5 the reference loss-landscape scripts read, and its one reader.

Datasets: `xcoordinates` (nx,), `ycoordinates` (ny,) for 2-D; every metric of the probe (train_loss,
train_acc, test_loss, test_acc, test_hter, test_auc, loss_<D>, acc_<D>) and a `done` mask (uint8), each
of shape (nx,) or (nx, ny); `dir_file` (the direction file's path); PCA surfaces add `proj_xcoord`,
`proj_ycoord`, `proj_epochs`, `explained_variance_ratio_`, `explained_variance_`, `singular_values_`.

Index order. In memory (SurfaceStore.arrays, exports' Surface.arrays) a 2-D array has the contract's shape
(nx, ny) and a[ix, iy] = f(x[ix], y[iy]). On disk the values are in the reference's flat order, flat index
k = iy·nx + ix (its plot_surface.py fills `losses.ravel()[k]` along meshgrid(x, y), and plot_2D.py and
h52vtp.py read it back along meshgrid(x, y)); `from_file`/`to_file` convert, and nothing else reshapes.
Points not computed yet are NaN with done = 0. A grid point is addressed by its flat k everywhere
(`missing`, `record`, the journal, the MPI work split).

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
LAYOUT = "reference"   # on disk: flat k = iy*nx + ix
IDENTITY = {"checkpoint_sha256": "checkpoint", "directions": "set of directions", "data": "data spec",
            "data_sha256": "data content", "evaluation": "evaluation (precision, BatchNorm statistics, curvature)"}
# Datasets that describe the grid or the training path rather than a value at each grid point.
NOT_ON_GRID = {"xcoordinates", "ycoordinates", "dir_file", "explained_variance_ratio_", "explained_variance_",
               "singular_values_"}


def from_file(raw, shape: tuple) -> np.ndarray:
    """A stored dataset (flat k = iy·nx + ix) as a[ix(, iy)] of `shape` = (nx,) or (nx, ny)."""
    raw = np.asarray(raw)
    if len(shape) == 1:
        return raw.reshape(shape).copy()
    nx, ny = shape
    return np.ascontiguousarray(raw.reshape(ny, nx).T)


def to_file(a: np.ndarray) -> np.ndarray:
    """a[ix(, iy)] in the stored layout: the same shape, values in flat order k = iy·nx + ix."""
    a = np.asarray(a)
    return a if a.ndim == 1 else np.ascontiguousarray(a.T).reshape(a.shape)


def grid_index(k: int, shape: tuple) -> tuple:
    """The flat index k = iy·nx + ix as the in-memory index (ix,) or (ix, iy)."""
    return (k,) if len(shape) == 1 else (k % shape[0], k // shape[0])


def read_datasets(path):
    """(x, y, grid, other, attrs) of a surface HDF5: `grid` the numeric datasets on the grid (done included),
    as a[ix(, iy)] in float64; `other` every other dataset as stored; `attrs` decoded. h5py's OSError on a
    file that is not HDF5 goes to the caller, which knows what to say."""
    import h5py

    with h5py.File(path, "r", locking=False) as f:
        x = np.asarray(f["xcoordinates"][()], dtype=float).ravel() if "xcoordinates" in f else None
        y = np.asarray(f["ycoordinates"][()], dtype=float).ravel() if "ycoordinates" in f else None
        shape = None if x is None else (len(x),) if y is None else (len(x), len(y))
        grid, other = {}, {}
        for name, ds in f.items():
            if not isinstance(ds, h5py.Dataset):
                continue
            if (ds.shape == shape and name not in NOT_ON_GRID and not name.startswith("proj_")
                    and ds.dtype.kind in "fiub"):
                grid[name] = from_file(np.asarray(ds[()], dtype=float), shape)
            else:
                other[name] = ds[()]
        attrs = {k: attr_read(v) for k, v in f.attrs.items()}
    return x, y, grid, other, attrs


def attr_read(v):
    """An HDF5 attribute as plain Python: text decoded, numpy scalars and arrays as numbers and lists."""
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, np.generic):
        return v.item()
    return v


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
        """Flat indices k (the file's order) of the points not computed yet."""
        return np.flatnonzero(~to_file(self.done).reshape(-1)).tolist()

    def record(self, k: int, metrics: dict) -> None:
        """Point k's metrics; non-finite values are kept as they are (NaN/inf)."""
        if self.journal is not None:
            self.journal.write(json.dumps([int(k), {n: float(v) for n, v in metrics.items()}]) + "\n")
            self.journal.flush()
        self.fill(k, metrics)

    def fill(self, k: int, metrics: dict) -> None:
        at = grid_index(k, self.shape)
        for name, value in metrics.items():
            if name not in self.arrays:
                self.arrays[name] = np.full(self.shape, np.nan)
            self.arrays[name][at] = float(value)
        self.done[at] = True
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
                    f[name] = to_file(a)
                f["done"] = to_file(self.done).astype(np.uint8)
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
    """A fasland surface file back into a SurfaceStore (no lock taken), by `read_datasets`."""
    path = Path(path)
    try:
        x, y, grid, other, attrs = read_datasets(path)
    except OSError:
        raise FaslandError(f"'{path}' exists but is not a readable HDF5 file; pass a new --out path or delete it") from None
    if attrs.get("format") != FORMAT or x is None or "done" not in grid:
        raise FaslandError(f"'{path}' is not a fasland surface file; pass a new --out path (fasland never overwrites other files)")
    store = SurfaceStore(path, x, y, {k: v for k, v in attrs.items() if k not in ("format", "layout")})
    store.done = grid.pop("done").astype(bool)
    store.arrays = grid
    store.extra = {k: v for k, v in other.items() if k not in ("xcoordinates", "ycoordinates", "dir_file")}
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
