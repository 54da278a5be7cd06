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
CONFLICT_KEYS = ("cosines", "conflicts", "trajectory")


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
    for key in ("method", "label", "name"):
        if isinstance(data.get(key), str) and data[key].strip():
            return data[key]
    config = data.get("config") or {}
    if isinstance(config, dict) and isinstance(config.get("method"), str):
        return config["method"]
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
    matrices: dict = field(default_factory=dict)   # point name -> k×k cosine matrix
    epochs: np.ndarray | None = None
    over_epochs: dict = field(default_factory=dict)  # point name -> (n_epochs, k, k)


def _matrices(v, default_name: str) -> dict:
    """{point: k×k} from a bare matrix, a dict of matrices, or a dict holding a list of matrices (one per ascent point)."""
    out = {}
    if isinstance(v, dict):
        for name, m in v.items():
            if isinstance(m, dict) and "cosines" in m:
                m = m["cosines"]
            a = np.asarray(m, dtype=float) if isinstance(m, list) else None
            if a is None:
                continue
            if a.ndim == 2 and a.shape[0] == a.shape[1]:
                out[str(name)] = a
            elif a.ndim == 3 and a.shape[1] == a.shape[2]:
                out.update({f"{name} {i}": a[i] for i in range(len(a))})
    elif isinstance(v, list):
        a = np.asarray(v, dtype=float)
        if a.ndim == 2 and a.shape[0] == a.shape[1]:
            out[default_name] = a
    return out


def read_conflicts(path, data: dict | None = None) -> Conflicts:
    data = read_json(path) if data is None else data
    at = str(data.get("at", "theta"))
    matrices = {}
    for key in ("cosines", "conflicts"):
        if key in data:
            matrices.update(_matrices(data[key], at))
    for point in ("theta", "ascent"):  # files that keep each point at the top level
        if isinstance(data.get(point), (list, dict)):
            sub = data[point]
            matrices.update(_matrices(sub.get("cosines", sub) if isinstance(sub, dict) else sub, point))
    k = next((len(m) for m in matrices.values()), None)
    epochs, over = None, {}
    traj = data.get("trajectory")
    if isinstance(traj, list) and traj:
        rows = []
        for i, entry in enumerate(traj):
            if isinstance(entry, dict):
                e = entry.get("epoch", i)
                mats = _matrices(entry.get("cosines", {k2: v for k2, v in entry.items() if k2 != "epoch"}), at)
            else:
                e, mats = i, _matrices(entry, at)
            if mats:
                rows.append((e, mats))
        names = [n for n in (rows[0][1] if rows else {}) if all(n in m for _, m in rows)]
        if rows and names:
            epochs = np.asarray([e for e, _ in rows], dtype=float)
            over = {n: np.stack([m[n] for _, m in rows]) for n in names}
            k = k or over[names[0]].shape[1]
    domains = data.get("domains")
    if not (isinstance(domains, list) and len(domains) == k):
        domains = [f"D{i}" for i in range(k or 0)]
    if not matrices and not over:
        raise FaslandError(f"'{path}' has no k×k cosine matrix (under 'cosines' or 'trajectory'); "
                           "pass a file written by 'fasland conflicts'")
    return Conflicts(label_of(data, path), [str(d) for d in domains], matrices, epochs, over)
