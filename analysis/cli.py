"""`fasland hessian`, `fasland conflicts` and `fasland study`: parsers and printing only; the work is
analysis.commands.hessian / .conflicts and analysis.study.study. Nothing heavy is imported here, so
`fasland --help` answers at once."""
import argparse

from analysis.sizes import LABELS, SETTINGS
from landscape.cli import probe_flags
from training.data.protocols import PROTOCOLS
from training.names import declared_hparams


def register(sub) -> None:
    """The analysis commands: hessian, conflicts, study."""
    p = sub.add_parser("hessian", help="top Hessian eigenvalues, trace and spectral density of a checkpoint's loss",
                       description="Sharpness of L(θ) on the probe (the checkpoint's source domains; eval mode): top-k "
                                   "eigenvalues by Lanczos (or PyHessian's power iteration), the trace by Hutchinson, the "
                                   "spectral density by stochastic Lanczos quadrature, λ_max per domain. `mpiexec -n N "
                                   "fasland hessian …` shards the probe over ranks. Rerunning reuses finished parts.")
    p.add_argument("--checkpoint", required=True, help="a checkpoint.pt written by 'fasland train'")
    p.add_argument("--top-k", type=int, default=1, help="how many of the largest eigenvalues")
    p.add_argument("--solver", default="lanczos", choices=["lanczos", "power"], help="the eigen-solver: Lanczos, or power iteration with deflation (PyHessian)")
    p.add_argument("--method", dest="solver", choices=["lanczos", "power"], default=argparse.SUPPRESS, help=argparse.SUPPRESS)   # the old name of --solver
    p.add_argument("--tol", type=float, default=1e-4, help="relative accuracy of the eigenvalues")
    p.add_argument("--max-iter", type=int, default=300, help="Hessian-vector products per eigenvalue search at most")
    p.add_argument("--bottom-k", type=int, default=0, help="also this many of the smallest eigenvalues (Lanczos), λ_min and |λ_min/λ_max|")
    p.add_argument("--trace", action="store_true", help="also the trace, with its standard error")
    p.add_argument("--trace-method", default="hutchinson", choices=["hutchinson", "hutch++"],
                   help="Hutchinson (default) or Hutch++ (fewer products where a few eigenvalues dominate; on a ResNet18 "
                        "it needed more, see bench/hessian.py)")
    p.add_argument("--trace-samples", type=int, default=100, help="Hessian-vector products for the trace at most (Hutchinson: Rademacher vectors); it stops once its standard error is 0.1%% of |trace|")
    p.add_argument("--density", action="store_true", help="also the spectral density (SLQ)")
    p.add_argument("--density-iter", type=int, default=100, help="Lanczos steps per density run")
    p.add_argument("--density-runs", type=int, default=1, help="SLQ runs (random start vectors)")
    p.add_argument("--per-domain", action="store_true", help="also λ_max of each source domain and of the target")
    p.add_argument("--per-block", action="store_true", help="also λ_max and trace of each top-level block's Hessian (stem, layer1…layer4, head)")
    p.add_argument("--per-block-trace", action=argparse.BooleanOptionalAction, default=True,
                   help="with --per-block, also each block's trace (trace-samples products per block)")
    p.add_argument("--sample-batches", type=int, default=0, metavar="B",
                   help="also the eigenvalues (and trace) on B disjoint probe subsets: mean, std, 95%% interval, and λ_max at 1, 2, 4, … samples")
    p.add_argument("--sample-growth", action=argparse.BooleanOptionalAction, default=True,
                   help="with --sample-batches, also λ_max (and trace) at 1, 2, 4, … samples (about twice the subsets' products)")
    p.add_argument("--hvp", default="double_backward", choices=["double_backward", "forward_over_reverse"],
                   help="how Hessian-vector products are taken (analysis.hessian.HVP_METHODS; the default is the faster)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random start and probe vectors")
    _result_flags(p, run_hessian)

    p = sub.add_parser("conflicts", help="per-domain gradient cosines at θ and at the SAM / GAC-FAS ascent points",
                       description="The k×k cosine matrix of the source domains' gradients, their norms and the conflict "
                                   "score (mean over pairs of max(0, −cos)) at θ, at SAM's ascent point and at each "
                                   "domain's GAC-FAS ascent point θ_i, with the alignment ⟨∇L(θ_i;S), ∇L(θ;S)⟩; with "
                                   "--trajectory also at every checkpoints/epoch_*.pt of a run. Eval mode, on the probe. "
                                   "`mpiexec -n N` spreads domains or checkpoints over ranks. Rerunning reuses finished parts.")
    p.add_argument("--checkpoint", default=None, help="a checkpoint.pt (default with --trajectory: RUN_DIR/checkpoint.pt if present)")
    p.add_argument("--at", default="both", choices=["theta", "ascent", "both"], help="θ only, or also the ascent points (ascent and both are the same)")
    g = declared_hparams("gacfas", "GACFAS")      # the registry's defaults, read without importing torch
    for flag, what in (("rho", "ascent radius ρ for SAM and GAC-FAS"), ("eta", "GAC-FAS η"), ("alpha", "GAC-FAS α")):
        p.add_argument(f"--{flag}", type=float, default=None, help=f"{what} (default: the checkpoint's, else GAC-FAS's {g[flag]})")
    p.add_argument("--adaptive", action="store_true", default=None, help="adaptive SAM (ASAM) ascent (default: the checkpoint's setting)")
    p.add_argument("--official-accumulation", action="store_true", default=None,
                   help="GAC-FAS ascent points by the released code's accumulation (default: the checkpoint's setting)")
    p.add_argument("--trajectory", default=None, metavar="RUN_DIR", help="also every RUN_DIR/checkpoints/epoch_*.pt")
    p.add_argument("--trajectory-at", default=None, choices=["theta", "ascent", "both"],
                   help="the points measured at each trajectory checkpoint (default: --at's)")
    p.add_argument("--interval-subsets", type=int, default=4, metavar="B",
                   help="95%% intervals of the cosines at θ from a bootstrap over B client subsets per domain (0: none)")
    _result_flags(p, run_conflicts)

    p = sub.add_parser("study", help="train methods side by side, then surfaces, sharpness, conflicts, views and a report",
                       description="The whole comparison in one command: trains each method (reusing finished runs), "
                                   "computes 1-D/2-D surfaces on shared directions, interpolations, the trajectory PCA "
                                   "plane, Hessian eigenvalues and trace, gradient conflicts over training, exports every "
                                   "view and writes report.md / report.html. Rerunning resumes.")
    p.add_argument("--protocol", default=None, choices=[*PROTOCOLS, "all"],
                   help="a protocol, or all: the four leave-one-out ones (default: ICM2O, or the --checkpoints' own)")
    p.add_argument("--checkpoints", default=None, metavar="NAME=CKPT[,NAME=CKPT...]",
                   help="analyse these models (made by fasland train or fasland import) instead of training --methods")
    p.add_argument("--methods", default="erm,sam,gacfas", help="comma-separated, of: " + ", ".join(LABELS))
    p.add_argument("--preset", default="demo", choices=sorted(SETTINGS), help="training recipe and analysis sizes")
    p.add_argument("--sizes", default=None, metavar="KEY=VALUE[,KEY=VALUE...]",
                   help="override the preset's analysis sizes, e.g. x2d=-1:1:5,max_samples=8,max_iter=5; keys: "
                        + ", ".join(SETTINGS["demo"]) + " (grids are MIN:MAX:N)")
    p.add_argument("--data", default=None, help="'synth' (default) or the root of the real datasets")
    p.add_argument("--config", default=None, help="YAML overriding the training preset's sections for every method")
    p.add_argument("--device", default="auto", help="auto (CUDA where present), cpu, cuda, cuda:N")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads of every step (default: each command's own)")
    p.add_argument("--seeds", default=None, metavar="S[,S...]",
                   help="training seeds: every method trained and analysed once per seed; one seed keeps the layout "
                        "DIR/<method>/, several give DIR/seed_S/<method>/ and DIR/report.md with mean ± std across seeds")
    p.add_argument("--keep-checkpoints", type=int, default=None, metavar="N",
                   help="keep each run's trajectory checkpoint of every N-th epoch (epoch 0 and the last always; the PCA "
                        "plane needs 3); default: the preset's")
    p.add_argument("--figures", default=None, metavar="DIR", help="also copy the headline figures into DIR (make figures)")
    p.add_argument("--out", required=True, help="study directory")
    p.set_defaults(run=run_study)


def _result_flags(p, run) -> None:
    """How a result command's parser ends: the probe flags, --out FILE.json and the function it runs."""
    probe_flags(p, "probe (data and protocol default to the checkpoint's)")
    p.add_argument("--out", required=True, help="result file FILE.json")
    p.set_defaults(run=run)


def _probe_args(args) -> dict:
    return {"data": args.data, "max_samples": args.max_samples, "batch_size": args.batch_size, "device": args.device,
            "threads": args.threads, "frames_per_video": args.frames_per_video}


def run_hessian(args) -> int:
    from analysis.commands import hessian, hessian_summary

    r = hessian(args.checkpoint, args.out, top_k=args.top_k, solver=args.solver, tol=args.tol, max_iter=args.max_iter,
                trace=args.trace, trace_samples=args.trace_samples, density=args.density, density_iter=args.density_iter,
                density_runs=args.density_runs, per_domain=args.per_domain, hvp=args.hvp, seed=args.seed,
                bottom_k=args.bottom_k, per_block=args.per_block, per_block_trace=args.per_block_trace,
                sample_batches=args.sample_batches, sample_growth=args.sample_growth, trace_method=args.trace_method, **_probe_args(args))
    if _is_root():
        print(hessian_summary(r, args.out))
    return 0


def _is_root() -> bool:
    from landscape import mpi

    return mpi.rank(mpi.world()) == 0


def run_conflicts(args) -> int:
    from analysis.commands import conflicts, conflicts_summary

    r = conflicts(args.checkpoint, args.out, at=args.at, rho=args.rho, eta=args.eta, alpha=args.alpha,
                  adaptive=args.adaptive, official_accumulation=args.official_accumulation, trajectory=args.trajectory,
                  trajectory_at=args.trajectory_at, interval_subsets=args.interval_subsets, **_probe_args(args))
    if _is_root():
        print(conflicts_summary(r, args.out))
    return 0


def run_study(args) -> int:
    import time

    from analysis.study import study

    started = time.time()
    reports = study(args.out, protocol=args.protocol, methods=args.methods, preset=args.preset, sizes=args.sizes,
                    data=args.data, config=args.config, device=args.device, threads=args.threads, figures=args.figures,
                    seeds=args.seeds, checkpoints=args.checkpoints, keep_checkpoints=args.keep_checkpoints)
    print(f"study finished in {time.time() - started:.0f} s; report: {', '.join(str(r) for r in reports)}")
    return 0
