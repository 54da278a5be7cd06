"""Views of the analysis results, beside their schemas (analysis.results): the Hessian spectra and the
per-domain gradient conflicts as plotly figures for `fasland export html` (registered with
landscape.exports.views on import), read from HessianResult / ConflictResult only."""
from dataclasses import dataclass, field

import numpy as np

from analysis.results import ConflictResult, HessianResult
from landscape.exports import views


@dataclass
class Spectrum:
    """One model's (or one domain's) Hessian: top eigenvalues, trace, spectral density on a grid."""
    label: str
    eigenvalues: np.ndarray | None = None
    trace: float | None = None
    grid: np.ndarray | None = None
    density: np.ndarray | None = None


@dataclass
class Conflicts:
    label: str
    domains: list
    matrices: dict = field(default_factory=dict)     # point -> k×k cosine matrix
    scores: dict = field(default_factory=dict)       # point -> conflict score (mean over pairs of max(0, −cos))
    epochs: np.ndarray | None = None
    over_epochs: dict = field(default_factory=dict)  # point -> (n_epochs, k, k)


def label_of(r, path) -> str:
    """The training method named in the result, else the run folder of its checkpoint, else the file stem."""
    from pathlib import Path

    if isinstance(r.method, str) and r.method.strip():
        return r.method
    ckpt = Path(str(r.checkpoint or ""))
    if ckpt.name == "checkpoint.pt" and ckpt.parent.name not in ("", "."):
        return ckpt.parent.name
    return Path(path).stem


def spectra(r: HessianResult, label: str) -> list[Spectrum]:
    """The whole model's spectrum first, then λ_max of each domain."""
    s = Spectrum(label)
    if r.eigenvalues:
        s.eigenvalues = np.asarray(r.eigenvalues, dtype=float)
    if r.trace is not None:
        s.trace = float(r.trace["mean"])
    if r.density is not None:
        s.grid, s.density = np.asarray(r.density["grid"], dtype=float), np.asarray(r.density["density"], dtype=float)
    return [s] + [Spectrum(f"{label} · {d}", eigenvalues=np.asarray([v["lambda_max"]], dtype=float))
                  for d, v in r.per_domain.items()]


def conflicts_view(r: ConflictResult, label: str) -> Conflicts:
    """Every point's cosine matrix and score at the checkpoint, and over the trajectory's epochs those points
    every entry has."""
    matrices = {p: np.asarray(rec["cosines"], dtype=float) for p, rec in r.records().items()}
    scores = {p: float(rec["conflict"]) for p, rec in r.records().items() if isinstance(rec.get("conflict"), (int, float))}
    epochs, over = None, {}
    entries = [(e.get("epoch", i), r.records(e)) for i, e in enumerate(r.trajectory)]
    if entries:
        names = [n for n in entries[0][1] if all(n in recs for _, recs in entries)]
        if names:
            epochs = np.asarray([e for e, _ in entries], dtype=float)
            over = {n: np.stack([np.asarray(recs[n]["cosines"], dtype=float) for _, recs in entries]) for n in names}
    return Conflicts(label, [str(d) for d in r.domains], matrices, scores, epochs, over)


class HessianView:
    command, title = "hessian", "Hessian spectra"

    def read(self, path, data: dict, label: str | None = None) -> list[Spectrum]:
        r = HessianResult.from_json(data, path)
        return spectra(r, label or label_of(r, path))

    def figure(self, items):
        return hessian_figure(items)


class ConflictsView:
    command, title = "conflicts", "Per-domain gradient conflicts"

    def read(self, path, data: dict, label: str | None = None) -> list[Conflicts]:
        r = ConflictResult.from_json(data, path)
        return [conflicts_view(r, label or label_of(r, path))]

    def figure(self, items):
        return conflicts_figure(items)


views.register(HessianView())
views.register(ConflictsView())


def hessian_figure(spectra: list[Spectrum]):
    """Spectral densities (log scale) and top eigenvalues, every file/domain overlaid."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    from landscape.exports.html_page import PALETTE, as_list

    fig = make_subplots(rows=1, cols=2, column_widths=[0.62, 0.38], horizontal_spacing=0.1,
                        subplot_titles=["Hessian spectral density (SLQ)", "top eigenvalues"])
    for i, s in enumerate(spectra):
        color = PALETTE[i % len(PALETTE)]
        name = s.label + (f" (trace {s.trace:.4g})" if s.trace is not None else "")
        if s.grid is not None:
            dens = np.where(s.density > 0, s.density, np.nan)
            fig.add_trace(go.Scatter(x=as_list(s.grid), y=as_list(dens), mode="lines", name=name, legendgroup=s.label,
                                     line=dict(color=color, width=2, dash="dot" if "·" in s.label else "solid"),
                                     hovertemplate="λ=%{x:.4g}<br>density=%{y:.3g}<extra>" + s.label + "</extra>"), row=1, col=1)
        if s.eigenvalues is not None:
            fig.add_trace(go.Scatter(x=list(range(1, len(s.eigenvalues) + 1)), y=as_list(s.eigenvalues), mode="lines+markers",
                                     name=name, legendgroup=s.label, showlegend=s.grid is None, line=dict(color=color),
                                     hovertemplate="λ_%{x}=%{y:.5g}<extra>" + s.label + "</extra>"), row=1, col=2)
    fig.update_xaxes(title_text="eigenvalue λ", row=1, col=1)
    fig.update_yaxes(title_text="density", type="log", row=1, col=1)
    fig.update_xaxes(title_text="rank", dtick=1, row=1, col=2)
    fig.update_yaxes(title_text="λ", row=1, col=2)
    fig.update_layout(height=480, width=1100, margin=dict(l=60, r=30, t=70, b=50))
    return fig


POINT_TITLES = {"theta": "θ", "sam": "SAM ascent", "generalization": "∇L(θ_i; S) over i"}


def point_title(point: str) -> str:
    """θ, SAM's ascent point, GAC-FAS's ascent point θ_D of domain D, or the generalization gradients."""
    if point.startswith("ascent "):
        return f"θ_{point[7:]} ascent"
    return POINT_TITLES.get(point, point)


def conflicts_figure(items: list[Conflicts], per_row: int = 4):
    """Per file: the cosine heatmap of each point (θ, ascent points), `per_row` to a row, then the cosines over
    epochs on a full row — every pair at the first point (solid), the mean pair cosine at the others (dashed)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    from landscape.exports.html_page import PALETTE, as_list

    specs, titles, rows = [], [], []
    for c in items:
        points = list(c.matrices)
        for start in range(0, len(points), per_row):
            chunk = points[start:start + per_row]
            specs.append([{}] * len(chunk) + [None] * (per_row - len(chunk)))
            titles += [f"{c.label} · {point_title(p)}" + (f" · conflict {c.scores[p]:.3f}" if p in c.scores else "") for p in chunk]
            rows.append(("heatmaps", c, chunk))
        if c.over_epochs:
            specs.append([{"colspan": per_row}] + [None] * (per_row - 1))
            titles.append(f"{c.label}: cosines over epochs")
            rows.append(("epochs", c, None))
    heights = [300 if kind == "heatmaps" else 340 for kind, _, _ in rows]
    fig = make_subplots(rows=len(rows), cols=per_row, specs=specs, subplot_titles=titles, horizontal_spacing=0.06,
                        vertical_spacing=min(0.3, 90 / sum(heights)), row_heights=heights)
    shown = set()
    for r, (kind, c, chunk) in enumerate(rows, 1):
        if kind == "heatmaps":
            for col, point in enumerate(chunk, 1):
                fig.add_trace(go.Heatmap(z=as_list(c.matrices[point]), x=c.domains, y=c.domains, coloraxis="coloraxis",
                                         texttemplate="%{z:.2f}",
                                         hovertemplate="cos(g_%{y}, g_%{x}) = %{z:.3f}<extra>" + f"{c.label} · {point}</extra>"),
                              row=r, col=col)
                fig.update_yaxes(autorange="reversed", scaleanchor=fig.data[-1].xaxis, row=r, col=col)
            continue
        k = len(c.domains)
        pairs = [(a, b) for a in range(k) for b in range(a + 1, k)]
        for pi, (point, series) in enumerate(c.over_epochs.items()):
            if pi == 0:
                lines = [(f"{point}: {c.domains[a]}–{c.domains[b]}", series[:, a, b], "solid", PALETTE[j % len(PALETTE)])
                         for j, (a, b) in enumerate(pairs)]
            else:
                mean = np.mean([series[:, a, b] for a, b in pairs], axis=0)
                lines = [(f"{point}: mean pair", mean, "dash", PALETTE[(len(pairs) + pi) % len(PALETTE)])]
            for name, y, dash, color in lines:
                fig.add_trace(go.Scatter(x=as_list(c.epochs), y=as_list(y), mode="lines+markers", name=name, legendgroup=name,
                                         showlegend=name not in shown, line=dict(color=color, dash=dash),
                                         hovertemplate="epoch %{x}<br>cos=%{y:.3f}<extra>" + f"{c.label} · {name}</extra>"),
                              row=r, col=1)
                shown.add(name)
        fig.update_xaxes(title_text="epoch", tickformat="d", row=r, col=1)
        fig.update_yaxes(title_text="cosine", range=[-1.05, 1.05], row=r, col=1)
    fig.update_layout(coloraxis=dict(colorscale="RdBu", cmin=-1, cmax=1, colorbar=dict(title=dict(text="cosine"), len=0.5, y=1, yanchor="top")),
                      legend=dict(orientation="h", x=0, y=-40 / sum(heights), yanchor="top"), height=sum(heights) + 200,
                      width=1100, margin=dict(l=60, r=40, t=60, b=110))
    fig.update_annotations(font_size=11)
    return fig
