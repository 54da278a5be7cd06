"""Self-contained interactive pages: plotly.js is embedded once, so the page works with no network.

2-D surfaces: a 3D surface above a contour map per file, side by side, one shared colour axis and shared
contour levels, the training path on both, a menu switching every panel to another array. 1-D surfaces:
every domain's loss (left axis) and accuracy/HTER/AUC (right axis) per file, on shared axes. Result files
of other commands (JSON) are shown by the view registered for them (landscape.exports.views).
"""
import html
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
import plotly.io as pio
from plotly.subplots import make_subplots

from landscape.exports.surface_file import Surface, common_names, finite_range, height_along, nice_levels
from training.checkpoint import atomic_write
from training.errors import FaslandError

PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f"]
PATH_COLOR = "#e8000b"


def as_list(a) -> list:
    """JSON-safe nested list: non-finite -> null, so plotly leaves a gap instead of a bogus value."""
    a = np.asarray(a, dtype=float)
    return np.where(np.isfinite(a), a, None).tolist()


def zgrid(h: np.ndarray) -> list:
    """Plotly's z[j][i] sits at (x_i, y_j); ours is h[i, j]."""
    return as_list(np.asarray(h).T)


def what(name: str, log: bool) -> str:
    return f"log({name} + 0.1)" if log else name


def path_heights(s: Surface, h: np.ndarray) -> list:
    if not np.isfinite(h).any():
        return [None] * len(s.trajectory.x)
    return as_list(height_along(s, h, s.trajectory.x, s.trajectory.y))


def _array_view(surfaces, name, log, zmax) -> dict:
    """Everything the menu changes for one array: heights, shared range and levels."""
    hs = [s.height(name, log=log, zmax=zmax) for s in surfaces]
    rng = finite_range(hs) or (0.0, 1.0)
    lo, hi = rng if rng[1] > rng[0] else (rng[0] - 0.5, rng[0] + 0.5)
    levels = nice_levels(lo, hi, 14)
    step = float(levels[1] - levels[0]) if len(levels) > 1 else 1.0
    contours = dict(start=float(levels[0]), end=float(levels[-1]), size=step, showlabels=True,
                    labelfont=dict(size=9, color="white"), coloring="heatmap")
    return dict(hs=hs, lo=lo, hi=hi, contours=contours, title=what(name, log))


def surfaces_figure(surfaces: list[Surface], first: str = "train_loss", log: bool = False,
                    zmax: float | None = None, labels: list[str] | None = None) -> go.Figure:
    """3D surfaces (top row) and contour maps (bottom row), one column per file."""
    names = common_names(surfaces)
    if first not in names:
        raise FaslandError(f"'{first}' is not in every surface; pass --surf-name with one of: {', '.join(names)}")
    names = [first] + [n for n in names if n != first]
    labels = labels or [s.label for s in surfaces]
    n = len(surfaces)
    fig = make_subplots(rows=2, cols=n, specs=[[{"type": "scene"}] * n, [{"type": "xy"}] * n],
                        subplot_titles=labels + [""] * n, row_heights=[0.56, 0.44],
                        vertical_spacing=0.1, horizontal_spacing=0.06)
    view = _array_view(surfaces, first, log, zmax)
    followers = []  # (trace index, kind, surface index): traces whose z follows the menu
    for c, (s, label, h) in enumerate(zip(surfaces, labels, view["hs"]), 1):
        hover = f"x=%{{x:.3f}}<br>y=%{{y:.3f}}<br>{view['title']}=%{{z:.4g}}<extra>{label}</extra>"
        fig.add_trace(go.Surface(x=s.x.tolist(), y=s.y.tolist(), z=zgrid(h), coloraxis="coloraxis", name=label,
                                 hovertemplate=hover, lighting=dict(specular=0.3, roughness=0.6)), row=1, col=c)
        followers.append((len(fig.data) - 1, "surface", c - 1))
        fig.add_trace(go.Contour(x=s.x.tolist(), y=s.y.tolist(), z=zgrid(h), coloraxis="coloraxis", name=label,
                                 autocontour=False, contours=view["contours"], line=dict(width=0.6, color="rgba(0,0,0,0.45)"),
                                 hovertemplate=hover), row=2, col=c)
        followers.append((len(fig.data) - 1, "contour", c - 1))
        t = s.trajectory
        if t is not None and len(t.x) and t.y is not None:
            fig.add_trace(go.Scatter3d(x=t.x.tolist(), y=t.y.tolist(), z=path_heights(s, h), mode="lines+markers",
                                       line=dict(color=PATH_COLOR, width=6), marker=dict(size=3, color=PATH_COLOR),
                                       customdata=t.epochs.tolist(), hovertemplate="epoch %{customdata}<extra>path</extra>",
                                       name="training path", legendgroup="path", showlegend=c == 1), row=1, col=c)
            followers.append((len(fig.data) - 1, "path3d", c - 1))
            fig.add_trace(go.Scatter(x=t.x.tolist(), y=t.y.tolist(), mode="lines+markers",
                                     line=dict(color=PATH_COLOR, width=2), marker=dict(size=5, color=PATH_COLOR),
                                     customdata=t.epochs.tolist(), name="training path", legendgroup="path", showlegend=False,
                                     hovertemplate="epoch %{customdata}<br>x=%{x:.3f}<br>y=%{y:.3f}<extra>path</extra>"), row=2, col=c)
        fig.update_xaxes(title_text="x (direction 1)", constrain="domain", row=2, col=c)
        fig.update_yaxes(title_text="y (direction 2)" if c == 1 else None, scaleanchor=f"x{'' if c == 1 else c}", row=2, col=c)
    scenes = ["scene"] + [f"scene{i}" for i in range(2, n + 1)]
    fig.update_layout(
        coloraxis=dict(colorscale="Viridis", cmin=view["lo"], cmax=view["hi"], colorbar=dict(title=dict(text=view["title"]), len=0.9)),
        height=900, width=max(700, 520 * n), margin=dict(l=40, r=40, t=90, b=40),
        legend=dict(orientation="h", x=0, y=1.06),
        **{sc: dict(aspectmode="cube", xaxis_title="x", yaxis_title="y", camera=dict(eye=dict(x=-1.35, y=-1.6, z=1.0)),
                    zaxis=dict(title=dict(text=view["title"]), range=[view["lo"], view["hi"]])) for sc in scenes})
    buttons = []
    for name in names:
        v = view if name == first else _array_view(surfaces, name, log, zmax)
        zs, hovers, contours = [], [], []
        for _, kind, i in followers:
            h, label = v["hs"][i], labels[i]
            zs.append(path_heights(surfaces[i], h) if kind == "path3d" else zgrid(h))
            hovers.append("epoch %{customdata}<extra>path</extra>" if kind == "path3d" else
                          f"x=%{{x:.3f}}<br>y=%{{y:.3f}}<br>{v['title']}=%{{z:.4g}}<extra>{label}</extra>")
            contours.append(v["contours"] if kind == "contour" else {})
        layout = {"coloraxis.cmin": v["lo"], "coloraxis.cmax": v["hi"], "coloraxis.colorbar.title.text": v["title"]}
        for sc in scenes:
            layout[f"{sc}.zaxis.range"] = [v["lo"], v["hi"]]
            layout[f"{sc}.zaxis.title.text"] = v["title"]
        buttons.append(dict(label=name, method="update",
                            args=[{"z": zs, "hovertemplate": hovers, "contours": contours}, layout, [i for i, _, _ in followers]]))
    fig.update_layout(updatemenus=[dict(buttons=buttons, direction="down", x=1.0, xanchor="right", y=1.08, yanchor="bottom",
                                        showactive=True)],
                      annotations=list(fig.layout.annotations) + [dict(text="array:", x=0.87, y=1.085, xref="paper", yref="paper",
                                                                       showarrow=False, xanchor="right", yanchor="bottom")])
    return fig


def _curve_names(s: Surface) -> tuple[list[str], list[str]]:
    loss = [n for n in s.arrays if "loss" in n]
    rest = [n for n in s.arrays if n not in loss]
    return loss, rest


def curves_figure(surfaces: list[Surface], labels: list[str] | None = None) -> go.Figure:
    """1-D surfaces: losses on the left axis, accuracies/HTER/AUC on the right, one column per file, shared ranges."""
    labels = labels or [s.label for s in surfaces]
    n = len(surfaces)
    fig = make_subplots(rows=1, cols=n, specs=[[{"secondary_y": True}] * n], subplot_titles=labels, horizontal_spacing=0.08)
    colors, loss_all, rest_all = {}, [], []
    for c, (s, label) in enumerate(zip(surfaces, labels), 1):
        loss, rest = _curve_names(s)
        for name in loss + rest:
            key = name.removeprefix("loss_").removeprefix("acc_").replace("_loss", "").replace("_acc", "")
            color = colors.setdefault(key, PALETTE[len(colors) % len(PALETTE)])
            main = name.startswith(("train_", "test_"))
            fig.add_trace(go.Scatter(x=s.x.tolist(), y=as_list(s.arrays[name]), mode="lines", name=name, legendgroup=name,
                                     showlegend=c == 1, line=dict(color=color, width=2.6 if main else 1.4,
                                                                  dash="solid" if name in loss else "dash"),
                                     hovertemplate=f"x=%{{x:.3f}}<br>{name}=%{{y:.4g}}<extra>{label}</extra>"),
                          row=1, col=c, secondary_y=name not in loss)
        loss_all += [s.arrays[nm] for nm in loss]
        rest_all += [s.arrays[nm] for nm in rest]
        fig.update_xaxes(title_text="x (direction)", row=1, col=c)
    lrng, rrng = finite_range(loss_all), finite_range(rest_all)
    for c in range(1, n + 1):
        if lrng:
            pad = 0.04 * (lrng[1] - lrng[0] or 1)
            fig.update_yaxes(range=[lrng[0] - pad, lrng[1] + pad], title_text="loss" if c == 1 else None, row=1, col=c, secondary_y=False)
        if rrng:
            pad = 0.04 * (rrng[1] - rrng[0] or 1)
            fig.update_yaxes(range=[rrng[0] - pad, rrng[1] + pad], title_text="accuracy / HTER / AUC" if c == n else None,
                             row=1, col=c, secondary_y=True, showgrid=False, tickmode="auto", nticks=6, tickformat=".2f")
    fig.update_layout(height=520, width=max(700, 560 * n), margin=dict(l=50, r=50, t=80, b=50),
                      legend=dict(orientation="h", x=0, y=-0.15), hovermode="x unified")
    return fig


def write_page(figures: list[tuple[str, go.Figure]], out, title: str = "fasland") -> Path:
    """One HTML file: plotly.js inlined once, then each figure under a heading."""
    parts = []
    for i, (heading, fig) in enumerate(figures):
        div = pio.to_html(fig, full_html=False, include_plotlyjs=(i == 0), config={"displaylogo": False},
                          default_width=f"{fig.layout.width}px", default_height=f"{fig.layout.height}px")
        parts.append(f"<h2>{html.escape(heading)}</h2>\n{div}")
    title = html.escape(title)
    page = ("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>" + title + "</title>\n"
            "<style>body{font-family:sans-serif;margin:16px;color:#222}h2{font-size:17px;font-weight:600;margin:18px 0 4px}"
            "</style></head><body>\n<h1 style=\"font-size:20px\">" + title + "</h1>\n" + "\n".join(parts) + "\n</body></html>\n")
    return atomic_write(out, lambda tmp: tmp.write_text(page, encoding="utf-8"))


def export_html(paths, out, surf_name: str = "train_loss", log: bool = False, zmax: float | None = None,
                labels: list[str] | None = None, title: str | None = None) -> Path:
    """One page from surface files (2-D and/or 1-D) and result JSON files (each shown by its registered view),
    each kind in its own section."""
    from landscape.exports.sources import classify

    labels = labels or [None] * len(paths)
    groups = {"surface2": [], "surface1": []}
    shown = {}      # view → its items, in input order
    for path, label in zip(paths, labels):
        what_, obj = classify(path)
        if what_ == "surface":
            groups[f"surface{obj.ndim}"].append((obj, label or obj.label))
        else:
            shown.setdefault(what_, []).extend(what_.read(path, obj, label))
    figures = []
    if groups["surface2"]:
        ss, ls = zip(*groups["surface2"])
        figures.append(("Loss surfaces (2-D)", surfaces_figure(list(ss), surf_name, log, zmax, list(ls))))
    if groups["surface1"]:
        ss, ls = zip(*groups["surface1"])
        for s in ss:
            s.check_name(surf_name)   # the curves show every array; a misspelt name is still an error
        figures.append(("Loss curves (1-D)", curves_figure(list(ss), list(ls))))
    figures += [(view.title, view.figure(items)) for view, items in shown.items()]
    return write_page(figures, out, title or "fasland: " + ", ".join(Path(p).name for p in paths))
