"""The analysis JSON files (fasland hessian / fasland conflicts) read into plain structures for the views.

Readers are lenient about layout: a Hessian file has `eigenvalues`, `trace` and/or `density` {grid,
values} (optionally per domain); a conflicts file has k×k cosine matrices — one per point (`theta`,
`ascent`, …) — and optionally a `trajectory` of them over epochs.
"""
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from training.errors import FaslandError

HESSIAN_KEYS = ("eigenvalues", "trace", "density")
CONFLICT_KEYS = ("cosines", "theta", "sam", "gacfas", "trajectory")


def read_json(path) -> dict:
    path = str(path)
    if not os.path.exists(path):
        raise FaslandError(f"file '{path}' not found; pass a JSON written by 'fasland hessian' or 'fasland conflicts'")
    try:
        with open(path) as f:
            data = json.load(f)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise FaslandError(f"'{path}' is not readable JSON ({e.__class__.__name__}); pass a file written by "
                           "'fasland hessian' or 'fasland conflicts', or rerun that command") from None
    if not isinstance(data, dict):
        raise FaslandError(f"'{path}' holds a JSON {type(data).__name__}, not an object; pass a file written by "
                           "'fasland hessian' or 'fasland conflicts'")
    return data


def kind(data: dict, path) -> str:
    """'hessian' or 'conflicts', from the keys present."""
    if any(k in data for k in HESSIAN_KEYS):
        return "hessian"
    if any(k in data for k in CONFLICT_KEYS):
        return "conflicts"
    raise FaslandError(f"'{path}' is neither a Hessian file (keys {', '.join(HESSIAN_KEYS)}) nor a conflicts file "
                       f"(keys {', '.join(CONFLICT_KEYS)}); pass a file written by 'fasland hessian' or 'fasland conflicts'")


def label_of(data: dict, path) -> str:
    """The method named in the file, else the run folder of its checkpoint, else the file stem."""
    for key in ("method", "label", "name"):
        if isinstance(data.get(key), str) and data[key].strip():
            return data[key]
    config = data.get("config") or {}
    if isinstance(config, dict) and isinstance(config.get("method"), str):
        return config["method"]
    ckpt = Path(str(data.get("checkpoint", "")))
    if ckpt.name == "checkpoint.pt" and ckpt.parent.name not in ("", "."):
        return ckpt.parent.name
    return Path(path).stem


def _floats(v) -> np.ndarray:
    return np.asarray([np.nan if x is None else x for x in np.ravel(np.asarray(v, dtype=object))], dtype=float)


@dataclass
class Spectrum:
    """One model's (or one domain's) Hessian: top eigenvalues, trace, spectral density on a grid."""
    label: str
    eigenvalues: np.ndarray | None = None
    trace: float | None = None
    grid: np.ndarray | None = None
    density: np.ndarray | None = None


def _spectrum(label: str, d: dict) -> Spectrum:
    """Accepts trace as a number, {mean, stderr, …} or [mean, stderr, samples], and density as
    {grid, values|density} or [nodes, weights, grid, density, sigma] (analysis.hessian's tuples)."""
    s = Spectrum(label)
    if d.get("eigenvalues") is not None:
        s.eigenvalues = _floats(d["eigenvalues"])
    t = d.get("trace")
    if isinstance(t, dict):
        t = t.get("mean", t.get("value"))
    elif isinstance(t, list) and t:
        t = t[0]
    if isinstance(t, (int, float)):
        s.trace = float(t)
    dens = d.get("density")
    if isinstance(dens, list) and len(dens) == 5:
        dens = {"grid": dens[2], "values": dens[3]}
    if isinstance(dens, dict):
        grid, values = dens.get("grid"), dens.get("values", dens.get("density"))
        if grid is not None and values is not None:
            s.grid, s.density = _floats(grid), _floats(values)
            if s.grid.shape != s.density.shape:
                s.grid = s.density = None
    return s


def read_hessian(path, data: dict | None = None) -> list[Spectrum]:
    """The whole model's spectrum first, then one per domain if the file has them (`per_domain` {D: {...}})."""
    data = read_json(path) if data is None else data
    label = label_of(data, path)
    out = [_spectrum(label, data)]
    per = data.get("per_domain") or data.get("domains")
    if isinstance(per, dict):
        out += [_spectrum(f"{label} · {d}", v) for d, v in per.items() if isinstance(v, dict)]
    return out


@dataclass
class Conflicts:
    label: str
    domains: list
    matrices: dict = field(default_factory=dict)     # point -> k×k cosine matrix
    scores: dict = field(default_factory=dict)       # point -> conflict score (mean over pairs of max(0, −cos))
    epochs: np.ndarray | None = None
    over_epochs: dict = field(default_factory=dict)  # point -> (n_epochs, k, k)


def _square(m) -> np.ndarray | None:
    try:
        a = np.asarray(m, dtype=float)
    except (TypeError, ValueError):
        return None
    return a if a.ndim == 2 and a.shape[0] == a.shape[1] and a.size else None


def point_matrices(d: dict) -> tuple[dict, dict]:
    """({point: k×k cosines}, {point: conflict score}) of one conflicts record. Points: `theta`, `sam`
    (SAM's ascent point), `ascent <D>` (GAC-FAS's θ_D), `generalization` (∇L(θ_i; S) across i); a bare
    `cosines` matrix (or dict of them) is also read, named by `at`."""
    mats, scores = {}, {}

    def put(name, rec):
        if isinstance(rec, dict):
            m = _square(rec.get("cosines"))
            if m is not None:
                mats[name] = m
                if isinstance(rec.get("conflict"), (int, float)):
                    scores[name] = float(rec["conflict"])
        elif (m := _square(rec)) is not None:
            mats[name] = m

    c = d.get("cosines")
    if isinstance(c, dict):
        for name, rec in c.items():
            put(str(name), rec)
    elif c is not None:
        put(str(d.get("at", "theta")), c)
    for key in ("theta", "sam"):
        if key in d:
            put(key, d[key])
    ga = d.get("gacfas", d.get("ascent"))
    if isinstance(ga, dict):
        for name, rec in (ga.get("points") or {}).items():
            put(f"ascent {name}", rec)
        if "generalization" in ga:
            put("generalization", ga["generalization"])
    elif ga is not None:
        put("ascent", ga)
    return mats, scores


def read_conflicts(path, data: dict | None = None) -> Conflicts:
    data = read_json(path) if data is None else data
    matrices, scores = point_matrices(data)
    k = next((len(m) for m in matrices.values()), None)
    epochs, over = None, {}
    traj = data.get("trajectory")
    if isinstance(traj, list) and traj:
        rows = [(entry.get("epoch", i), point_matrices(entry)[0]) for i, entry in enumerate(traj) if isinstance(entry, dict)]
        rows = [(e, m) for e, m in rows if m]
        names = [n for n in (rows[0][1] if rows else {}) if all(n in m and m[n].shape == rows[0][1][n].shape for _, m in rows)]
        if names:
            epochs = np.asarray([e for e, _ in rows], dtype=float)
            over = {n: np.stack([m[n] for _, m in rows]) for n in names}
            k = k or over[names[0]].shape[1]
    if not matrices and not over:
        raise FaslandError(f"'{path}' has no k×k cosine matrix (theta/sam/gacfas/cosines or a trajectory of them); "
                           "pass a file written by 'fasland conflicts'")
    domains = data.get("domains")
    if not (isinstance(domains, list) and len(domains) == k):
        domains = [f"D{i}" for i in range(k)]
    return Conflicts(label_of(data, path), [str(d) for d in domains], matrices, scores, epochs, over)
