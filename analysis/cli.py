"""`fasland`: one console script; each package registers its own subcommands."""
import argparse
import sys

from landscape.cli import check_positive, probe_flags, set_threads, warn_unsettled
from training.errors import FaslandError


def register(sub) -> None:
    """The analysis commands: hessian, conflicts, study."""
    p = sub.add_parser("hessian", help="top Hessian eigenvalues, trace and spectral density of a checkpoint's loss",
                       description="Sharpness of L(θ) on the probe (the checkpoint's source domains; eval mode): top-k "
                                   "eigenvalues by Lanczos (or PyHessian's power iteration), the trace by Hutchinson, the "
                                   "spectral density by stochastic Lanczos quadrature, λ_max per domain. `mpiexec -n N "
                                   "fasland hessian …` shards the probe over ranks. Rerunning reuses finished parts.")
    p.add_argument("--checkpoint", required=True, help="a checkpoint.pt written by 'fasland train'")
    p.add_argument("--top-k", type=int, default=1, help="how many of the largest eigenvalues")
    p.add_argument("--method", default="lanczos", choices=["lanczos", "power"], help="lanczos (default) or power iteration with deflation (PyHessian)")
    p.add_argument("--tol", type=float, default=1e-4, help="relative accuracy of the eigenvalues")
    p.add_argument("--max-iter", type=int, default=300, help="Hessian-vector products per eigenvalue search at most")
    p.add_argument("--trace", action="store_true", help="also the trace (Hutchinson, with its standard error)")
    p.add_argument("--trace-samples", type=int, default=50, help="Rademacher vectors for the trace")
    p.add_argument("--density", action="store_true", help="also the spectral density (SLQ)")
    p.add_argument("--density-iter", type=int, default=50, help="Lanczos steps per density run")
    p.add_argument("--density-runs", type=int, default=1, help="SLQ runs (random start vectors)")
    p.add_argument("--per-domain", action="store_true", help="also λ_max of each source domain and of the target")
    p.add_argument("--hvp", default="double_backward", choices=["double_backward", "forward_over_reverse"],
                   help="how Hessian-vector products are taken (analysis.hessian.HVP_METHODS; the default is the faster)")
    p.add_argument("--seed", type=int, default=0)
    _probe_flags(p)
    p.add_argument("--out", required=True, help="result file FILE.json")
    p.set_defaults(run=run_hessian)

    p = sub.add_parser("conflicts", help="per-domain gradient cosines at θ and at the SAM / GAC-FAS ascent points",
                       description="The k×k cosine matrix of the source domains' gradients, their norms and the conflict "
                                   "score (mean over pairs of max(0, −cos)) at θ, at SAM's ascent point and at each "
                                   "domain's GAC-FAS ascent point θ_i, with the alignment ⟨∇L(θ_i;S), ∇L(θ;S)⟩; with "
                                   "--trajectory also at every checkpoints/epoch_*.pt of a run. Eval mode, on the probe. "
                                   "`mpiexec -n N` spreads domains or checkpoints over ranks. Rerunning reuses finished parts.")
    p.add_argument("--checkpoint", default=None, help="a checkpoint.pt (default with --trajectory: RUN_DIR/checkpoint.pt if present)")
    p.add_argument("--at", default="both", choices=["theta", "ascent", "both"], help="θ only, or also the ascent points (ascent and both are the same)")
    p.add_argument("--rho", type=float, default=None, help="ascent radius ρ for SAM and GAC-FAS (default: the checkpoint's, else 0.1)")
    p.add_argument("--eta", type=float, default=None, help="GAC-FAS η (default: the checkpoint's, else 0.0)")
    p.add_argument("--alpha", type=float, default=None, help="GAC-FAS α (default: the checkpoint's, else 0.0002)")
    p.add_argument("--adaptive", action="store_true", default=None, help="adaptive SAM (ASAM) ascent (default: the checkpoint's setting)")
    p.add_argument("--official-accumulation", action="store_true", default=None,
                   help="GAC-FAS ascent points by the released code's accumulation (default: the checkpoint's setting)")
    p.add_argument("--trajectory", default=None, metavar="RUN_DIR", help="also every RUN_DIR/checkpoints/epoch_*.pt")
    _probe_flags(p)
    p.add_argument("--out", required=True, help="result file FILE.json")
    p.set_defaults(run=run_conflicts)


# ---- hessian and conflicts commands (heavy imports stay inside the functions: `fasland --help` is quick) ----

def _probe_flags(p) -> None:
    probe_flags(p, "probe (data and protocol default to the checkpoint's)")


def _read_previous(path) -> dict:
    """An earlier result at `path` to resume from, or {} (missing or unreadable: start afresh)."""
    import json

    try:
        with open(path) as f:
            data = json.load(f)
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def write_json(path, obj) -> None:
    """JSON to a temporary file beside `path`, then renamed over it: a kill never leaves a torn file."""
    import json

    from training.checkpoint import atomic_write

    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(obj, indent=1)))


def check_out(path, command: str) -> None:
    """Before any work: --out must be a file we may write, and an existing file there must be an earlier
    result of this command (it is resumed), never someone else's file (it would be replaced)."""
    import json
    import os
    from pathlib import Path

    p = Path(path)
    if p.is_dir():
        raise FaslandError(f"--out '{path}' is a folder; pass a file name such as {p / (command + '.json')}")
    folder = p.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise FaslandError(f"cannot write '{path}': '{folder}' is a file, not a folder; choose another --out")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise FaslandError(f"cannot write '{path}' (permission denied in '{folder}'); choose a writable output folder for --out")
    if p.exists():
        try:
            previous = json.loads(p.read_text())
        except (OSError, ValueError):
            previous = None
        if not isinstance(previous, dict) or previous.get("command") != command:
            raise FaslandError(f"'{path}' exists and is not a result of 'fasland {command}'; choose another --out or remove that file")


def _setup(args, checkpoint, command: str):
    """On every rank: threads, device, the model θ (eval) and the probe, rank 0 first (it fills the data cache);
    rank 0 checks --out before that. Returns (world, device, model, ckpt, probe, data_spec)."""
    from analysis.mpi_reduce import world as mpi_world
    from landscape import mpi
    from training.checkpoint import load_model
    from training.device import pick_device
    from training.probe import load_probe

    w = mpi_world()
    check_positive(args, ("max_samples", "batch_size", "threads"))
    mpi.on_root(w.comm, lambda: check_out(args.out, command))

    def load():
        set_threads(args, w.comm)
        device = pick_device(args.device)
        model, ckpt = load_model(checkpoint, device)
        config = ckpt["config"]
        if not isinstance(config, dict) or "protocol" not in config or "data" not in config:
            raise FaslandError(f"checkpoint '{checkpoint}' has no protocol/data in its config; pass a checkpoint written by 'fasland train'")
        return device, model, ckpt

    device, model, ckpt = mpi.on_every_rank(w.comm, load)
    config = ckpt["config"]
    probe = None

    def load_data():
        nonlocal probe
        probe = probe or load_probe(config, device, args.max_samples, args.batch_size, data=args.data)

    mpi.on_root(w.comm, load_data)          # rank 0 alone first: it fills the data cache
    mpi.on_every_rank(w.comm, load_data)
    if w.rank == 0:
        warn_unsettled(command, probe, model, ckpt.get("metrics"))
    data_spec = {"protocol": config["protocol"], "data": {**config["data"], **({"root": args.data} if args.data else {})},
                 "max_samples": args.max_samples, "batch_size": args.batch_size, "bn": probe.bn,
                 "sources": list(probe.sources), "target": probe.target,
                 "samples": {d: int(len(y)) for d, (_, y) in probe.domains.items()}}
    return w, device, model, ckpt, probe, data_spec


def _bar(w, total, desc):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="hvp", leave=False, disable=w.rank != 0, dynamic_ncols=True)


def run_hessian(args) -> int:
    """Sections (eigenvalues, trace, density, per_domain λ_max) are computed in turn and the JSON rewritten
    after each; a section already in the file with the same checkpoint, probe and settings is reused."""
    import time

    from analysis import hessian as hs
    from analysis.mpi_reduce import shard
    from training.checkpoint import file_hash
    from training.provenance import versions

    check_positive(args, ("top_k", "tol", "max_iter", "trace_samples", "density_iter", "density_runs"))
    if args.trace and args.trace_samples < 2:
        raise FaslandError(f"--trace-samples {args.trace_samples} is too few for a standard error; pass at least 2")
    w, device, model, ckpt, probe, data_spec = _setup(args, args.checkpoint, "hessian")
    sha = file_hash(args.checkpoint)
    key = {"checkpoint_sha256": sha, "data": data_spec}
    previous = _read_previous(args.out) if w.rank == 0 else {}
    previous = w.agree(previous if previous.get("key") == key else {})
    result = {
        "command": "hessian", "method": ckpt["config"].get("method"), "checkpoint": str(args.checkpoint), "key": key,
        "provenance": {"checkpoint": str(args.checkpoint), "checkpoint_sha256": sha, "epoch": ckpt.get("epoch"),
                       "data": data_spec, "seed": args.seed, "hvp": args.hvp, "mpi_ranks": w.size, "device": str(device),
                       "versions": versions()},
        "sections": {},
    }
    eig = {"top_k": args.top_k, "method": args.method, "tol": args.tol, "max_iter": args.max_iter, "seed": args.seed}
    wanted = [("eigenvalues", eig)]
    if args.trace:
        wanted.append(("trace", {"n_samples": args.trace_samples, "seed": args.seed}))
    if args.density:
        wanted.append(("density", {"n_iter": args.density_iter, "n_runs": args.density_runs, "seed": args.seed}))
    if args.per_domain:
        wanted += [(f"per_domain/{d}", {**eig, "top_k": 1}) for d in (*probe.sources, probe.target)]
    # keep what an earlier run of this checkpoint and probe computed, settings and all
    for name, settings in previous.get("sections", {}).items():
        result["sections"][name] = settings
        _copy_section(previous, result, name)

    def operator(which):
        # contiguous images: double backward through convolutions is ~30% slower on channels_last on CPU
        batches = [(x.contiguous(), y) for x, y in shard(probe.batches(which), w.rank, w.size)]
        return hs.Hessian(model, probe.loss_fn, batches, args.hvp, w)

    def save():
        if w.rank == 0:
            write_json(args.out, result)

    for name, settings in wanted:
        if result["sections"].get(name, {}).get("settings") == settings:
            continue
        started = time.perf_counter()
        if name == "eigenvalues":
            H = operator("train")
            H.progress = bar = _bar(w, args.max_iter * (args.top_k if args.method == "power" else 1), f"top-{args.top_k} eigenvalues")
            result["eigenvalues"] = hs.top_eigenvalues(H, args.top_k, args.tol, args.method, args.seed, args.max_iter)
            result["train_loss"] = H.loss()
        elif name == "trace":
            H = operator("train")
            H.progress = bar = _bar(w, args.trace_samples, "trace")
            t = hs.trace_estimate(H, args.trace_samples, tol=0.0, seed=args.seed)
            result["trace"] = {"mean": t.mean, "stderr": t.stderr, "n_samples": len(t.samples), "samples": t.samples}
        elif name == "density":
            H = operator("train")
            H.progress = bar = _bar(w, args.density_iter * args.density_runs, "density")
            nodes, weights = hs.slq(H, args.density_iter, args.density_runs, args.seed)
            grid, density, sigma = hs.broaden(nodes, weights)
            result["density"] = {"grid": grid.tolist(), "density": density.tolist(), "sigma": sigma,
                                 "nodes": nodes, "weights": weights}
        else:
            d = name.split("/", 1)[1]
            H = operator(d)
            H.progress = bar = _bar(w, args.max_iter, f"λ_max {d}")
            lam = hs.top_eigenvalues(H, 1, args.tol, args.method, args.seed, args.max_iter)[0]
            result.setdefault("per_domain", {})[d] = {"lambda_max": lam, "role": "target" if d == probe.target else "source",
                                                     "samples": data_spec["samples"][d]}
        bar.close()
        result["sections"][name] = {"settings": settings, "hvps": H.calls, "seconds": round(time.perf_counter() - started, 3)}
        del H
        save()
    save()
    if w.rank == 0:
        _print_hessian(result, args.out)
    return 0


def _copy_section(previous: dict, result: dict, name: str) -> None:
    if name.startswith("per_domain/"):
        d = name.split("/", 1)[1]
        if d in previous.get("per_domain", {}):
            result.setdefault("per_domain", {})[d] = previous["per_domain"][d]
        return
    for key in {"eigenvalues": ("eigenvalues", "train_loss")}.get(name, (name,)):
        if key in previous:
            result[key] = previous[key]


def _print_hessian(r: dict, out) -> None:
    print(f"Hessian of {r['checkpoint']} ({r['provenance']['data']['protocol']}, "
          f"{sum(r['provenance']['data']['samples'][d] for d in r['provenance']['data']['sources'])} source images, eval mode)")
    rows = [(f"λ_{i + 1}", f"{v:.6g}") for i, v in enumerate(r.get("eigenvalues", []))]
    if "trace" in r:
        rows.append(("trace", f"{r['trace']['mean']:.6g} ± {r['trace']['stderr']:.2g} ({r['trace']['n_samples']} samples)"))
    if "density" in r:
        nodes = [x for run in r["density"]["nodes"] for x in run]
        rows.append(("density", f"SLQ nodes in [{min(nodes):.4g}, {max(nodes):.4g}], σ = {r['density']['sigma']:.3g}"))
    for d, v in r.get("per_domain", {}).items():
        rows.append((f"λ_max {d} ({v['role']})", f"{v['lambda_max']:.6g}"))
    width = max(len(a) for a, _ in rows)
    for a, b in rows:
        print(f"  {a:<{width}}  {b}")
    print(f"written: {out}")


def _conflict_settings(args, ckpt) -> dict:
    """ρ, η, α, adaptive, official_accumulation: the flags, else the checkpoint's hparams, else GAC-FAS's defaults."""
    from training.algorithms import hparams

    g, sam = hparams("gacfas", ckpt.get("config")), hparams("sam", ckpt.get("config"))
    s = {"at": args.at,
         "rho": args.rho if args.rho is not None else float(g["rho"]),
         "eta": args.eta if args.eta is not None else float(g["eta"]),
         "alpha": args.alpha if args.alpha is not None else float(g["alpha"]),
         "adaptive": bool(args.adaptive if args.adaptive is not None else sam["adaptive"]),
         "official_accumulation": bool(args.official_accumulation if args.official_accumulation is not None
                                       else g["official_accumulation"])}
    return s


def _conflict_record(model, probe, s, world=None, progress=None) -> dict:
    from analysis.conflicts import conflicts

    r = conflicts(model, probe.loss_fn, {d: probe.batches(d) for d in probe.sources}, at=s["at"], rho=s["rho"], eta=s["eta"],
                  alpha=s["alpha"], adaptive=s["adaptive"], official_accumulation=s["official_accumulation"],
                  world=world, progress=progress)
    r["summary"] = {"conflict_theta": r["theta"]["conflict"]}
    if "sam" in r:
        r["summary"].update(conflict_sam=r["sam"]["conflict"], conflict_gacfas=r["gacfas"]["generalization"]["conflict"],
                            mean_alignment_cosine=sum(r["gacfas"]["alignment_cosine"].values()) / len(r["domains"]))
    return r


def run_conflicts(args) -> int:
    """The checkpoint's record first (its domain gradients spread over ranks), then each trajectory checkpoint
    not yet in the file (one per rank at a time); the JSON is rewritten after each."""
    from pathlib import Path

    from analysis.conflicts import work_units
    from landscape import mpi
    from training.checkpoint import file_hash, load_model, trajectory_checkpoints
    from training.provenance import versions

    if args.checkpoint is None:
        if args.trajectory is None:
            raise FaslandError("pass --checkpoint CKPT, --trajectory RUN_DIR, or both")
        final = Path(args.trajectory) / "checkpoint.pt"
        trajectory = trajectory_checkpoints(args.trajectory)
        args.checkpoint = str(final) if final.is_file() else None
    else:
        trajectory = trajectory_checkpoints(args.trajectory) if args.trajectory else []
    for name in ("rho", "eta", "alpha"):
        if getattr(args, name) is not None and getattr(args, name) < 0:
            raise FaslandError(f"--{name} {getattr(args, name)} must not be negative; pass e.g. --{name} 0.1")
    anchor = args.checkpoint or str(trajectory[-1])     # its config gives the probe
    w, device, model, ckpt, probe, data_spec = _setup(args, anchor, "conflicts")
    s = _conflict_settings(args, ckpt)
    key = {"data": data_spec, "settings": s}
    previous = _read_previous(args.out) if w.rank == 0 else {}
    previous = w.agree(previous if previous.get("key") == key else {})
    k = len(probe.sources)
    result = {"command": "conflicts", "method": ckpt["config"].get("method"), "checkpoint": args.checkpoint, "key": key,
              "provenance": {"checkpoint": args.checkpoint, "data": data_spec, "settings": s, "mpi_ranks": w.size,
                             "device": str(device), "versions": versions()},
              "domains": list(probe.sources)}

    def save():
        if w.rank == 0:
            write_json(args.out, result)

    if args.checkpoint is not None:
        sha = file_hash(args.checkpoint)
        result["provenance"]["checkpoint_sha256"] = sha
        if previous.get("provenance", {}).get("checkpoint_sha256") == sha and "theta" in previous:
            result.update({n: previous[n] for n in ("theta", "sam", "gacfas", "summary") if n in previous})
        else:
            bar = _bar(w, work_units(s["at"], k), "conflicts at θ" + (" and ascent points" if s["at"] != "theta" else ""))
            bar.unit = "grad"
            result.update({n: v for n, v in _conflict_record(model, probe, s, w, bar).items() if n != "domains"})
            bar.close()
        save()
    if trajectory:
        done = {e.get("sha256"): e for e in previous.get("trajectory", []) if isinstance(e, dict)}
        hashes = w.agree([file_hash(p) for p in trajectory] if w.rank == 0 else None)
        result["trajectory"] = [done[h] for h in hashes if h in done]
        todo = [(p, h) for p, h in zip(trajectory, hashes) if h not in done]
        bar = _bar(w, len(todo), f"conflicts over {len(trajectory)} checkpoints")
        bar.unit = "ckpt"
        for start in range(0, len(todo), w.size):
            mine = todo[start + w.rank] if start + w.rank < len(todo) else None

            def record():
                if mine is None:
                    return None
                m, c = load_model(mine[0], device)
                return {"checkpoint": mine[0].name, "epoch": c.get("epoch"), "sha256": mine[1],
                        **{n: v for n, v in _conflict_record(m, probe, s).items() if n != "domains"}}

            entries = w.gather(mpi.on_every_rank(w.comm, record))
            if w.rank == 0:
                result["trajectory"] += [e for e in entries if e is not None]
                result["trajectory"].sort(key=lambda e: (e.get("epoch") is None, e.get("epoch") or 0, e["checkpoint"]))
                bar.update(sum(e is not None for e in entries))
                save()
        bar.close()
    save()
    if w.rank == 0:
        _print_conflicts(result, args.out)
    return 0


def _print_conflicts(r: dict, out) -> None:
    doms = r["domains"]
    if "theta" in r:
        print(f"gradient conflicts of {r['checkpoint']} over sources {', '.join(doms)} (eval mode)")
        width = max(len(d) for d in doms)
        print("  cosines at θ:")
        for d, row in zip(doms, r["theta"]["cosines"]):
            print(f"    {d:<{width}} " + " ".join(f"{c:+.3f}" for c in row))
        s = r["summary"]
        line = f"  conflict at θ {s['conflict_theta']:.4f}"
        if "conflict_sam" in s:
            line += (f", at SAM's ascent point {s['conflict_sam']:.4f}, among GAC-FAS ascent gradients {s['conflict_gacfas']:.4f}; "
                     f"mean alignment cosine {s['mean_alignment_cosine']:+.4f}")
        print(line)
    if r.get("trajectory"):
        print("  over training: " + ", ".join(f"epoch {e['epoch']}: {e['summary']['conflict_theta']:.3f}" for e in r["trajectory"]))
    print(f"written: {out}")


def keep_freed_memory() -> None:
    """Keep freed tensors in the process heap (glibc mallopt M_MMAP_MAX = 0, M_TRIM_THRESHOLD = 2³¹−1):
    by default every ResNet18-sized gradient (44 MB) is a fresh mmap that the kernel zero-fills page by
    page, a third of the time of `conflicts`. Ignored where the C library is not glibc."""
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-4, 0)              # M_MMAP_MAX
        libc.mallopt(-1, 2 ** 31 - 1)    # M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        pass


def main(argv=None) -> int:
    from analysis import study
    from landscape import cli as landscape_cli
    from landscape.exports import cli as export_cli
    from training import cli as training_cli
    from training import imports

    parser = argparse.ArgumentParser(prog="fasland", description="Loss landscapes, sharpness and gradient conflict for cross-domain face anti-spoofing.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in (training_cli, imports, landscape_cli, export_cli, sys.modules[__name__], study):
        module.register(sub)
    args = parser.parse_args(argv)
    keep_freed_memory()
    try:
        return args.run(args) or 0
    except FaslandError as e:
        print(f"fasland {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"fasland {args.command}: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
