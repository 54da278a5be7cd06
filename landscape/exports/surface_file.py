"""A surface HDF5 (docs/ARCHITECTURE.md, "File formats") read into plain numpy arrays for the exporters.

The file is read by landscape.store's one reader (`read_datasets`): a 2-D array is indexed [ix, iy]
(shape (nx, ny), a[ix, iy] = f(x[ix], y[iy])) here as in SurfaceStore. Surface.arrays hold the file's
values, NaN where not done; Surface.height also turns non-finite values (a diverged point) into NaN, so
every view masks them the same way: never drawn, never inside a colour range. Files of the reference's
plot_surface.py (no `done` mask) are read too: its not-yet-computed points hold the fill value -1.
"""
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from landscape.store import read_datasets
from training.errors import FaslandError

# Names of the projected training path: the reference's (and landscape/store.py's), then short ones.
TRAJECTORY_KEYS = [("proj_xcoord", "proj_ycoord"), ("proj_x", "proj_y")]
FIRST = ["train_loss", "train_acc", "test_loss", "test_acc", "test_hter", "test_auc"]


@dataclass
class Trajectory:
    """The training path projected onto the surface's plane: one (x, y) per checkpoint."""
    x: np.ndarray
    y: np.ndarray | None
    epochs: np.ndarray
    explained_variance_ratio: np.ndarray | None = None


@dataclass
class Surface:
    path: str
    x: np.ndarray
    y: np.ndarray | None
    arrays: dict                      # name -> float64 [ix(, iy)] as stored, NaN where not done
    done: np.ndarray
    attrs: dict = field(default_factory=dict)
    trajectory: Trajectory | None = None

    @property
    def ndim(self) -> int:
        return 1 if self.y is None else 2

    @property
    def shape(self) -> tuple:
        return self.done.shape

    @property
    def label(self) -> str:
        """A short name for legends and titles: the method in the provenance, else the run folder of the
        checkpoint (runs/demo/erm/checkpoint.pt -> erm), else the file stem."""
        for key in ("method", "label", "name"):
            if key in self.attrs and str(self.attrs[key]).strip():
                return str(self.attrs[key])
        ckpt = Path(str(self.attrs.get("checkpoint", "")))
        if ckpt.name == "checkpoint.pt" and ckpt.parent.name not in ("", "."):
            return ckpt.parent.name
        if ckpt.parent.name == "checkpoints" and ckpt.parent.parent.name not in ("", "."):
            return f"{ckpt.parent.parent.name} {ckpt.stem}"
        return Path(self.path).stem

    def names(self) -> list[str]:
        return list(self.arrays)

    def check_name(self, name: str) -> None:
        if name not in self.arrays:
            raise FaslandError(f"surface '{self.path}' has no array '{name}'; pass --surf-name with one of: {', '.join(self.arrays)}")

    def height(self, name: str, log: bool = False, zmax: float | None = None) -> np.ndarray:
        """h = min(f, zmax), then log(h + 0.1) with --log (the reference's convention); NaN where f is not
        done or not finite (a diverged point is masked, not clipped to zmax)."""
        self.check_name(name)
        h = self.arrays[name].copy()
        h[~np.isfinite(h)] = np.nan
        if zmax is not None:
            h = np.minimum(h, zmax)
        if log:
            with np.errstate(invalid="ignore", divide="ignore"):
                h = np.log(h + 0.1)
            h[~np.isfinite(h)] = np.nan
        return h


def _order(names) -> list[str]:
    """Global metrics first, then per-domain loss/acc pairs, then anything else, each alphabetical."""
    names = list(names)
    domains = sorted({n[5:] for n in names if n.startswith("loss_")} | {n[4:] for n in names if n.startswith("acc_")})
    per_domain = [f"{k}_{d}" for d in domains for k in ("loss", "acc") if f"{k}_{d}" in names]
    known = [n for n in FIRST if n in names] + per_domain
    return known + sorted(n for n in names if n not in known)


def read_surface(path) -> Surface:
    """Read SURF.h5; every way it can be wrong is one FaslandError naming the file and the fix."""
    path = str(path)
    if not os.path.exists(path):
        raise FaslandError(f"surface file '{path}' not found; pass a SURF.h5 written by 'fasland surface'")
    try:
        x, y, grid, other, attrs = read_datasets(path)
    except OSError:
        raise FaslandError(f"'{path}' is not an HDF5 file; pass a SURF.h5 written by 'fasland surface'") from None
    if x is None or ("train_loss" not in grid and "train_loss" not in other):
        raise FaslandError(f"'{path}' is not a loss-surface file (no xcoordinates/train_loss dataset); "
                           "pass a SURF.h5 written by 'fasland surface'")
    shape = (len(x),) if y is None else (len(x), len(y))
    if "train_loss" not in grid:
        raise FaslandError(f"'{path}': train_loss has shape {np.shape(other['train_loss'])} but the coordinates give {shape}; "
                           "the file is damaged, recompute it with 'fasland surface'")
    done = grid.pop("done").astype(bool) if "done" in grid else grid["train_loss"] != -1
    for a in grid.values():
        a[~done] = np.nan
    arrays = {n: grid[n] for n in _order(grid)}
    return Surface(path, x, y, arrays, done, attrs, _read_trajectory(other, attrs))


def _read_trajectory(datasets, attrs) -> Trajectory | None:
    """The projected path (proj_xcoord, proj_ycoord, proj_epochs, explained_variance_ratio_), if stored."""
    kx, ky = next(((kx, ky) for kx, ky in TRAJECTORY_KEYS if kx in datasets), (None, None))
    if kx is None:
        return None
    tx = np.asarray(datasets[kx], dtype=float).ravel()
    ty = np.asarray(datasets[ky], dtype=float).ravel() if ky in datasets else None
    epochs = np.asarray(datasets["proj_epochs"]).ravel() if "proj_epochs" in datasets else np.arange(len(tx))
    if epochs.shape != tx.shape:
        epochs = np.arange(len(tx))
    ratio = datasets.get("explained_variance_ratio_", attrs.get("explained_variance_ratio"))
    ratio = None if ratio is None else np.atleast_1d(np.asarray(ratio, dtype=float))
    keep = np.isfinite(tx) & (np.isfinite(ty) if ty is not None else True)
    return Trajectory(tx[keep], None if ty is None else ty[keep], epochs[keep], ratio)


def read_surfaces(paths) -> list[Surface]:
    """Several surfaces for one side-by-side view: all 1-D or all 2-D."""
    surfaces = [read_surface(p) for p in paths]
    if len({s.ndim for s in surfaces}) > 1:
        raise FaslandError("the surfaces mix 1-D and 2-D grids (" + ", ".join(f"{s.path}: {s.ndim}-D" for s in surfaces)
                           + "); export them in separate commands")
    return surfaces


def common_names(surfaces) -> list[str]:
    """Arrays every surface has, in the first surface's order."""
    return [n for n in surfaces[0].arrays if all(n in s.arrays for s in surfaces[1:])]


def finite_range(arrays) -> tuple[float, float] | None:
    """(min, max) over the finite values of several arrays; None if there is none."""
    vals = [a[np.isfinite(a)] for a in arrays]
    vals = [v for v in vals if v.size]
    if not vals:
        return None
    return float(min(v.min() for v in vals)), float(max(v.max() for v in vals))


def nice_levels(lo: float, hi: float, n: int = 12) -> np.ndarray:
    """About n contour levels at a round step (1, 2, 2.5 or 5 × 10^k) covering [lo, hi]; the same call on the
    joint range of several surfaces gives them the very same levels."""
    if not (np.isfinite(lo) and np.isfinite(hi)) or hi <= lo:
        return np.array([lo])
    raw = (hi - lo) / n
    base = 10.0 ** np.floor(np.log10(raw))
    step = base * min((m for m in (1, 2, 2.5, 5, 10) if m * base >= raw))
    start = np.floor(lo / step) * step
    return np.round(start + step * np.arange(int(np.ceil((hi - start) / step - 1e-9)) + 1), 12)


def height_along(surface: Surface, h: np.ndarray, px: np.ndarray, py: np.ndarray | None) -> np.ndarray:
    """The height under each path point: (bi)linear interpolation of h, invalid points read as the top of the range."""
    from scipy.interpolate import RegularGridInterpolator

    filled = np.where(np.isfinite(h), h, np.nanmax(h))
    if min(filled.shape) < 2:   # a single row or column: nothing to interpolate across
        return np.full(len(px), float(np.nanmax(h)))
    if surface.ndim == 1:
        return np.interp(px, surface.x, filled)
    py = np.zeros_like(px) if py is None else py
    f = RegularGridInterpolator((surface.x, surface.y), filled, bounds_error=False, fill_value=None)
    pts = np.column_stack([np.clip(px, surface.x.min(), surface.x.max()), np.clip(py, surface.y.min(), surface.y.max())])
    return f(pts)
