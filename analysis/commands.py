"""`fasland hessian` and `fasland conflicts` as Python functions that return their result.

    hessian(checkpoint, out=None, top_k=1, solver="lanczos", trace=False, density=False, per_domain=False, …)
    conflicts(checkpoint=None, out=None, at="both", rho=None, …, trajectory=None, …)

Each loads the checkpoint's model θ (eval mode) and its probe, computes the sections asked for and, given
`out`, rewrites that JSON after each section, reusing the sections an earlier run of the same checkpoint,
probe and settings left there. Under `mpiexec` every rank calls the function alike. The math is
analysis.hessian / analysis.conflicts; the CLI (analysis/cli.py) only parses and prints.
"""
import json
import os
from pathlib import Path

from analysis import hessian as hs
from analysis.results import ConflictResult, HessianResult
from landscape.commands import check_positive, frames_spec, set_threads, warn_unsettled
from training.presets import resolved
from training.errors import FaslandError

PROBE_DEFAULTS = {"data": None, "max_samples": 256, "batch_size": 256, "device": "auto", "threads": None, "frames_per_video": 1}


def read_previous(path, schema):
    """An earlier result at `path` to resume from, or None (missing, unreadable, of another version or
    invalid: start afresh; check_out made sure it is this command's)."""
    try:
        return schema.read(path)
    except FaslandError:
        return None


def write_result(path, result) -> None:
    """The result's JSON to a temporary file beside `path`, then renamed over it: a kill never leaves a torn file."""
    from training.checkpoint import atomic_write

    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(result.to_json(), indent=1)))


def check_out(path, command: str) -> None:
    """Before any work: `out` must be a file we may write, and an existing file there must be an earlier
    result of this command (it is resumed), never someone else's file (it would be replaced)."""
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


def setup(checkpoint, out, command: str, data=None, max_samples=256, batch_size=256, device="auto", threads=None,
          frames_per_video: int = 1):
    """On every rank: threads, device, the model θ (eval) and the probe, rank 0 first (it fills the data cache);
    rank 0 checks `out` before that. Returns (world, device, model, ckpt, probe, data_spec)."""
    from analysis.mpi_reduce import world as mpi_world
    from landscape import mpi
    from training.checkpoint import load_probed_model
    from training.device import pick_device
    from training.presets import resolved_root
    from training.probe import load_probe

    w = mpi_world()
    check_positive(max_samples=max_samples, batch_size=batch_size, threads=threads, frames_per_video=frames_per_video)
    if out is not None:
        mpi.on_root(w.comm, lambda: check_out(out, command))

    def load():
        set_threads(threads, w.comm)
        dev = pick_device(device)
        model, ckpt = load_probed_model(checkpoint, dev)
        return dev, model, ckpt

    dev, model, ckpt = mpi.on_every_rank(w.comm, load)
    config = ckpt["config"]
    probe = None

    def load_data():
        nonlocal probe
        probe = probe or load_probe(config, dev, max_samples, batch_size, data=data, frames_per_video=frames_per_video)

    mpi.on_root(w.comm, load_data)          # rank 0 alone first: it fills the data cache
    mpi.on_every_rank(w.comm, load_data)
    if w.rank == 0:
        warn_unsettled(command, probe, model, ckpt.get("metrics"))
    data_spec = {"protocol": config["protocol"], "data": {**config["data"], **({"root": resolved_root(data)} if data else {})},
                 "max_samples": max_samples, "batch_size": batch_size, **frames_spec(frames_per_video), "bn": probe.bn,
                 "sources": list(probe.sources), "target": probe.target,
                 "samples": {d: int(len(y)) for d, (_, y) in probe.domains.items()}}
    return w, dev, model, ckpt, probe, data_spec


def progress_bar(w, total, desc, unit: str):
    """A tqdm bar on rank 0 counting `unit`s ("hvp", "grad", "checkpoint")."""
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, leave=False, disable=w.rank != 0, dynamic_ncols=True)


# ---- fasland hessian -------------------------------------------------------------------------------

def hessian(checkpoint, out=None, *, top_k: int = 1, solver: str = "lanczos", tol: float = hs.TOL,
            max_iter: int = hs.MAX_ITER, trace: bool = False, trace_samples: int = hs.TRACE_SAMPLES,
            density: bool = False, density_iter: int = hs.DENSITY_ITER, density_runs: int = 1,
            per_domain: bool = False, hvp: str = hs.DEFAULT_HVP, seed: int = 0, bottom_k: int = 0,
            per_block: bool = False, per_block_trace: bool = True, sample_batches: int = 0, sample_growth: bool = True,
            trace_method: str = hs.TRACE_METHOD, data=None,
            max_samples: int = 256, batch_size: int = 256, device: str = "auto", threads: int | None = None,
            frames_per_video: int = 1) -> HessianResult:
    """Sharpness of L(θ) on the checkpoint's probe (source domains, eval mode): the top_k eigenvalues
    (solver "lanczos" or PyHessian's "power"), each with its health (error bound, converged, products);
    with bottom_k the smallest eigenvalues, λ_min and |λ_min/λ_max|; with trace=True tr H by `trace_method`
    (Hutch++ or Hutchinson, with its standard error); with density=True the SLQ spectral density; with
    per_domain=True λ_max of each source domain and of the target; with per_block=True λ_max and (per_block_trace) trace of
    each top-level block's Hessian (analysis.hessian.block_sharpness); with sample_batches=B the spread of
    the eigenvalues (and trace) over B disjoint probe subsets and (sample_growth) at growing sample counts.

    Sections are computed in turn and `out` rewritten after each; a section already there with the same
    checkpoint, probe and settings is reused. Returns the HessianResult (the JSON's schema)."""
    import time

    from analysis.mpi_reduce import shard
    from training.checkpoint import file_hash
    from training.provenance import versions

    check_positive(top_k=top_k, tol=tol, max_iter=max_iter, trace_samples=trace_samples, density_iter=density_iter,
                   density_runs=density_runs)
    if trace and trace_samples < 2:
        raise FaslandError(f"--trace-samples {trace_samples} is too few for a standard error; pass at least 2")
    if trace_method not in ("hutch++", "hutchinson"):
        raise FaslandError(f"--trace-method '{trace_method}' is not known; use hutch++ or hutchinson")
    if (trace or per_block and per_block_trace) and trace_method == "hutch++" and trace_samples < 4:
        raise FaslandError(f"--trace-samples {trace_samples} is too few for Hutch++ (a sketch and 2 residual samples); pass at least 4")
    if bottom_k < 0 or sample_batches < 0 or sample_batches == 1:
        raise FaslandError(f"--bottom-k {bottom_k} / --sample-batches {sample_batches}: pass --bottom-k K ≥ 1 and --sample-batches B ≥ 2 (or leave them out)")
    w, dev, model, ckpt, probe, data_spec = setup(checkpoint, out, "hessian", data, max_samples, batch_size, device, threads, frames_per_video)
    sha = file_hash(checkpoint)
    key = {"checkpoint_sha256": sha, "data": data_spec}
    previous = read_previous(out, HessianResult) if out is not None and w.rank == 0 else None
    previous = w.agree(previous if previous is not None and previous.key == key else None)
    result = HessianResult(
        method=ckpt["config"].get("method"), checkpoint=str(checkpoint), key=key,
        provenance={"checkpoint": resolved(checkpoint), "checkpoint_sha256": sha, "epoch": ckpt.get("epoch"),
                    "data": data_spec, "seed": seed, "hvp": hvp, "mpi_ranks": w.size, "device": str(dev),
                    "versions": versions()})
    eig = {"top_k": top_k, "method": solver, "tol": tol, "max_iter": max_iter, "seed": seed}
    wanted = [("eigenvalues", eig)]
    if bottom_k:
        wanted.append(("smallest", {**eig, "method": "lanczos", "bottom_k": bottom_k}))
    if trace:
        wanted.append(("trace", {"n_samples": trace_samples, "seed": seed, "method": trace_method}))
    if density:
        wanted.append(("density", {"n_iter": density_iter, "n_runs": density_runs, "seed": seed}))
    if per_domain:
        wanted += [(f"per_domain/{d}", {**eig, "top_k": 1}) for d in (*probe.sources, probe.target)]
    if per_block:
        wanted.append(("per_block", {"tol": tol, "max_iter": max_iter, "seed": seed,
                                     "trace_samples": trace_samples if per_block_trace else 0,
                                     "trace_method": trace_method}))
    if sample_batches:
        wanted.append(("sampling", {**eig, "method": "lanczos", "subsets": sample_batches, "trace": trace,
                                    "trace_samples": trace_samples, "trace_method": trace_method, "growth": sample_growth}))
    # keep what an earlier run of this checkpoint and probe computed, settings and all
    for name, info in (previous.sections if previous is not None else {}).items():
        result.sections[name] = info
        _copy_section(previous, result, name)

    def batches(which):
        # contiguous images: double backward through convolutions is ~30% slower on channels_last on CPU
        return [(x.contiguous(), y) for x, y in shard(probe.batches(which), w.rank, w.size)]

    def operator(which):
        return hs.Hessian(model, probe.loss_fn, batches(which), hvp, w)

    def save():
        if out is not None and w.rank == 0:
            write_result(out, result)

    for name, settings in wanted:
        if result.sections.get(name, {}).get("settings") == settings:
            continue
        started = time.perf_counter()
        if name == "eigenvalues":
            H = operator("train")
            H.progress = bar = progress_bar(w, max_iter * (top_k if solver == "power" else 1), f"top-{top_k} eigenvalues", "hvp")
            e = hs.top_eigenvalues(H, top_k, tol, solver, seed, max_iter)
            result.eigenvalues, result.eigenvalue_health = list(e), e.health()
            result.train_loss = H.loss()
        elif name == "smallest":
            H = operator("train")
            H.progress = bar = progress_bar(w, max_iter, f"bottom-{bottom_k} eigenvalues", "hvp")
            e = hs.top_eigenvalues(H, bottom_k, tol, "lanczos", seed, max_iter, which="smallest")
            result.smallest = {"eigenvalues": list(e), "health": e.health(), "lambda_min": e[0]}
        elif name == "trace":
            H = operator("train")
            H.progress = bar = progress_bar(w, trace_samples, "trace", "hvp")
            t = hs.trace(H, trace_samples, seed=seed, method=trace_method)
            result.trace = {"mean": t.mean, "stderr": t.stderr, "method": t.method, "products": t.products,
                            "n_samples": t.products, "samples": t.samples, "low_rank": t.low_rank}
        elif name == "per_block":
            H, bar = None, progress_bar(w, None, "per-block sharpness", "hvp")
            result.per_block = hs.block_sharpness(model, probe.loss_fn, batches("train"), tol=tol, seed=seed,
                                                  trace_samples=trace_samples if per_block_trace else 0, trace_method=trace_method,
                                                  max_iter=max_iter, hvp=hvp, world=w, progress=bar)
        elif name == "sampling":
            H, bar = None, progress_bar(w, None, f"eigenvalues on {sample_batches} probe subsets", "hvp")
            result.sampling = hs.sampling_uncertainty(model, probe.loss_fn, batches("train"), sample_batches, top_k,
                                                      trace, tol, seed, trace_samples, trace_method, max_iter,
                                                      growth=sample_growth, hvp=hvp, world=w, progress=bar)
        elif name == "density":
            H = operator("train")
            H.progress = bar = progress_bar(w, density_iter * density_runs, "density", "hvp")
            nodes, weights = hs.slq(H, density_iter, density_runs, seed)
            grid, dens, sigma = hs.broaden(nodes, weights)
            result.density = {"grid": grid.tolist(), "density": dens.tolist(), "sigma": sigma,
                                 "nodes": nodes, "weights": weights}
        else:
            d = name.split("/", 1)[1]
            H = operator(d)
            H.progress = bar = progress_bar(w, max_iter, f"λ_max {d}", "hvp")
            e = hs.top_eigenvalues(H, 1, tol, solver, seed, max_iter)
            result.per_domain[d] = {"lambda_max": e[0], "role": "target" if d == probe.target else "source",
                                    "samples": data_spec["samples"][d], "health": e.health()[0]}
        bar.close()
        hvps = H.calls if H is not None else int(bar.n)   # bar.n: the products of several operators (rank 0)
        result.sections[name] = {"settings": settings, "hvps": hvps, "seconds": round(time.perf_counter() - started, 3)}
        del H
        if result.smallest and result.eigenvalues and result.eigenvalues[0] != 0:
            result.smallest["convexity_ratio"] = abs(result.smallest["lambda_min"] / result.eigenvalues[0])
        save()
    save()
    return result


def _copy_section(previous: HessianResult, result: HessianResult, name: str) -> None:
    """Section `name`'s values from an earlier result: a field of the schema, or a key kept in its `extra`."""
    if name.startswith("per_domain/"):
        d = name.split("/", 1)[1]
        if d in previous.per_domain:
            result.per_domain[d] = previous.per_domain[d]
        return
    for key in {"eigenvalues": ("eigenvalues", "eigenvalue_health", "train_loss")}.get(name, (name,)):
        if key in previous.extra:
            result.extra[key] = previous.extra[key]
        elif hasattr(result, key):
            setattr(result, key, getattr(previous, key))


def hessian_summary(r: HessianResult, out) -> str:
    """What `fasland hessian` prints: the result's numbers in a few lines, each eigenvalue with its error bound
    (and "not converged" when it stopped at max_iter), a value whose error exceeds it marked undetermined."""
    data = r.provenance["data"]
    lines = [f"Hessian of {r.checkpoint} ({data['protocol']}, "
             f"{sum(data['samples'][d] for d in data['sources'])} source images, eval mode)"]

    def eigen(v, h):
        text = hs.with_error(v, h["error"]) if h else f"{v:.6g}"
        return text + ("" if not h or h["converged"] else f" (not converged after {h['products']} products)")

    values = r.eigenvalues or []
    rows = [(f"λ_{i + 1}", eigen(v, h)) for i, (v, h) in enumerate(zip(values, r.eigenvalue_health or [None] * len(values)))]
    if r.smallest:
        sm = r.smallest
        rows += [(f"λ_min{'' if i == 0 else f'+{i}'}", eigen(v, h)) for i, (v, h) in enumerate(zip(sm["eigenvalues"], sm["health"]))]
        if "convexity_ratio" in sm:
            rows.append(("|λ_min/λ_max|", f"{sm['convexity_ratio']:.4g}"))
    if r.trace is not None:
        t = r.trace
        rows.append(("trace", f"{hs.with_error(t['mean'], t['stderr'])} ({t.get('method', 'hutchinson')}, "
                              f"{t.get('products', t['n_samples'])} products)"))
    if r.density is not None:
        nodes = [x for run in r.density["nodes"] for x in run]
        rows.append(("density", f"SLQ nodes in [{min(nodes):.4g}, {max(nodes):.4g}], σ = {r.density['sigma']:.3g}"))
    for d, v in r.per_domain.items():
        rows.append((f"λ_max {d} ({v['role']})", eigen(v["lambda_max"], v.get("health"))))
    for b, v in r.per_block.items():
        trace = "" if v.get("trace") is None else f", trace {hs.with_error(v['trace'], v['trace_stderr'])}"
        rows.append((f"block {b}", f"λ_max {eigen(v['lambda_max'], v['health'])}{trace} ({v['parameters']:,} parameters)"))
    if r.sampling:
        sp, lam = r.sampling, r.sampling["lambda_max"]
        rows.append((f"λ_max over {sp['subsets']} subsets", f"{lam['mean']:.6g} ± {lam['std']:.2g} "
                     f"(95% of subsets in [{lam['interval'][0]:.4g}, {lam['interval'][1]:.4g}])"))
        if sp.get("growth"):
            rows.append(("λ_max at n samples", ", ".join(f"{g['samples']}: {g['lambda_max']:.4g}" for g in sp["growth"])))
    width = max(len(a) for a, _ in rows)
    for a, b in rows:
        lines.append(f"  {a:<{width}}  {b}")
    lines.append(f"written: {out}")
    return "\n".join(lines)


# ---- fasland conflicts -----------------------------------------------------------------------------

def conflict_settings(ckpt, at="both", rho=None, eta=None, alpha=None, adaptive=None, official_accumulation=None) -> dict:
    """ρ, η, α, adaptive, official_accumulation: the given values, else the checkpoint's hparams, else GAC-FAS's
    (and SAM's for `adaptive`) defaults, read through the one registry training.algorithms.hparams."""
    from training.algorithms import hparams

    g, sam = hparams("gacfas", ckpt.get("config")), hparams("sam", ckpt.get("config"))
    return {"at": at,
            "rho": rho if rho is not None else float(g["rho"]),
            "eta": eta if eta is not None else float(g["eta"]),
            "alpha": alpha if alpha is not None else float(g["alpha"]),
            "adaptive": bool(adaptive if adaptive is not None else sam["adaptive"]),
            "official_accumulation": bool(official_accumulation if official_accumulation is not None
                                          else g["official_accumulation"])}


def _conflict_record(model, probe, s, world=None, progress=None) -> dict:
    from analysis.conflicts import conflicts as cosines_and_ascents

    r = cosines_and_ascents(model, probe.loss_fn, {d: probe.batches(d) for d in probe.sources}, at=s["at"], rho=s["rho"],
                            eta=s["eta"], alpha=s["alpha"], adaptive=s["adaptive"],
                            official_accumulation=s["official_accumulation"], world=world, progress=progress)
    r["summary"] = {"conflict_theta": r["theta"]["conflict"]}
    if "sam" in r:
        r["summary"].update(conflict_sam=r["sam"]["conflict"], conflict_gacfas=r["gacfas"]["generalization"]["conflict"],
                            mean_alignment_cosine=sum(r["gacfas"]["alignment_cosine"].values()) / len(r["domains"]))
    return r


def conflicts(checkpoint=None, out=None, *, at: str = "both", rho: float | None = None, eta: float | None = None,
              alpha: float | None = None, adaptive: bool | None = None, official_accumulation: bool | None = None,
              trajectory=None, trajectory_at: str | None = None, data=None, max_samples: int = 256,
              batch_size: int = 256, device: str = "auto", threads: int | None = None, interval_subsets: int = 4,
              frames_per_video: int = 1) -> ConflictResult:
    """Per-domain gradient cosines of a checkpoint at θ (at="theta"), also at SAM's and each domain's GAC-FAS
    ascent point (at="ascent"/"both"), and with trajectory=RUN_DIR at every RUN_DIR/checkpoints/epoch_*.pt
    (at `trajectory_at`'s points, default `at`'s: "theta" costs k gradients per checkpoint, the ascent points (k+1)k more).
    ρ, η, α, adaptive, official_accumulation default to the checkpoint's hparams, else GAC-FAS's.
    The checkpoint's cosines at θ get 95% intervals (theta.interval, analysis.intervals.conflict_interval) from
    `interval_subsets` client subsets per domain (0: none; capped at the clients of the smallest domain; one rank only).

    The checkpoint's record first (its domain gradients spread over ranks), then each trajectory checkpoint
    not yet in `out` (one per rank at a time); `out` is rewritten after each. Returns the ConflictResult."""
    from analysis.conflicts import work_units
    from landscape import mpi
    from training.checkpoint import file_hash, load_model, trajectory_checkpoints
    from training.provenance import versions

    if checkpoint is None:
        if trajectory is None:
            raise FaslandError("pass --checkpoint CKPT, --trajectory RUN_DIR, or both")
        final = Path(trajectory) / "checkpoint.pt"
        steps = trajectory_checkpoints(trajectory)
        checkpoint = str(final) if final.is_file() else None
    else:
        steps = trajectory_checkpoints(trajectory) if trajectory else []
    for name, value in (("rho", rho), ("eta", eta), ("alpha", alpha)):
        if value is not None and value < 0:
            raise FaslandError(f"--{name} {value} must not be negative; pass e.g. --{name} 0.1")
    anchor = checkpoint or str(steps[-1])     # its config gives the probe
    w, dev, model, ckpt, probe, data_spec = setup(anchor, out, "conflicts", data, max_samples, batch_size, device, threads, frames_per_video)
    s = conflict_settings(ckpt, at, rho, eta, alpha, adaptive, official_accumulation)
    if interval_subsets < 0:
        raise FaslandError(f"--interval-subsets {interval_subsets} must not be negative; pass e.g. --interval-subsets 4 (0: no interval)")
    s["interval_subsets"] = interval_subsets
    if trajectory_at not in (None, "theta", "ascent", "both"):
        raise FaslandError(f"--trajectory-at '{trajectory_at}' is not known; use theta, ascent or both")
    s["trajectory_at"] = trajectory_at or at
    key = {"data": data_spec, "settings": s}
    previous = read_previous(out, ConflictResult) if out is not None and w.rank == 0 else None
    previous = w.agree(previous if previous is not None and previous.key == key else None)
    k = len(probe.sources)
    checkpoint = None if checkpoint is None else str(checkpoint)
    result = ConflictResult(method=ckpt["config"].get("method"), checkpoint=checkpoint, key=key,
                            provenance={"checkpoint": checkpoint and resolved(checkpoint), "data": data_spec, "settings": s, "mpi_ranks": w.size,
                                        "device": str(dev), "versions": versions()},
                            domains=list(probe.sources))

    def save():
        if out is not None and w.rank == 0:
            write_result(out, result)

    if checkpoint is not None:
        sha = file_hash(checkpoint)
        result.provenance["checkpoint_sha256"] = sha
        if previous is not None and previous.provenance.get("checkpoint_sha256") == sha and previous.theta is not None:
            for n in ("theta", "sam", "gacfas", "summary"):
                setattr(result, n, getattr(previous, n))
        else:
            bar = progress_bar(w, work_units(s["at"], k), "conflicts at θ" + (" and ascent points" if s["at"] != "theta" else ""), "grad")
            for n, v in _conflict_record(model, probe, s, w, bar).items():
                if n != "domains":
                    setattr(result, n, v)
            bar.close()
            subsets = min([interval_subsets] + [len(set(probe.clients[d].tolist())) if d in probe.clients else 0
                                                for d in probe.sources])
            if subsets >= 2 and w.size == 1:
                from analysis.intervals import conflict_interval

                result.theta["interval"] = conflict_interval(model, probe, subsets)
        save()
    if steps:
        done = {e.get("sha256"): e for e in (previous.trajectory if previous is not None else [])}
        hashes = w.agree([file_hash(p) for p in steps] if w.rank == 0 else None)
        result.trajectory = [done[h] for h in hashes if h in done]
        todo = [(p, h) for p, h in zip(steps, hashes) if h not in done]
        bar = progress_bar(w, len(todo), f"conflicts over {len(steps)} checkpoints", "checkpoint")
        for start in range(0, len(todo), w.size):
            mine = todo[start + w.rank] if start + w.rank < len(todo) else None

            def record():
                if mine is None:
                    return None
                m, c = load_model(mine[0], dev)
                return {"checkpoint": mine[0].name, "epoch": c.get("epoch"), "sha256": mine[1],
                        **{n: v for n, v in _conflict_record(m, probe, {**s, "at": s["trajectory_at"]}).items()
                           if n != "domains"}}

            entries = w.gather(mpi.on_every_rank(w.comm, record))
            if w.rank == 0:
                result.trajectory += [e for e in entries if e is not None]
                result.trajectory.sort(key=lambda e: (e.get("epoch") is None, e.get("epoch") or 0, e["checkpoint"]))
                bar.update(sum(e is not None for e in entries))
                save()
        bar.close()
    save()
    return result


def conflicts_summary(r: ConflictResult, out) -> str:
    """What `fasland conflicts` prints: the result's numbers in a few lines."""
    lines, doms = [], r.domains
    if r.theta is not None:
        lines.append(f"gradient conflicts of {r.checkpoint} over sources {', '.join(doms)} (eval mode)")
        width = max(len(d) for d in doms)
        lines.append("  cosines at θ:")
        for d, row in zip(doms, r.theta["cosines"]):
            lines.append(f"    {d:<{width}} " + " ".join(f"{c:+.3f}" for c in row))
        s = r.summary
        line = f"  conflict at θ {s['conflict_theta']:.4f}"
        if "conflict_sam" in s:
            line += (f", at SAM's ascent point {s['conflict_sam']:.4f}, among GAC-FAS ascent gradients {s['conflict_gacfas']:.4f}; "
                     f"mean alignment cosine {s['mean_alignment_cosine']:+.4f}")
        lines.append(line)
    if r.trajectory:
        lines.append("  over training: " + ", ".join(f"epoch {e['epoch']}: {e['summary']['conflict_theta']:.3f}" for e in r.trajectory))
    lines.append(f"written: {out}")
    return "\n".join(lines)
