"""`fasland surface` as a Python function: `surface(checkpoint, out, x, y=None, …)` → the SurfaceStore.

The CLI (landscape/cli.py) only parses its flags into these arguments and prints the result. Here: the
MPI set-up order (rank 0 checks and prepares, then every rank loads), the directions' recipe (what fixes
them, so a rerun reuses them), the resume of an existing surface file, and the quick plot. See
docs/ARCHITECTURE.md for the data flow.
"""
import os
from pathlib import Path

from training.errors import FaslandError

EXAMPLES = {"max_samples": 256, "batch_size": 256, "threads": 1, "frames_per_video": 1, "curvature_tol": 0.01,
            "curvature_iter": 20}


def check_positive(**values) -> None:
    """Each of these options, when given (not None), is > 0; the sentence names it as its flag."""
    for name, value in values.items():
        if value is not None and value <= 0:
            flag = name.replace("_", "-")
            raise FaslandError(f"--{flag} {value} must be positive; pass e.g. --{flag} {EXAMPLES.get(name, 1)}")


def frames_spec(frames_per_video: int) -> dict:
    """The probe's frames per video in a result's data spec; absent at the default 1 (older results stay resumable)."""
    return {} if frames_per_video == 1 else {"frames_per_video": frames_per_video}


def set_threads(threads: int | None, comm=None) -> None:
    """`threads` torch CPU threads, else this node's cores shared by the MPI ranks on it."""
    import torch

    from landscape import mpi

    torch.set_num_threads(threads or max(1, (os.cpu_count() or 1) // (mpi.local_ranks() if comm else 1)))


def directions_path(out, dir_file=None) -> Path:
    """Where a surface's directions live: `dir_file` if given, else SURF.dirs.h5 beside SURF.h5."""
    out = Path(out)
    return Path(dir_file) if dir_file else out.with_name(out.stem + ".dirs.h5")


def surface(checkpoint, out, x, y=None, *, model2=None, model3=None, pca=None, dir_file=None, dir_type=None,
            xnorm: str = "filter", xignore: str = "biasbn", ynorm=None, yignore=None, orthogonalize: bool = False,
            seed: int = 0, data=None, max_samples: int = 256, batch_size: int = 256, device: str = "auto",
            threads: int | None = None, autocast: str | None = None, frames_per_video: int = 1, curvature: bool = False,
            bn: str = "theta", curvature_tol: float = 1e-2, curvature_iter: int = 20, hessian_tol: float = 1e-3):
    """f(a, b) = every probe metric of θ + a·d1 + b·d2 at each grid point, written to `out` (HDF5, the
    reference layout; resumed if it holds this very surface, refused if it holds another).

    x, y: 'MIN:MAX:N' specs or sequences of coordinates. Directions: filter-normalized random (seeded) by
    default; model2 (and model3): θ(model2) − θ; pca: the top-2 PCA directions of RUN_DIR's trajectory;
    dir_file: reuse a direction file; dir_type="hessian": x, y = the top two eigenvectors of the source loss's
    Hessian (to hessian_tol residual), normalized by xnorm/xignore, ynorm/yignore. They are saved to
    `directions_path(out, dir_file)`.
    autocast: None (float32, the default), "bf16" or "fp16" (recorded in the file's provenance).
    curvature: also λ_max, λ_min and |λ_min/λ_max| of the source loss at each point (Lanczos, at most
    curvature_iter products, stopped at curvature_tol of the spectrum's scale): the convexity map.
    bn: "theta" (θ's BatchNorm statistics everywhere) or "recompute" (re-estimated at each point from the
    sources' probe images).
    Under MPI every rank calls this alike; rank 0 gets the store, the others None.
    """
    from landscape import mpi
    from landscape.directions import load_directions
    from landscape.surface import check_evaluation, compute_surface
    from training.checkpoint import file_hash, load_probed_model
    from training.device import pick_device
    from training.presets import resolved, resolved_root
    from training.probe import load_probe

    comm = mpi.world()
    out = Path(out)
    dirs_path = directions_path(out, dir_file)
    sources = {"model2": model2, "model3": model3, "pca": pca, "dir_file": dir_file}

    def setup():
        xcoords = axis(x, "--x")
        ycoords = axis(y, "--y") if y is not None else None
        check_direction_choices(model2, model3, pca, dir_file, y is not None)
        check_positive(max_samples=max_samples, batch_size=batch_size, threads=threads, frames_per_video=frames_per_video)
        check_evaluation(autocast, bn)
        if curvature:
            check_positive(curvature_tol=curvature_tol, curvature_iter=curvature_iter)
        set_threads(threads, comm)
        dev = pick_device(device)
        model, ckpt = load_probed_model(checkpoint, dev)
        config = ckpt["config"]
        return xcoords, ycoords, dev, model, config, ckpt.get("metrics")

    xcoords, ycoords, dev, model, config, run_metrics = mpi.on_every_rank(comm, setup)
    data_spec = {"protocol": config["protocol"], "data": {**config["data"], **({"root": resolved_root(data)} if data else {})},
                 "max_samples": max_samples, **frames_spec(frames_per_video)}
    probe = None

    def prepare():
        """Rank 0: refuse a mismatched existing surface before any heavy work, make or reuse the
        directions, load the data first (so it fills the data cache alone)."""
        nonlocal probe
        from landscape.store import SurfaceStore, check_same_surface, read_store

        recipe = directions_recipe(sources, y is not None, dir_type, xnorm, xignore, ynorm, yignore, orthogonalize, seed,
                                   hessian_tol)
        provenance = {"checkpoint": resolved(checkpoint), "checkpoint_sha256": file_hash(checkpoint),
                      "method": str(config.get("method", "")), "protocol": str(config["protocol"]),
                      "directions": recipe, "data": data_spec, "dir_file": resolved(dirs_path)}
        if out.is_file():
            check_same_surface(read_store(out), SurfaceStore(out, xcoords, ycoords, provenance))
        probe = load_probe(config, dev, max_samples, batch_size, data=data, frames_per_video=frames_per_video)
        warn_unsettled("surface", probe, model, run_metrics)
        ensure_directions(model, recipe, provenance["checkpoint_sha256"], dirs_path, sources, probe)
        provenance["data_sha256"] = data_fingerprint(probe)
        return provenance

    provenance = mpi.on_root(comm, prepare)

    def load():
        directions = load_directions(dirs_path, model)
        if directions.y is None and ycoords is not None:
            raise FaslandError(f"direction file '{dirs_path}' holds only an x direction but --y was given; drop --y or pass a 2-D direction file")
        return directions, probe or load_probe(config, dev, max_samples, batch_size, data=data, frames_per_video=frames_per_video)

    directions, probe = mpi.on_every_rank(comm, load)
    measure = spec = None
    if curvature:
        from analysis.hessian import curvature_measure   # the Hessian lives in analysis; imported only when asked

        measure = curvature_measure(probe.loss_fn, probe.batches("train"), curvature_tol, curvature_iter, seed)
        spec = {"curvature": {"tol": curvature_tol, "max_iter": curvature_iter, "seed": seed, "data": "sources"}}
    return compute_surface(model, probe, directions, xcoords, ycoords if directions.y is not None else None, out,
                           provenance, comm=comm, autocast=autocast, bn=bn,
                           bn_inputs=[x for x, _ in probe.batches("train")] if bn == "recompute" else None,
                           measure=measure, measure_spec=spec)


def surface_summary(store, out, dir_file=None) -> str:
    """What `fasland surface` prints: points done, where the directions are, the projected path's extent."""
    text = f"surface: {out} ({int(store.done.sum())}/{store.size} points) directions: {directions_path(out, dir_file)}"
    if "proj_xcoord" in store.extra:
        px, py, ev = store.extra["proj_xcoord"], store.extra["proj_ycoord"], store.extra["explained_variance_ratio_"]
        text += (f"\ntrajectory on the plane: x in [{px.min():.3g}, {px.max():.3g}], y in [{py.min():.3g}, {py.max():.3g}] "
                 f"(explained variance {100 * ev[0]:.1f}% + {100 * ev[1]:.1f}%)")
    return text


def axis(spec, flag: str):
    """A grid axis from 'MIN:MAX:N' (landscape.surface.parse_axis) or from a sequence of coordinates."""
    import numpy as np

    from landscape.surface import parse_axis

    if isinstance(spec, str):
        return parse_axis(spec, flag)
    coords = np.asarray(spec, dtype=np.float64).ravel()
    if coords.size == 0 or not np.all(np.isfinite(coords)):
        raise FaslandError(f"{flag} needs at least one finite coordinate; pass MIN:MAX:N such as -1:1:51")
    return coords


def warn_unsettled(command: str, probe, model, run_metrics) -> None:
    """Say so on stderr when θ's BatchNorm running statistics have not settled (training.probe.unsettled_batchnorm)."""
    import sys

    from training.probe import unsettled_batchnorm

    warning = unsettled_batchnorm(probe, model, run_metrics)
    if warning:
        print(f"fasland {command}: warning: {warning}", file=sys.stderr, flush=True)


def data_fingerprint(probe) -> str:
    """sha256 of the probe's tensors (domains in name order): a surface never mixes two versions of the data."""
    import hashlib

    h = hashlib.sha256()
    for name in sorted(probe.domains):
        for t in probe.domains[name]:
            h.update(name.encode())
            h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def check_direction_choices(model2, model3, pca, dir_file, two_d: bool) -> None:
    """Combinations that cannot mean anything get one sentence each."""
    kinds = [f for f, v in (("--model2", model2), ("--pca", pca), ("--dir-file", dir_file)) if v]
    if len(kinds) > 1:
        raise FaslandError(f"{' and '.join(kinds)} each choose the directions; pass only one of them")
    if model3 and not two_d:
        raise FaslandError("--model3 sets the y direction; add --y MIN:MAX:N")
    if model3 and (pca or dir_file):
        raise FaslandError("--model3 cannot be combined with --pca or --dir-file, which already fix the y direction")
    if pca and not two_d:
        raise FaslandError("--pca gives a 2-D plane; add --y MIN:MAX:N")


def directions_recipe(sources: dict, two_d: bool, dir_type=None, xnorm="filter", xignore="biasbn", ynorm=None,
                      yignore=None, orthogonalize=False, seed=0, hessian_tol=1e-3) -> dict:
    """What fixes the directions (resume identity): the kind, its inputs' hashes, seed and normalization.
    `sources`: {"model2", "model3", "pca", "dir_file"} paths or None."""
    from training.checkpoint import file_hash

    model2, model3, pca, dir_file = (sources.get(k) for k in ("model2", "model3", "pca", "dir_file"))
    kind = dir_type or ("states" if model2 or model3 else "weights")
    ynorm, yignore = ynorm or xnorm, yignore or xignore
    if dir_file:
        if not Path(dir_file).is_file():
            raise FaslandError(f"--dir-file '{dir_file}' not found; pass an existing direction .h5 (to make new directions, drop --dir-file)")
        return {"kind": "file", "sha256": file_hash(dir_file), "dir_type": dir_type}
    if dir_type == "hessian":
        if model2 or model3 or pca:
            raise FaslandError("--dir-type hessian makes its own directions; drop --model2/--model3/--pca")
        return {"kind": "hessian", "dir_type": "weights", "seed": seed, "tol": hessian_tol, "ndim": 2 if two_d else 1,
                "x": {"norm": xnorm, "ignore": xignore}, **({"y": {"norm": ynorm, "ignore": yignore}} if two_d else {})}
    if pca:
        from training.checkpoint import trajectory_checkpoints
        files = trajectory_checkpoints(pca, at_least=3)
        return {"kind": "pca", "dir_type": kind, "ignore": xignore, "orthogonalize": False,
                "checkpoints": [[p.name, file_hash(p)] for p in files]}
    x = ({"kind": "interpolation", "to_sha256": file_hash(checked(model2, "--model2"))} if model2
         else {"kind": "random", "norm": xnorm, "ignore": xignore})
    recipe = {"dir_type": kind, "seed": seed, "x": x}
    if two_d:
        recipe["y"] = ({"kind": "interpolation", "to_sha256": file_hash(checked(model3, "--model3"))} if model3
                       else {"kind": "random", "norm": ynorm, "ignore": yignore})
        recipe["orthogonalize"] = bool(orthogonalize)
    return recipe


def checked(path, flag) -> str:
    if not Path(path).is_file():
        raise FaslandError(f"{flag} '{path}' not found; pass the checkpoint.pt of a run made by 'fasland train'")
    return path


def ensure_directions(model, recipe: dict, checkpoint_sha256: str, path: Path, sources: dict, probe=None) -> None:
    """Make the directions of `recipe` and save them to `path`, unless `path` already holds them.
    `sources`: the recipe's input paths {"model2", "model3", "pca"} (the recipe holds only their hashes);
    `probe`: the data of Hessian directions (its sources' loss)."""
    import json

    import torch

    from landscape.directions import (Directions, interpolation_direction, load_directions, orthogonalize,
                                      pca_directions, random_direction, save_directions)
    from training.checkpoint import load_model

    path = Path(path)
    if recipe.get("kind") == "file":
        load_directions(path, model, recipe.get("dir_type"))   # only checked: the file is used as it is
        return
    attrs = {"checkpoint_sha256": checkpoint_sha256}
    if path.is_file():
        try:
            import h5py
            with h5py.File(path, "r", locking=False) as f:
                same = f.attrs.get("recipe") == json.dumps(recipe, sort_keys=True) and f.attrs.get("checkpoint_sha256") == checkpoint_sha256
        except OSError:
            same = False
        if same:
            return
    dir_type = recipe.get("dir_type", "weights")
    if recipe.get("kind") == "pca":
        dirs = pca_directions(model, sources["pca"], dir_type, recipe["ignore"])
        dirs.recipe = recipe
    elif recipe.get("kind") == "hessian":
        from analysis.hessian import hessian_directions   # the Hessian lives in analysis; imported only when asked

        y = recipe.get("y", {})
        batches = [(xb.contiguous(), yb) for xb, yb in probe.batches("train")]
        dirs = hessian_directions(model, probe.loss_fn, batches, recipe["x"]["norm"], recipe["x"]["ignore"], recipe["tol"],
                                  recipe["seed"], ndim=recipe["ndim"], ynorm=y.get("norm"), yignore=y.get("ignore"))
        dirs.recipe = recipe
    else:
        g = torch.Generator().manual_seed(int(recipe["seed"]))

        def make(spec, other):
            if spec["kind"] == "interpolation":
                m2, _ = load_model(other, "cpu")
                return interpolation_direction(model, m2, dir_type)
            return random_direction(model, norm=spec["norm"], ignore=spec["ignore"], dir_type=dir_type, generator=g)

        dx = make(recipe["x"], sources.get("model2"))
        dy = make(recipe["y"], sources.get("model3")) if "y" in recipe else None
        if dy is not None and recipe.get("orthogonalize"):
            dy = orthogonalize(dx, dy)
        dirs = Directions(dx, dy, dir_type, recipe)
    save_directions(path, dirs, attrs)


def quick_plot(path) -> Path:
    """SURF.png beside SURF.h5: train/test loss and accuracy curves (1-D) or train_loss contours (2-D)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from landscape.store import read_store
    from training.checkpoint import atomic_write

    s = read_store(path)
    png = Path(path).with_suffix(".png")
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    if s.y is None:
        for name, style in (("train_loss", "b-"), ("test_loss", "b--")):
            if name in s.arrays:
                ax.plot(s.x, s.arrays[name], style, label=name)
        ax.set_xlabel("a"), ax.set_ylabel("loss")
        acc = ax.twinx()
        for name, style in (("train_acc", "r-"), ("test_acc", "r--")):
            if name in s.arrays:
                acc.plot(s.x, s.arrays[name], style, label=name)
        acc.set_ylabel("accuracy")
        fig.legend(loc="upper center", ncol=4, fontsize=8)
    else:
        z = s.arrays["train_loss"].T                 # contour(x, y, Z) wants Z[iy, ix]
        finite = z[np.isfinite(z)]
        if finite.size:
            top = np.percentile(finite, 90) if finite.size > 4 else finite.max()
            lo, hi = finite.min(), max(top, finite.min() + 1e-6)
            levels = np.unique(np.geomspace(lo, hi, 15) if lo > 0 else np.linspace(lo, hi, 15))   # dense near the minimum
            cs = ax.contour(s.x, s.y, np.where(np.isfinite(z), z, np.nan), levels=levels, cmap="viridis")
            ax.clabel(cs, cs.levels[::2], inline=True, fontsize=7, fmt="%.3g")
        if "proj_xcoord" in s.extra:
            ax.plot(s.extra["proj_xcoord"], s.extra["proj_ycoord"], "k.-", lw=1, ms=4, label="trajectory")
            ax.legend(fontsize=8)
        ax.set_xlabel("x"), ax.set_ylabel("y"), ax.set_title("train_loss")
    fig.tight_layout()
    atomic_write(png, lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    plt.close(fig)
    return png
