"""Small surface files for the export tests, written with plain h5py in the store's layout
(landscape/store.py: each metric of shape (nx, ny) whose flat index k = iy·nx + ix holds f(x[ix], y[iy]))."""
import json

import h5py
import numpy as np

DOMAINS = ("I", "C", "M")
TARGET = "O"


def metrics_at(X, Y, scale=1.0):
    """Every metric of the probe as a smooth function of the plane coordinates (X, Y arrays)."""
    base = scale * (X ** 2 + 0.5 * Y ** 2) + 0.1 * np.sin(3 * X) + 0.05 * Y
    m = {}
    for i, d in enumerate(DOMAINS + (TARGET,)):
        m[f"loss_{d}"] = (1 + 0.25 * i) * base + 0.1 * i + 0.2
        m[f"acc_{d}"] = 1 / (1 + (1 + 0.1 * i) * base)
    m["train_loss"] = sum(m[f"loss_{d}"] for d in DOMAINS) / 3
    m["train_acc"] = sum(m[f"acc_{d}"] for d in DOMAINS) / 3
    m["test_loss"], m["test_acc"] = m[f"loss_{TARGET}"], m[f"acc_{TARGET}"]
    m["test_hter"] = 0.5 * (1 - m["test_acc"])
    m["test_auc"] = m["test_acc"] ** 0.5
    return m


def write_surface(path, nx=9, ny=7, scale=1.0, missing=(), blowup=(), trajectory=True, one_d=False, attrs=None):
    """A surface file; `missing` [(ix, iy)] are not done (NaN), `blowup` [(ix, iy)] are done but train_loss = inf.
    Returns the truth: {x, y, arrays [ix, iy] with NaN where not done}."""
    x = np.linspace(-1.0, 1.0, nx)
    y = None if one_d else np.linspace(-0.8, 0.8, ny)
    X, Y = (x, np.zeros_like(x)) if one_d else np.meshgrid(x, y, indexing="ij")
    arrays = metrics_at(X, Y, scale)
    done = np.ones(X.shape, bool)
    for p in missing:
        done[p] = False
    for a in arrays.values():
        a[~done] = np.nan
    for p in blowup:
        arrays["train_loss"][p] = np.inf
    with h5py.File(path, "w") as f:
        f["xcoordinates"] = x
        if not one_d:
            f["ycoordinates"] = y
        for name, a in arrays.items():
            f[name] = stored(a)
        f["done"] = stored(done.astype(np.uint8))
        f["dir_file"] = "dirs.h5"
        if trajectory and not one_d:
            t = np.linspace(0, 1, 8)
            f["proj_xcoord"] = 0.7 * (1 - t) * np.cos(4 * t)
            f["proj_ycoord"] = 0.6 * (1 - t) * np.sin(4 * t)
            f["proj_epochs"] = np.arange(1, 9)
            f["explained_variance_ratio_"] = np.array([0.71, 0.18])
        f.attrs["format"] = "fasland-surface-1"
        f.attrs["layout"] = "reference"
        f.attrs["checkpoint"] = "runs/demo/erm/checkpoint.pt"
        for k, v in (attrs or {}).items():
            f.attrs[k] = v
    return {"x": x, "y": y, "arrays": arrays, "done": done}


def stored(a):
    """[ix, iy] -> the file's (nx, ny) dataset with flat k = iy·nx + ix."""
    a = np.asarray(a)
    return a if a.ndim == 1 else a.T.reshape(a.shape)


def write_hessian(path, label="erm", scale=1.0):
    """A `fasland hessian` result (analysis.results.HessianResult) with a density and per-domain λ_max."""
    from analysis.results import HessianResult

    grid = np.linspace(-1, 10 * scale, 60)
    values = np.exp(-0.5 * (grid / (0.5 * scale)) ** 2) + 1e-3
    r = HessianResult(method=label, eigenvalues=[10.0 * scale, 6.0 * scale, 2.5 * scale],
                      trace={"mean": 40.0 * scale, "stderr": 0.5, "n_samples": 2, "samples": [39.5 * scale, 40.5 * scale]},
                      density={"grid": grid.tolist(), "density": values.tolist(), "sigma": 0.1, "nodes": [[1.0]], "weights": [[1.0]]},
                      per_domain={d: {"lambda_max": (4 + i) * scale, "role": "source", "samples": 8} for i, d in enumerate(DOMAINS)})
    data = r.to_json()
    with open(path, "w") as f:
        json.dump(data, f)
    return data


def write_conflicts(path, label="gacfas", epochs=5):
    """A `fasland conflicts` result (analysis.results.ConflictResult): theta / sam / gacfas{points,
    generalization}, each with a k×k `cosines` and its `conflict`; a `trajectory` of such records over epochs."""
    from analysis.results import ConflictResult

    k = len(DOMAINS)
    rng = np.random.default_rng(0)

    def record():
        m = rng.uniform(-0.6, 0.9, (k, k))
        m = (m + m.T) / 2
        np.fill_diagonal(m, 1.0)
        iu = np.triu_indices(k, 1)
        return {"cosines": m.round(4).tolist(), "norms": [1.0] * k, "conflict": float(np.maximum(0, -m[iu]).mean())}

    def full():
        return {"theta": record(), "sam": {"rho": 0.1, **record()},
                "gacfas": {"rho": 0.1, "points": {d: record() for d in DOMAINS}, "generalization": record(),
                           "alignment": {d: 0.5 for d in DOMAINS}}}

    r = ConflictResult(method=label, domains=list(DOMAINS), **full(),
                       trajectory=[{"epoch": e, **full()} for e in range(1, epochs + 1)])
    data = r.to_json()
    with open(path, "w") as f:
        json.dump(data, f)
    return data
