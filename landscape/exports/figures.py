"""Paper figures with matplotlib (no pyplot state): for 2-D surfaces, labelled contour maps with the training
path above 3D surfaces, one column per file with the very same levels and colour range; for 1-D surfaces,
loss curves of every domain with accuracy on a second axis, on shared axes."""
from pathlib import Path

import numpy as np
from matplotlib import rc_context
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from landscape.exports.surface_file import Surface, finite_range, nice_levels
from training.checkpoint import atomic_write
from training.errors import FaslandError

STYLE = {"font.family": "serif", "mathtext.fontset": "dejavuserif", "font.size": 8, "axes.titlesize": 9,
         "axes.labelsize": 8, "legend.fontsize": 7, "xtick.direction": "in", "ytick.direction": "in",
         "axes.linewidth": 0.7, "lines.linewidth": 1.2}
CMAP = "viridis"
PATH_COLOR = "#d62728"
PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f"]


def parse_levels(spec: str | None) -> np.ndarray | None:
    """'MIN:MAX:STEP' (as the reference's vmin, vmax, vlevel) -> the levels MIN, MIN+STEP, … < MAX."""
    if spec is None:
        return None
    try:
        lo, hi, step = (float(v) for v in spec.split(":"))
    except ValueError:
        raise FaslandError(f"--levels '{spec}' is not MIN:MAX:STEP; pass e.g. --levels 0.1:10:0.5") from None
    if not (hi > lo and step > 0):
        raise FaslandError(f"--levels '{spec}' needs MAX > MIN and STEP > 0; pass e.g. --levels 0.1:10:0.5")
    return np.arange(lo, hi, step)


def _what(name: str, log: bool) -> str:
    return f"log({name} + 0.1)" if log else name.replace("_", " ")


def contour_figure(surfaces: list[Surface], name: str = "train_loss", log: bool = False, zmax: float | None = None,
                   labels: list[str] | None = None, levels: np.ndarray | None = None) -> Figure:
    """Row 1: contour maps with labelled levels and the training path; row 2: 3D surfaces. Shared levels and norm."""
    labels = labels or [s.label for s in surfaces]
    hs = [s.height(name, log=log, zmax=zmax) for s in surfaces]
    rng = finite_range(hs)
    if rng is None:
        raise FaslandError(f"no surface has a finite '{name}' value yet; run 'fasland surface' to compute the points")
    lo, hi = rng
    levels = nice_levels(lo, hi, 12) if levels is None else np.asarray(levels, dtype=float)
    norm = Normalize(lo, hi if hi > lo else lo + 1)
    n = len(surfaces)
    with rc_context(STYLE):
        fig = Figure(figsize=(2.9 * n + 0.6, 5.0), layout="constrained")
        axes3d = []
        for c, (s, label, h) in enumerate(zip(surfaces, labels, hs)):
            X, Y = np.meshgrid(s.x, s.y)
            Z = np.ma.masked_invalid(h.T)
            ax = fig.add_subplot(2, n, c + 1)
            if Z.count() >= 4:
                cs = ax.contour(X, Y, Z, levels=levels, cmap=CMAP, norm=norm, linewidths=0.8)
                ax.clabel(cs, inline=True, fontsize=5.5, fmt="%.3g")
            t = s.trajectory
            if t is not None and t.y is not None and len(t.x):
                ax.plot(t.x, t.y, "-", color=PATH_COLOR, lw=1.0, label="training path")
                ax.plot(t.x, t.y, "o", color=PATH_COLOR, ms=2.0)
                ax.plot(t.x[-1:], t.y[-1:], "*", color=PATH_COLOR, ms=7)
                ev = t.explained_variance_ratio
                if ev is not None and len(ev) >= 2:
                    ax.set_xlabel(f"PC1 ({100 * ev[0]:.1f}%)")
                    ax.set_ylabel(f"PC2 ({100 * ev[1]:.1f}%)" if c == 0 else "")
            ax.set_xlabel(ax.get_xlabel() or r"$\alpha$ (direction 1)")
            ax.set_ylabel(ax.get_ylabel() or (r"$\beta$ (direction 2)" if c == 0 else ""))
            px, py = (t.x, t.y) if t is not None and t.y is not None else (np.empty(0), np.empty(0))
            ax.set_xlim(min([s.x.min(), *px]), max([s.x.max(), *px]))   # the grid, and the whole path if it leaves it
            ax.set_ylim(min([s.y.min(), *py]), max([s.y.max(), *py]))
            ax.set_aspect("equal", adjustable="box")
            ax.set_title(label)
            ax3 = fig.add_subplot(2, n, n + c + 1, projection="3d")
            ax3.plot_surface(X, Y, h.T, cmap=CMAP, norm=norm, linewidth=0, edgecolor="none", antialiased=False, rcount=80, ccount=80)
            ax3.set_zlim(lo, hi if hi > lo else lo + 1)
            ax3.view_init(elev=32, azim=-58)
            ax3.set_xlabel(r"$\alpha$", labelpad=-6)
            ax3.set_ylabel(r"$\beta$", labelpad=-6)
            ax3.tick_params(labelsize=6, pad=-2)
            axes3d.append(ax3)
        fig.colorbar(ScalarMappable(norm=norm, cmap=CMAP), ax=axes3d, shrink=0.7, label=_what(name, log))
    return fig


def curves_figure(surfaces: list[Surface], labels: list[str] | None = None) -> Figure:
    """Each file's losses (solid, left axis) and accuracy/HTER/AUC (dashed, right axis); shared limits."""
    labels = labels or [s.label for s in surfaces]
    loss_all = [a for s in surfaces for n, a in s.arrays.items() if "loss" in n]
    rest_all = [a for s in surfaces for n, a in s.arrays.items() if "loss" not in n]
    lrng, rrng = finite_range(loss_all), finite_range(rest_all)
    n = len(surfaces)
    colors = {}
    with rc_context(STYLE):
        fig = Figure(figsize=(3.3 * n + 0.4, 3.0), layout="constrained")
        handles = {}
        for c, (s, label) in enumerate(zip(surfaces, labels)):
            ax = fig.add_subplot(1, n, c + 1)
            ax2 = ax.twinx()
            for name in s.arrays:
                a = s.height(name)   # non-finite -> NaN: a gap in the curve
                key = name.removeprefix("loss_").removeprefix("acc_").replace("_loss", "").replace("_acc", "")
                color = colors.setdefault(key, PALETTE[len(colors) % len(PALETTE)])
                is_loss = "loss" in name
                main = name.startswith(("train_", "test_"))
                line, = (ax if is_loss else ax2).plot(s.x, a, color=color, lw=1.6 if main else 0.9,
                                                      ls="-" if is_loss else "--", label=name)
                handles.setdefault(name, line)
            if lrng:
                pad = 0.04 * (lrng[1] - lrng[0] or 1)
                ax.set_ylim(lrng[0] - pad, lrng[1] + pad)
            if rrng:
                pad = 0.04 * (rrng[1] - rrng[0] or 1)
                ax2.set_ylim(rrng[0] - pad, rrng[1] + pad)
            ax.set_xlim(s.x.min(), s.x.max())
            ax.set_xlabel(r"$\alpha$")
            ax.set_ylabel("loss" if c == 0 else "")
            ax2.set_ylabel("accuracy / HTER / AUC" if c == n - 1 else "")
            if c < n - 1:
                ax2.tick_params(labelright=False)
            if c > 0:
                ax.tick_params(labelleft=False)
            ax.set_title(label)
        fig.legend(list(handles.values()), list(handles), loc="outside lower center", ncol=min(len(handles), 7), frameon=False)
    return fig


def save_figure(fig: Figure, out, dpi: int = 200) -> Path:
    """Save by the file's extension (png, pdf, svg), through a temporary file and a rename."""
    out = Path(out)
    fmt = out.suffix.lstrip(".").lower() or "png"
    if fmt not in fig.canvas.get_supported_filetypes():
        raise FaslandError(f"cannot save '{out}': unknown image format '.{fmt}'; use .png, .pdf or .svg")
    return atomic_write(out, lambda tmp: fig.savefig(tmp, format=fmt, dpi=dpi))


def export_png(paths, out, surf_name: str = "train_loss", log: bool = False, zmax: float | None = None,
               labels: list[str] | None = None, levels: np.ndarray | None = None, dpi: int = 200) -> Path:
    """Surfaces side by side: contours + 3D for 2-D grids, loss/accuracy curves for 1-D grids."""
    from landscape.exports.surface_file import common_names, read_surfaces

    surfaces = read_surfaces(paths)
    names = common_names(surfaces)
    if surf_name not in names:
        for s in surfaces:
            s.check_name(surf_name)
        raise FaslandError(f"'{surf_name}' is not in every surface; pass --surf-name with one of: {', '.join(names)}")
    if surfaces[0].ndim == 1:
        return save_figure(curves_figure(surfaces, labels), out, dpi)
    return save_figure(contour_figure(surfaces, surf_name, log, zmax, labels, levels), out, dpi)
