"""`fasland surface`: the parser; the work is landscape.commands.surface (fasland/cli.py dispatches)."""
import argparse
import re


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
    g.add_argument("--dir-type", default=None, choices=["weights", "states", "hessian"], help="weights = parameters; states = state_dict incl. BN running statistics (default: states with --model2/--model3, so a = 1 is exactly model2; weights otherwise); hessian = x, y along the top two Hessian eigenvectors of the source loss (normalized by --xnorm/--ynorm, eigenvalues stored as attributes)")
    g.add_argument("--xnorm", default="filter", choices=["filter", "layer", "weight", "none"])
    g.add_argument("--xignore", default="biasbn", choices=["biasbn", "none"], help="biasbn zeroes 1-D tensors (bias, BN); none sets them to θ")
    g.add_argument("--ynorm", default=None, choices=["filter", "layer", "weight", "none"], help="default: --xnorm")
    g.add_argument("--yignore", default=None, choices=["biasbn", "none"], help="default: --xignore")
    g.add_argument("--orthogonalize", action="store_true", help="make the y direction orthogonal to x (Gram–Schmidt, norm kept)")
    g.add_argument("--seed", type=int, default=0, help="seed of the random directions (CPU generator: same on every device)")
    d = probe_flags(p, "evaluation (data and protocol default to the checkpoint's)")
    d.add_argument("--autocast", default=None, choices=["bf16", "fp16"], help="evaluate under autocast in this precision (default: float32 on every device; recorded in the provenance)")
    d.add_argument("--bn", default="theta", choices=["theta", "recompute"], help="BatchNorm statistics at each point: θ's (default, as the reference) or re-estimated from the sources' probe images")
    d.add_argument("--curvature", action="store_true", help="also λ_max, λ_min and |λ_min/λ_max| of the source loss at each point (datasets lambda_max, lambda_min, convexity_ratio)")
    d.add_argument("--curvature-iter", type=int, default=20, help="Hessian-vector products per point at most for --curvature")
    d.add_argument("--curvature-tol", type=float, default=1e-2, help="error bound of λ_max/λ_min per point, relative to max(|λ_max|, |λ_min|)")
    p.add_argument("--plot", action="store_true", help="also write a quick PNG next to the .h5")
    p.add_argument("--out", required=True, help="the surface file SURF.h5 (its directions go to SURF.dirs.h5 unless --dir-file)")
    p.set_defaults(run=run_surface)
    # let `--x -1:1:51` through as a value (argparse otherwise takes "-1:1:51" for an option)
    p._negative_number_matcher = re.compile(r"^-\d+$|^-\d*\.\d+$|^-[\d.eE+-]*:[\d.eE+:-]*$")


def run_surface(args) -> int:
    from landscape.commands import quick_plot, surface, surface_summary

    store = surface(args.checkpoint, args.out, args.x, args.y, model2=args.model2, model3=args.model3, pca=args.pca,
                    dir_file=args.dir_file, dir_type=args.dir_type, xnorm=args.xnorm, xignore=args.xignore,
                    ynorm=args.ynorm, yignore=args.yignore, orthogonalize=args.orthogonalize, seed=args.seed,
                    data=args.data, max_samples=args.max_samples, batch_size=args.batch_size, device=args.device,
                    threads=args.threads, autocast=args.autocast, bn=args.bn, curvature=args.curvature,
                    curvature_tol=args.curvature_tol, curvature_iter=args.curvature_iter,
                    frames_per_video=args.frames_per_video)
    if store is not None:      # None on MPI ranks other than 0
        if args.plot:
            print(f"plot: {quick_plot(args.out)}")
        print(surface_summary(store, args.out, args.dir_file))
    return 0


def max_samples(text: str) -> int | None:
    """--max-samples N, or 'all' (None: every image, on real data frames-per-video × videos)."""
    if text == "all":
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is neither a whole number nor 'all'; pass e.g. --max-samples 256") from None


def probe_flags(p, title: str):
    """The probe's flags, shared by surface, hessian and conflicts; returns the group for more."""
    d = p.add_argument_group(title)
    d.add_argument("--data", default=None, help="override the data root of the checkpoint's config ('synth' or a folder)")
    d.add_argument("--max-samples", type=max_samples, default=256, help="images per domain in the probe, or 'all'")
    d.add_argument("--frames-per-video", type=int, default=1, help="real data: frames of each video in the probe (seeded)")
    d.add_argument("--batch-size", type=int, default=256)
    d.add_argument("--device", default="auto", help="auto (CUDA where present), cpu, cuda, cuda:N; under MPI rank r takes GPU r mod GPUs")
    d.add_argument("--threads", type=int, default=None, help="torch CPU threads per rank (default: the node's cores / ranks on it)")
    return d
