"""`fasland surface` (see analysis/cli.py for the dispatcher)."""
import os
import re
from pathlib import Path

from training.errors import FaslandError


def register(sub) -> None:
    p = sub.add_parser("surface", help="1-D/2-D loss surface around a checkpoint, every domain's metrics per point",
                       description="f(a, b) = metrics of θ + a·d1 + b·d2 on a grid, stored in an HDF5 file the reference "
                                   "loss-landscape scripts read. Rerunning resumes; `mpiexec -n N fasland surface …` splits the points "
                                   "(across nodes: `mpiexec -f HOSTFILE -n N …`, or `mpiexec -n $SLURM_NTASKS …` inside a Slurm allocation).")
    p.add_argument("--checkpoint", required=True, help="the model θ: a checkpoint.pt written by 'fasland train'")
    p.add_argument("--x", required=True, help="x grid MIN:MAX:N, e.g. -1:1:51")
    p.add_argument("--y", default=None, help="y grid MIN:MAX:N for a 2-D surface")
    g = p.add_argument_group("directions (default: filter-normalized random, seeded)")
    g.add_argument("--model2", default=None, help="x direction = θ(model2) − θ: the interpolation from the checkpoint (a=0) to model2 (a=1)")
    g.add_argument("--model3", default=None, help="y direction = θ(model3) − θ (2-D plane through three checkpoints)")
    g.add_argument("--pca", default=None, metavar="RUN_DIR", help="x, y = the top-2 PCA directions of RUN_DIR/checkpoints/epoch_*.pt relative to the checkpoint; the path is projected and stored")
    g.add_argument("--dir-file", default=None, help="reuse the directions of this .h5 (e.g. SURF.dirs.h5 of an earlier surface, or a reference direction file)")
    g.add_argument("--dir-type", default=None, choices=["weights", "states"], help="weights = parameters; states = state_dict incl. BN running statistics (default: states with --model2/--model3, so a = 1 is exactly model2; weights otherwise)")
    g.add_argument("--xnorm", default="filter", choices=["filter", "layer", "weight", "none"])
    g.add_argument("--xignore", default="biasbn", choices=["biasbn", "none"], help="biasbn zeroes 1-D tensors (bias, BN); none sets them to θ")
    g.add_argument("--ynorm", default=None, choices=["filter", "layer", "weight", "none"], help="default: --xnorm")
    g.add_argument("--yignore", default=None, choices=["biasbn", "none"], help="default: --xignore")
    g.add_argument("--orthogonalize", action="store_true", help="make the y direction orthogonal to x (Gram–Schmidt, norm kept)")
    g.add_argument("--seed", type=int, default=0, help="seed of the random directions (CPU generator: same on every device)")
    d = probe_flags(p, "evaluation (data and protocol default to the checkpoint's)")
    d.add_argument("--no-autocast", action="store_true", help="evaluate in float32 on CUDA too (autocast is used on CUDA only)")
    p.add_argument("--plot", action="store_true", help="also write a quick PNG next to the .h5")
    p.add_argument("--out", required=True, help="the surface file SURF.h5 (its directions go to SURF.dirs.h5 unless --dir-file)")
    p.set_defaults(run=run_surface)
    # let `--x -1:1:51` through as a value (argparse otherwise takes "-1:1:51" for an option)
    p._negative_number_matcher = re.compile(r"^-\d+$|^-\d*\.\d+$|^-[\d.eE+-]*:[\d.eE+:-]*$")


def run_surface(args) -> int:
    """Rank 0 checks the output, makes the directions and loads the data first; then every rank loads
    them; then the points are shared out. A failure on any rank in these steps ends every rank."""
    from landscape import mpi
    from landscape.directions import load_directions
    from landscape.surface import compute_surface, parse_axis
    from training.checkpoint import file_hash, load_model
    from training.device import pick_device
    from training.probe import load_probe

    comm = mpi.world()
    out = Path(args.out)
    dirs_path = Path(args.dir_file) if args.dir_file else out.with_name(out.stem + ".dirs.h5")

    def setup():
        xcoords = parse_axis(args.x, "--x")
        ycoords = parse_axis(args.y, "--y") if args.y is not None else None
        check_flags(args)
        set_threads(args, comm)
        device = pick_device(args.device)
        model, ckpt = load_model(args.checkpoint, device)
        config = ckpt["config"]
        if not isinstance(config, dict) or "protocol" not in config or "data" not in config:
            raise FaslandError(f"checkpoint '{args.checkpoint}' has no protocol/data in its config; pass a checkpoint written by 'fasland train'")
        return xcoords, ycoords, device, model, config, ckpt.get("metrics")

    xcoords, ycoords, device, model, config, run_metrics = mpi.on_every_rank(comm, setup)
    data_spec = {"protocol": config["protocol"], "data": {**config["data"], **({"root": args.data} if args.data else {})},
                 "max_samples": args.max_samples}
    probe = None

    def prepare():
        """Rank 0: refuse a mismatched existing surface before any heavy work, make or reuse the
        directions, load the data first (so it fills the data cache alone)."""
        nonlocal probe
        from landscape.store import SurfaceStore, check_same_surface, read_store

        recipe = directions_recipe(args, file_hash)
        provenance = {"checkpoint": str(args.checkpoint), "checkpoint_sha256": file_hash(args.checkpoint),
                      "method": str(config.get("method", "")), "protocol": str(config["protocol"]),
                      "directions": recipe, "data": data_spec, "dir_file": str(dirs_path)}
        if out.is_file():
            check_same_surface(read_store(out), SurfaceStore(out, xcoords, ycoords, provenance))
        ensure_directions(args, model, recipe, provenance["checkpoint_sha256"], dirs_path)
        probe = load_probe(config, device, args.max_samples, args.batch_size, data=args.data)
        warn_unsettled("surface", probe, model, run_metrics)
        provenance["data_sha256"] = data_fingerprint(probe)
        return provenance

    provenance = mpi.on_root(comm, prepare)

    def load():
        directions = load_directions(dirs_path, model)
        if directions.y is None and ycoords is not None:
            raise FaslandError(f"direction file '{dirs_path}' holds only an x direction but --y was given; drop --y or pass a 2-D direction file")
        return directions, probe or load_probe(config, device, args.max_samples, args.batch_size, data=args.data)

    directions, probe = mpi.on_every_rank(comm, load)
    store = compute_surface(model, probe, directions, xcoords, ycoords if directions.y is not None else None, out,
                            provenance, comm=comm, autocast=False if args.no_autocast else None)
    if mpi.rank(comm) == 0:
        if args.plot:
            print(f"plot: {quick_plot(out)}")
        print(f"surface: {out} ({int(store.done.sum())}/{store.size} points) directions: {dirs_path}")
        if "proj_xcoord" in store.extra:
            px, py = store.extra["proj_xcoord"], store.extra["proj_ycoord"]
            print(f"trajectory on the plane: x in [{px.min():.3g}, {px.max():.3g}], y in [{py.min():.3g}, {py.max():.3g}] "
                  f"(explained variance {100 * store.extra['explained_variance_ratio_'][0]:.1f}% + {100 * store.extra['explained_variance_ratio_'][1]:.1f}%)")
    return 0


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


def check_flags(args) -> None:
    """Combinations that cannot mean anything get one sentence each."""
    kinds = [f for f, v in (("--model2", args.model2), ("--pca", args.pca), ("--dir-file", args.dir_file)) if v]
    if len(kinds) > 1:
        raise FaslandError(f"{' and '.join(kinds)} each choose the directions; pass only one of them")
    if args.model3 and args.y is None:
        raise FaslandError("--model3 sets the y direction; add --y MIN:MAX:N")
    if args.model3 and (args.pca or args.dir_file):
        raise FaslandError("--model3 cannot be combined with --pca or --dir-file, which already fix the y direction")
    if args.pca and args.y is None:
        raise FaslandError("--pca gives a 2-D plane; add --y MIN:MAX:N")
    check_positive(args, ("max_samples", "batch_size", "threads"))


def probe_flags(p, title: str):
    """The probe's flags, shared by surface, hessian and conflicts; returns the group for more."""
    d = p.add_argument_group(title)
    d.add_argument("--data", default=None, help="override the data root of the checkpoint's config ('synth' or a folder)")
    d.add_argument("--max-samples", type=int, default=256, help="images per domain in the probe")
    d.add_argument("--batch-size", type=int, default=256)
    d.add_argument("--device", default="auto", help="auto (CUDA where present), cpu, cuda, cuda:N; under MPI rank r takes GPU r mod GPUs")
    d.add_argument("--threads", type=int, default=None, help="torch CPU threads per rank (default: the node's cores / ranks on it)")
    return d


def set_threads(args, comm) -> None:
    """--threads, else this node's cores shared by the MPI ranks on it."""
    import torch

    from landscape import mpi

    torch.set_num_threads(args.threads or max(1, (os.cpu_count() or 1) // (mpi.local_ranks() if comm else 1)))


EXAMPLES = {"max_samples": 256, "batch_size": 256, "threads": 1}


def check_positive(args, names) -> None:
    """Each of these flags, when given, is > 0."""
    for name in names:
        value = getattr(args, name, None)
        if value is not None and value <= 0:
            flag = name.replace("_", "-")
            raise FaslandError(f"--{flag} {value} must be positive; pass e.g. --{flag} {EXAMPLES.get(name, 1)}")


def directions_recipe(args, file_hash) -> dict:
    """What fixes the directions (resume identity): the kind, its inputs' hashes, seed and normalization."""
    dir_type = args.dir_type or ("states" if args.model2 or args.model3 else "weights")
    ynorm, yignore = args.ynorm or args.xnorm, args.yignore or args.xignore
    if args.dir_file:
        if not Path(args.dir_file).is_file():
            raise FaslandError(f"--dir-file '{args.dir_file}' not found; pass an existing direction .h5 (to make new directions, drop --dir-file)")
        return {"kind": "file", "sha256": file_hash(args.dir_file), "dir_type": args.dir_type}
    if args.pca:
        from training.checkpoint import trajectory_checkpoints
        files = trajectory_checkpoints(args.pca, at_least=3)
        return {"kind": "pca", "dir_type": dir_type, "ignore": args.xignore, "orthogonalize": False,
                "checkpoints": [[p.name, file_hash(p)] for p in files]}
    x = ({"kind": "interpolation", "to_sha256": file_hash(checked(args.model2, "--model2"))} if args.model2
         else {"kind": "random", "norm": args.xnorm, "ignore": args.xignore})
    recipe = {"dir_type": dir_type, "seed": args.seed, "x": x}
    if args.y is not None:
        recipe["y"] = ({"kind": "interpolation", "to_sha256": file_hash(checked(args.model3, "--model3"))} if args.model3
                       else {"kind": "random", "norm": ynorm, "ignore": yignore})
        recipe["orthogonalize"] = bool(args.orthogonalize)
    return recipe


def checked(path, flag) -> str:
    if not Path(path).is_file():
        raise FaslandError(f"{flag} '{path}' not found; pass the checkpoint.pt of a run made by 'fasland train'")
    return path


def ensure_directions(args, model, recipe: dict, checkpoint_sha256: str, path: Path) -> None:
    """Make the directions of `recipe` and save them to `path`, unless `path` already holds them."""
    import json

    import torch

    from landscape.directions import (Directions, interpolation_direction, load_directions, orthogonalize,
                                      pca_directions, random_direction, save_directions)
    from training.checkpoint import load_model

    if recipe.get("kind") == "file":
        load_directions(path, model, args.dir_type)   # only checked: the file is used as it is
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
        dirs = pca_directions(model, args.pca, dir_type, args.xignore)
        dirs.recipe = recipe
    else:
        g = torch.Generator().manual_seed(int(args.seed))

        def make(spec, other, norm_ignore):
            if spec["kind"] == "interpolation":
                m2, _ = load_model(other, "cpu")
                return interpolation_direction(model, m2, dir_type)
            return random_direction(model, norm=norm_ignore[0], ignore=norm_ignore[1], dir_type=dir_type, generator=g)

        x = make(recipe["x"], args.model2, (args.xnorm, args.xignore))
        y = make(recipe["y"], args.model3, (args.ynorm or args.xnorm, args.yignore or args.xignore)) if "y" in recipe else None
        if y is not None and recipe.get("orthogonalize"):
            y = orthogonalize(x, y)
        dirs = Directions(x, y, dir_type, recipe)
    save_directions(path, dirs, attrs)


def quick_plot(path) -> Path:
    """SURF.png beside SURF.h5: train/test loss and accuracy curves (1-D) or train_loss contours (2-D)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from landscape.store import grid_view, read_store
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
        z = grid_view(s.arrays["train_loss"], len(s.x), len(s.y))
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
