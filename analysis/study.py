"""`fasland study` as a Python function: `study(out, protocol, methods, preset, …)` trains the methods of a
protocol, then measures and shows them side by side.

Every step calls one of the suite's command functions (training.commands.train, landscape.commands.surface,
analysis.commands.hessian / .conflicts, analysis.attention.attention, landscape.exports.commands.export_*), so
a study is exactly what a user could run by hand; each resumes or skips finished work, so rerunning a study is
quick.
"""
import json
import shutil
import time
from pathlib import Path

import h5py
import numpy as np

from analysis.results import ConflictResult, HessianResult
from analysis.sizes import LABELS, LEAVE_ONE_OUT, SETTINGS
from training.errors import FaslandError



class _Labels(dict):
    """Method labels; a model the user brings (--checkpoints NAME=…) is labelled by its NAME."""

    def __missing__(self, name):
        return name


LABELS = _Labels(LABELS)
WIDTH_DELTA = 0.1   # surface width is measured where train loss ≤ f(0) + 0.1


def study(out, protocol: str | None = None, methods="erm,sam,gacfas", preset: str = "demo", sizes=None, data=None,
          config=None, device: str = "auto", threads: int | None = None, figures=None, seeds=None,
          checkpoints=None, keep_checkpoints: int | None = None) -> list[Path]:
    """Train each method of `methods` (a comma-separated string or a list) on `protocol` ('all': the four
    leave-one-out protocols, each in out/<protocol>), then surfaces, Hessian, conflicts, views and a report.
    sizes: the preset's analysis sizes overridden ('KEY=VALUE,…' or a dict; see analysis.sizes.SETTINGS).
    seeds: training seeds ('0,1,2' or a list; None: the preset's): one seed keeps out/<method>/, several give
    out/seed_S/<method>/ and out/report.md with mean ± std across seeds. Returns the report.md of each protocol.
    checkpoints: 'NAME=CKPT,…' (or a dict): analyse these models instead (no training, `methods` unused; the
    protocol is theirs), each in out/NAME/ without the trajectory's PCA plane.
    keep_checkpoints=N: each run keeps the trajectory checkpoint of every N-th epoch (epoch 0 and the last
    always). protocol: default ICM2O."""
    from training.data.protocols import PROTOCOLS

    given = {}
    if checkpoints is not None:
        from training.imports import brought_checkpoints

        if seeds is not None:
            raise FaslandError("--seeds chooses training seeds, but --checkpoints trains nothing; drop --seeds")
        protocol, given = brought_checkpoints(checkpoints, protocol)
        methods = list(given)
    protocol = protocol or "ICM2O"
    methods = [m.strip() for m in methods.split(",") if m.strip()] if isinstance(methods, str) else list(methods)
    unknown = [m for m in methods if m not in LABELS and m not in given]
    if unknown or not methods:
        raise FaslandError(f"unknown method(s) {', '.join(unknown) or '(none)'} in --methods; use a comma-separated list of {', '.join(LABELS)}")
    protocols = LEAVE_ONE_OUT if protocol == "all" else (protocol,)
    for p in protocols:
        if p not in PROTOCOLS:
            raise FaslandError(f"unknown protocol '{p}'; use one of {', '.join(PROTOCOLS)} or 'all'")
    if preset not in SETTINGS:
        raise FaslandError(f"unknown preset '{preset}'; use one of {', '.join(SETTINGS)}")
    settings = parse_sizes(sizes, SETTINGS[preset])
    seeds = parse_seeds(seeds)
    out = Path(out)
    options = {"data": data, "config": config, "device": device, "threads": threads, "figures": figures,
               "keep_checkpoints": keep_checkpoints}
    reports = []
    for p in protocols:
        where = out / p if len(protocols) > 1 else out
        if len(seeds) == 1:
            reports.append(Study(p, methods, preset, settings, where, options, seeds[0], given).run())
        else:
            studies = [Study(p, methods, preset, settings, where / f"seed_{s}", options, s) for s in seeds]
            for st in studies:
                st.run()
            reports.append(seeds_report(studies, where))
    return reports


def parse_seeds(spec) -> list:
    """`--seeds 0,1,2` (or a list) → [0, 1, 2]; None → [None] (the preset's seed)."""
    if spec is None:
        return [None]
    try:
        seeds = [int(v) for v in (spec.split(",") if isinstance(spec, str) else spec) if str(v).strip()]
    except ValueError:
        raise FaslandError(f"--seeds {spec} is not a list of whole numbers; pass e.g. --seeds 0,1,2") from None
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise FaslandError(f"--seeds {spec} needs distinct non-negative seeds; pass e.g. --seeds 0,1,2")
    return seeds


def parse_sizes(spec: str | dict | None, preset: dict) -> dict:
    """The preset's analysis sizes with overrides ('KEY=VALUE,...' or a dict), each value parsed to the
    preset value's type."""
    from landscape.surface import parse_axis

    sizes = dict(preset)
    if isinstance(spec, dict):
        pairs = [(str(k), str(v)) for k, v in spec.items()]
    else:
        pairs = [(k.strip(), v) for k, _, v in (i.strip().partition("=") for i in (spec or "").split(",") if i.strip())]
    for key, value in pairs:
        item = f"{key}={value}"
        if key not in sizes:
            raise FaslandError(f"unknown size '{key}' in --sizes {item}; use one of {', '.join(sizes)}")
        kind = type(sizes[key])
        try:
            sizes[key] = kind(value.strip())
        except ValueError:
            raise FaslandError(f"--sizes {item} needs {'a whole number' if kind is int else 'a number'}; "
                               f"pass e.g. {key}={preset[key]}") from None
        if kind is str:
            try:
                parse_axis(sizes[key])
            except FaslandError:
                raise FaslandError(f"--sizes {item} is not a grid MIN:MAX:N; pass e.g. {key}={preset[key]}") from None
    return sizes


class Study:
    """One protocol: runs/<method>/ trained, then every measurement under <method>/ and the views under views/."""

    def __init__(self, protocol: str, methods: list[str], preset: str, settings: dict, out: Path, options: dict,
                 seed: int | None = None, checkpoints: dict | None = None):
        self.given = checkpoints or {}    # {name: checkpoint} of models the user brings: not trained, no trajectory
        self.protocol, self.methods, self.preset, self.s, self.out = protocol, methods, preset, settings, out
        self.options = options      # data, config, device, threads, figures, keep_checkpoints
        self.seed = seed            # the training seed (None: the preset's)
        self.device = {"device": options["device"], "threads": options["threads"]}
        self.views = out / "views"
        self.step, self.started = 0, time.monotonic()

    def say(self, what: str) -> None:
        """A step's heading, with the minutes the study has run so far (where the time goes)."""
        self.step += 1
        seed = "" if self.seed is None else f" seed {self.seed}"
        m, sec = divmod(int(time.monotonic() - self.started), 60)
        print(f"\n[{self.protocol}{seed} {self.step}, {m}:{sec:02d}] {what}", flush=True)

    def run_dir(self, m: str) -> Path:
        return self.out / m

    def ckpt(self, m: str) -> Path:
        return self.given.get(m, self.run_dir(m) / "checkpoint.pt")

    def run(self) -> Path:
        self.out.mkdir(parents=True, exist_ok=True)
        for m in self.methods:
            self.evaluate(m) if m in self.given else self.train(m)
        for m in self.methods:
            self.landscapes(m)
        self.interpolations()
        for m in self.methods:
            self.sharpness(m)
            self.conflicts(m)
            self.attention(m)
        self.export_views()
        return self.report()

    # ---- training -----------------------------------------------------------------------------
    def train(self, m: str) -> None:
        from training.commands import train, train_summary

        self.say(f"train {LABELS[m]}")
        earlier = [self.run_dir(e) for e in self.methods[:self.methods.index(m)] if e not in self.given]
        metrics = train(self.protocol, m, self.run_dir(m), preset=self.preset, data=self.options["data"],
                        config=self.options["config"], seed=self.seed, warm_from=earlier,
                        keep_checkpoints=self.options.get("keep_checkpoints"), **self.device)
        print(train_summary(metrics, m, self.protocol, self.run_dir(m)))

    def evaluate(self, m: str) -> None:
        from training.imports import write_metrics

        self.say(f"evaluate {m} ({self.given[m]})")
        if not (self.run_dir(m) / "metrics.json").exists():
            write_metrics(self.given[m], self.run_dir(m))

    # ---- surfaces -----------------------------------------------------------------------------
    def surface(self, out: Path, checkpoint: Path, x: str, y: str | None = None, **directions) -> Path:
        from landscape.commands import surface, surface_summary

        store = surface(checkpoint, out, x, y, max_samples=self.s["max_samples"], **directions, **self.device)
        print(surface_summary(store, out, directions.get("dir_file")))
        return out

    def landscapes(self, m: str) -> None:
        """1-D and 2-D filter-normalized surfaces on shared directions (same seed, normalized to each
        model), then the plane of the trajectory's top-2 PCA directions with the path projected."""
        self.say(f"surfaces of {LABELS[m]}: 1-D, 2-D, trajectory PCA plane")
        d = self.run_dir(m)
        self.surface(d / "surface_1d.h5", self.ckpt(m), self.s["x1d"], seed=0)
        self.surface(d / "surface_2d.h5", self.ckpt(m), self.s["x2d"], self.s["x2d"], seed=0)
        if m in self.given:
            return
        dirs = d / "pca.dirs.h5"
        if not dirs.exists():
            from landscape.directions import pca_directions, save_directions
            from training.checkpoint import load_model

            model, _ = load_model(self.ckpt(m))
            save_directions(dirs, pca_directions(model, d))
        with h5py.File(dirs, "r") as f:
            px, py = np.asarray(f["proj_xcoord"]), np.asarray(f["proj_ycoord"])
        n = self.s["pca_points"]
        self.surface(d / "surface_pca.h5", self.ckpt(m), axis_around(px, n), axis_around(py, n), dir_file=dirs)

    def interpolations(self) -> None:
        """θ_a → θ_b for the first method against each other: a = 0 is the first, a = 1 the other."""
        from training.checkpoint import load_checkpoint

        first = self.methods[0]
        for m in self.methods[1:]:
            if load_checkpoint(self.ckpt(m))["arch"] != load_checkpoint(self.ckpt(first))["arch"]:
                print(f"no interpolation {LABELS[first]} → {LABELS[m]}: their architectures differ")
                continue
            self.say(f"interpolation {LABELS[first]} → {LABELS[m]}")
            self.surface(self.out / f"interpolation_{first}_{m}.h5", self.ckpt(first), self.s["interpolation"],
                         model2=self.ckpt(m))

    # ---- sharpness and conflict ---------------------------------------------------------------
    # Always run: the commands themselves reuse every finished section of their file, and a file a kill
    # left between two sections (or made with other sizes) is completed rather than taken as done.
    def sharpness(self, m: str) -> None:
        from analysis.commands import hessian, hessian_summary

        parts = [f"top-{self.s['top_k']}" + (" and smallest" if self.s["bottom_k"] else "") + " eigenvalues, trace",
                 "per-domain" + (" and per-block" if self.s["per_block"] else "") + " λ_max",
                 f"spread over {self.s['sample_batches']} probe subsets"]
        self.say(f"Hessian of {LABELS[m]}: {', '.join(parts)}")
        out = self.run_dir(m) / "hessian.json"
        r = hessian(self.ckpt(m), out, top_k=self.s["top_k"], tol=self.s["tol"], max_iter=self.s["max_iter"], trace=True,
                    trace_samples=self.s["trace_samples"], per_domain=True, max_samples=self.s["max_samples"],
                    density=self.s["density_iter"] > 0, density_iter=self.s["density_iter"] or 1, bottom_k=self.s["bottom_k"],
                    per_block=bool(self.s["per_block"]), per_block_trace=bool(self.s["block_trace"]),
                    sample_batches=self.s["sample_batches"],
                    sample_growth=bool(self.s["sample_growth"]), **self.device)
        print(hessian_summary(r, out))

    def conflicts(self, m: str) -> None:
        from analysis.commands import conflicts, conflicts_summary

        self.say(f"gradient conflicts of {LABELS[m]}: at θ, at the ascent points, over training")
        out = self.run_dir(m) / "conflicts.json"
        r = conflicts(self.ckpt(m), out, at="both", trajectory=None if m in self.given else self.run_dir(m),
                      trajectory_at="both" if self.s["trajectory_ascent"] else "theta", max_samples=self.s["max_samples"],
                      **self.device)
        print(conflicts_summary(r, out))

    # ---- attention ----------------------------------------------------------------------------
    def attention(self, m: str) -> None:
        """Grad-CAM of the live score on `attention_samples` test images per domain, into <method>/attention/;
        kept when its attention.json (written last) holds the same method and sample count."""
        from analysis.attention import attention, attention_summary
        from landscape.commands import set_threads
        from training.device import pick_device

        n, out = self.s["attention_samples"], self.run_dir(m) / "attention"
        self.say(f"attention of {LABELS[m]}: Grad-CAM of the live score on {n} test images per domain")
        done = out / "attention.json"
        if done.exists() and [json.loads(done.read_text()).get(k) for k in ("method", "samples")] == ["gradcam", n]:
            print(f"reusing {done}")
            return
        set_threads(self.options["threads"])
        r = attention(self.ckpt(m), out, "gradcam", samples=n, data=self.options["data"],
                      device=pick_device(self.options["device"]))
        print(attention_summary(r, out))

    def attention_view(self) -> None:
        """views/attention.png: the target's images under every method's map."""
        from analysis.attention import AttentionResult, side_by_side
        from training.checkpoint import atomic_write

        results = [AttentionResult.read(self.run_dir(m) / "attention" / "attention.h5") for m in self.methods]
        atomic_write(self.views / "attention.png",
                     lambda tmp: side_by_side(results, [LABELS[m] for m in self.methods], tmp))

    # ---- views --------------------------------------------------------------------------------
    def export_views(self) -> None:
        import analysis.views  # noqa: F401  (registers the Hessian and conflicts views of the HTML pages)
        from landscape.exports.commands import export_html, export_png, export_vtk

        self.say("views: VTK + ParaView scenes, HTML pages, PNG figures")
        v, ms = self.views, self.methods
        labels = [LABELS[m] for m in ms]
        by = {name: [self.run_dir(m) / f"{name}.h5" for m in ms] for name in ("surface_1d", "surface_2d")}
        trained = [m for m in ms if m not in self.given]      # only these have a trajectory's PCA plane
        for m in ms:
            export_vtk(self.run_dir(m) / "surface_2d.h5", v / f"{m}_surface_2d", log=True)
        for m in trained:
            export_vtk(self.run_dir(m) / "surface_pca.h5", v / f"{m}_surface_pca", log=True)
        export_png(by["surface_2d"], v / "surfaces_2d.png", labels=labels, log=True)
        export_png(by["surface_1d"], v / "curves_1d.png", labels=labels)
        if trained:
            by["surface_pca"] = [self.run_dir(m) / "surface_pca.h5" for m in trained]
            export_png(by["surface_pca"], v / "trajectory_pca.png", labels=[LABELS[m] for m in trained], log=True)
        interps = [m for m in ms[1:] if (self.out / f"interpolation_{ms[0]}_{m}.h5").exists()]
        if interps:
            export_png([self.out / f"interpolation_{ms[0]}_{m}.h5" for m in interps], v / "interpolations.png",
                       labels=[f"{LABELS[ms[0]]}→{LABELS[m]}" for m in interps])
        for name, what in (("surface_2d", "2-D loss surfaces"), ("surface_1d", "1-D loss curves"), ("surface_pca", "trajectory PCA planes")):
            page = {"surface_2d": "surfaces_2d", "surface_1d": "curves_1d", "surface_pca": "trajectory_pca"}[name]
            if name in by:
                export_html(by[name], v / f"{page}.html", labels=labels if name != "surface_pca" else [LABELS[m] for m in trained],
                            title=f"{self.protocol}: {what}")
        export_html([self.run_dir(m) / "hessian.json" for m in ms], v / "hessian.html", labels=labels,
                    title=f"{self.protocol}: Hessian spectra")
        export_html([self.run_dir(m) / "conflicts.json" for m in ms], v / "conflicts.html", labels=labels,
                    title=f"{self.protocol}: gradient conflicts")
        self.attention_view()
        self.screenshot()
        if self.options["figures"]:
            figs = Path(self.options["figures"])
            figs.mkdir(parents=True, exist_ok=True)
            for name in ("surfaces_2d.png", "curves_1d.png", "trajectory_pca.png", "attention.png", "paraview.png"):
                if (v / name).exists():
                    shutil.copyfile(v / name, figs / name)

    def screenshot(self) -> None:
        """A ParaView rendering of the last method's 2-D surface, where ParaView is installed."""
        from landscape.exports.commands import export_vtk

        if shutil.which("pvbatch") is None or shutil.which("xvfb-run") is None and shutil.which("Xvfb") is None:
            print("ParaView (pvbatch) not found: skipping the screenshot; install Debian's paraview to get it")
            return
        shot = self.views / "paraview.png"
        if not shot.exists():
            m = self.methods[-1]
            export_vtk(self.run_dir(m) / "surface_2d.h5", self.views / f"{m}_surface_2d", log=True, screenshot=shot)

    # ---- report -------------------------------------------------------------------------------
    def rows(self) -> list[dict]:
        """One row per method, every number read from the result files; `ci` holds the 95% intervals."""
        rows = []
        for m in self.methods:
            d = self.run_dir(m)
            final = json.loads((d / "metrics.json").read_text())["final"]
            hess = HessianResult.read(d / "hessian.json")
            conf = ConflictResult.read(d / "conflicts.json")
            tci, sci = final["target"].get("interval", {}), final["sources"].get("interval", {})
            row = {"method": LABELS[m], "hter": final["target"]["hter"], "auc": final["target"]["auc"],
                   "source_hter": final["sources"]["hter"], "source_auc": final["sources"]["auc"],
                   **hessian_numbers(hess), **conflict_numbers(conf),
                   "width": surface_width(d / "surface_1d.h5", WIDTH_DELTA)}
            row["ci"] = {"hter": tci.get("hter"), "auc": tci.get("auc"), "source_hter": sci.get("hter"),
                         "source_auc": sci.get("auc"), **row.pop("ci_hessian"), **row.pop("ci_conflicts")}
            rows.append(row)
        return rows

    def config_of(self, m: str) -> dict:
        """The run config of method m: its run's config.yaml, or the brought checkpoint's own."""
        if m in self.given:
            from training.checkpoint import load_checkpoint

            return load_checkpoint(self.given[m])["config"]
        import yaml

        return yaml.safe_load((self.run_dir(m) / "config.yaml").read_text()) or {}

    def header(self) -> list[str]:
        """Where the numbers come from, one line each: the data root, the preset and every override (training
        config keys that differ from the preset's, analysis sizes that differ from the preset's), the device and
        threads, the versions, then each method's update rules per epoch."""
        import torch

        from training.device import pick_device
        from training.presets import make_config
        from training.provenance import versions

        overrides = {}
        for m in self.methods:
            if m not in self.given:
                overrides.update(differences(self.config_of(m), make_config(self.protocol, m, self.preset)))
        data = self.config_of(self.methods[0]).get("data", {})
        root = data.get("root", "synth")
        where = (f"SynthFAS (embedded, version {data.get('synth_version', '?')}, seed {data.get('seed', 0)})" if root == "synth"
                 else f"{Path(root).resolve()}")
        sizes = {k: v for k, v in self.s.items() if SETTINGS[self.preset].get(k) != v}
        threads = self.options["threads"] or torch.get_num_threads()
        brought = [f"models brought: " + ", ".join(f"{n} = {Path(c).resolve()}" for n, c in self.given.items())] if self.given else []
        return [f"data: {where}, {data.get('image_size', '?')} px", *brought,
                f"preset: {self.preset}; training overrides: "
                + (", ".join(f"{k} = {v}" for k, v in sorted(overrides.items())) or "none")
                + "; analysis sizes: " + (", ".join(f"{k}={v}" for k, v in sizes.items()) or "the preset's"),
                f"device: {pick_device(self.options['device'])}, {threads} torch threads",
                "versions: " + ", ".join(f"{k} {v}" for k, v in versions().items()), self.rules_line()]

    def rules_line(self) -> str:
        """'update rules: ERM: epochs 1–6 erm; SAM: epoch 1 erm-warming, 2–6 sam': each method's rule per epoch
        (metrics.json `update_rules`, index 0 = epoch 1, by training.trainer.describe_rules)."""
        from training.trainer import describe_rules

        def rules(m):
            r = json.loads((self.run_dir(m) / "metrics.json").read_text()).get("update_rules")
            return describe_rules(r) if r else "not trained here"   # a brought model's metrics.json has none

        return "update rules: " + "; ".join(f"{LABELS[m]}: {rules(m)}" for m in self.methods)

    def report(self) -> Path:
        from training.checkpoint import atomic_write

        self.say("report")
        rows = self.rows()
        domains = sorted({k for r in rows for k in r.get("lambda_domain", {})})
        # the Hessian's optional sections get a column when some method has them (`--sizes bottom_k=0` has no λ_min)
        extra = [(label, key, text) for label, key, text in (("λ_min", "lambda_min", num),
                                                             ("λ_max ± spread", "lambda_max_spread", spread_text),
                                                             ("sharpest block", "sharpest_block", block_text))
                 if any(r[key] is not None for r in rows)]
        head = ("| method | " + " | ".join(label for _, label, _ in HEADLINE) + " | cos at θ (mean / min) | "
                "conflict at SAM ascent (cos mean / min) | conflict at GAC-FAS ascents (cos mean / min) | "
                f"width at +{WIDTH_DELTA} |" + "".join(f" {label} |" for label, _, _ in extra)
                + "\n|---|" + "---|" * (len(HEADLINE) + 4 + len(extra)) + "\n")
        table = head + "".join(
            f"| {r['method']} | " + " | ".join(headline_cell(r, k, kind) for k, _, kind in HEADLINE)
            + f" | {cosines_text(r['cos_theta'])} | {num(r['conflict_sam'], 3)} {cosines_text(r['cos_sam'], True)}"
            + f" | {num(r['conflict_ascent'], 3)} {cosines_text(r['cos_ascent'], True)} | {width_text(r['width'])} |"
            + "".join(f" {text(r[key])} |" for _, key, text in extra) + "\n"
            for r in rows)
        table += "\n" + noise_table(rows)
        if domains:
            table += ("\nλ_max per domain (sources, then the target):\n\n| method | " + " | ".join(domains) + " |\n|---|"
                      + "---|" * len(domains) + "\n" + "".join(
                          f"| {r['method']} | " + " | ".join(num(r['lambda_domain'].get(dd)) for dd in domains) + " |\n" for r in rows))
        figures = [(n, t) for n, t in (("surfaces_2d.png", "2-D filter-normalized loss surfaces, log(loss + 0.1) (shared levels)"),
                                       ("curves_1d.png", "1-D curves, every domain"),
                                       ("trajectory_pca.png", "training path on its PCA plane, log(loss + 0.1)"),
                                       ("interpolations.png", "linear interpolation between methods"),
                                       ("paraview.png", "ParaView rendering")) if (self.views / n).exists()]
        pages = [n for n in ("surfaces_2d.html", "curves_1d.html", "trajectory_pca.html", "hessian.html", "conflicts.html")
                 if (self.views / n).exists()]
        seed = "" if self.seed is None else f", training seed {self.seed}"
        header = self.header()
        attention = attention_section([(LABELS[m], self.run_dir(m)) for m in self.methods],
                                      "attention.png" if (self.views / "attention.png").exists() else None)
        md = (f"# fasland study: {self.protocol} ({self.preset} preset{seed})\n\n" + "".join(f"- {l}\n" for l in header)
              + f"\n{table}\n" + INTERVALS_NOTE +
              "Conflict = mean over domain pairs of max(0, −cos) between per-domain gradients (0 whenever no pair points "
              "against another: the mean and minimum pairwise cosine beside it say how aligned the domains are); width = "
              f"length of the 1-D interval around θ where the source loss stays within {WIDTH_DELTA} of f(0); λ_min the "
              "smallest Hessian eigenvalue (negative: not a minimum along its eigenvector); λ_max ± spread the mean and "
              "standard deviation over disjoint probe subsets; sharpest block the top-level block with the largest λ_max "
              "of its own Hessian block; a value whose error bound exceeds it is marked undetermined.\n\n"
              + "".join(f"![{t}](views/{n})\n\n*{t}*\n\n" for n, t in figures)
              + "Interactive: " + ", ".join(f"[{n}](views/{n})" for n in pages) + "\n\n" + attention)
        html = report_html(self.protocol, self.preset, table, figures, pages, header, attention)
        atomic_write(self.out / "report.md", lambda tmp: tmp.write_text(md))
        atomic_write(self.out / "report.html", lambda tmp: tmp.write_text(html))
        print(table)
        print(f"report: {self.out / 'report.md'} and {self.out / 'report.html'}")
        return self.out / "report.md"


def seeds_report(studies: list[Study], out: Path) -> Path:
    """DIR/report.md (and .html) of a study over several training seeds: per method the mean ± std across seeds
    of each headline number, the differences marked within noise when the across-seed 95% t-intervals of the
    means (mean ± t₀.₉₇₅,ₙ₋₁ · std/√n) overlap, then every seed's own numbers with its 95% intervals."""
    from scipy.stats import t as student

    from training.checkpoint import atomic_write

    per_seed = [(st.seed, st.rows()) for st in studies]
    first = studies[0]
    n = len(studies)
    means = []
    for i, m in enumerate(first.methods):
        row, spread = {"method": LABELS[m], "ci": {}}, {}
        for k, _, _ in HEADLINE:
            v = np.array([rows[i][k] for _, rows in per_seed if rows[i][k] is not None], dtype=np.float64)
            if len(v) == 0:
                row[k] = None
                continue
            row[k] = float(v.mean())
            spread[k] = float(v.std(ddof=1)) if len(v) > 1 else 0.0
            half = float(student.ppf(0.975, len(v) - 1) * spread[k] / np.sqrt(len(v))) if len(v) > 1 else None
            row["ci"][k] = None if half is None else [row[k] - half, row[k] + half]
        row["std"] = spread
        means.append(row)
    seeds = ", ".join(str(st.seed) for st in studies)
    labels = " | ".join(label for _, label, _ in HEADLINE)
    table = (f"Mean ± standard deviation over {n} training seeds ({seeds}):\n\n| method | {labels} |\n|---|"
             + "---|" * len(HEADLINE) + "\n" + "".join(
                 f"| {r['method']} | " + " | ".join(mean_std(r[k], r["std"].get(k), kind) for k, _, kind in HEADLINE) + " |\n"
                 for r in means))
    table += "\n" + noise_table(means).replace("the 95% intervals overlap", "the across-seed 95% t-intervals of the means overlap")
    table += (f"\nEach seed (95% intervals):\n\n| seed | method | {labels} |\n|---|---|" + "---|" * len(HEADLINE) + "\n"
              + "".join(f"| {seed} | {r['method']} | " + " | ".join(cell(r[k], r["ci"].get(k), kind) for k, _, kind in HEADLINE) + " |\n"
                        for seed, rows in per_seed for r in rows))
    header = first.header()
    md = (f"# fasland study: {first.protocol} ({first.preset} preset), seeds {seeds}\n\n" + "".join(f"- {l}\n" for l in header)
          + f"\n{table}\n" + INTERVALS_NOTE
          + "Each seed's surfaces, spectra, conflicts and views: " + ", ".join(f"[seed {st.seed}]({st.out.name}/report.md)" for st in studies) + "\n")
    html = report_html(first.protocol, first.preset, table, [], [], header)
    atomic_write(out / "report.md", lambda tmp: tmp.write_text(md))
    atomic_write(out / "report.html", lambda tmp: tmp.write_text(html))
    print(table)
    print(f"report: {out / 'report.md'} and {out / 'report.html'}")
    return out / "report.md"


def mean_std(v, std, kind: str) -> str:
    if v is None:
        return "–"
    return f"{pct(v)} ± {100 * std:.2f}" if kind == "pct" else f"{fmt(v, kind)} ± {fmt(std, kind)}"


def axis_around(values: np.ndarray, n: int) -> str:
    """A MIN:MAX:N axis covering the projected path with a 25% margin on each side."""
    lo, hi = float(np.min(values)), float(np.max(values))
    pad = max(0.25 * (hi - lo), 1e-3)
    return f"{lo - pad:.6g}:{hi + pad:.6g}:{n}"


def hessian_numbers(h) -> dict:
    """λ_max, the trace estimate (with its standard error in `undetermined` when that exceeds it), per-domain
    λ_max, λ_min, the spread of λ_max over probe subsets and the sharpest block of a `fasland hessian` result
    (a HessianResult, or its JSON as a dict)."""
    from analysis.hessian import determined
    from analysis.intervals import batch_means_interval

    h = h if isinstance(h, HessianResult) else HessianResult.from_json(h)
    eig = h.eigenvalues or []
    lam = {d: v["lambda_max"] for d, v in h.per_domain.items()}
    spread = h.sampling or {}     # `--sample-batches B`: analysis.hessian.sampling_uncertainty's spreads
    undetermined = {} if not h.trace or determined(h.trace["mean"], h.trace["stderr"]) else {"trace": h.trace["stderr"]}
    top = spread.get("lambda_max")
    blocks = h.per_block
    sharpest = max(blocks, key=lambda b: blocks[b]["lambda_max"]) if blocks else None
    return {"lambda_max": eig[0] if eig else None, "trace": h.trace["mean"] if h.trace else None, "lambda_domain": lam,
            "lambda_min": (h.smallest or {}).get("lambda_min"),
            "lambda_max_spread": (top["mean"], top["std"]) if top else None,
            "sharpest_block": (sharpest, blocks[sharpest]["lambda_max"]) if sharpest else None, "undetermined": undetermined,
            "ci_hessian": {"lambda_max": batch_means_interval(eig[0] if eig else None, (top or {}).get("values", [])),
                           "trace": batch_means_interval(h.trace["mean"] if h.trace else None,
                                                         (spread.get("trace") or {}).get("values", []))}}


def pairwise_cosines(record: dict | None):
    """(mean, min) of the off-diagonal entries of a record's cosine matrix, None without one."""
    C = np.asarray((record or {}).get("cosines") or [], dtype=np.float64)
    if C.ndim != 2 or len(C) < 2:
        return None
    off = C[np.triu_indices(len(C), 1)]
    return float(off.mean()), float(off.min())


def cosines_text(c, brackets: bool = False) -> str:
    if c is None:
        return "" if brackets else "–"
    text = f"{c[0]:+.3f} / {c[1]:+.3f}"
    return f"({text})" if brackets else text


def spread_text(s) -> str:
    return "–" if not s or s[0] is None else f"{num(s[0])} ± {num(s[1], 2)}"


def block_text(b) -> str:
    return "–" if not b else f"{b[0]} ({num(b[1])})"


def conflict_numbers(c) -> dict:
    """Mean conflict at θ, at SAM's ascent point and among the GAC-FAS ascent gradients, from the `summary`
    of a `fasland conflicts` result (a ConflictResult, or its JSON as a dict), each with the mean and minimum
    pairwise cosine of its gradients."""
    c = c if isinstance(c, ConflictResult) else ConflictResult.from_json(c)
    s = c.summary
    return {"conflict_theta": s.get("conflict_theta"), "conflict_sam": s.get("conflict_sam"),
            "conflict_ascent": s.get("conflict_gacfas"), "cos_theta": pairwise_cosines(c.theta),
            "cos_sam": pairwise_cosines(c.sam), "cos_ascent": pairwise_cosines((c.gacfas or {}).get("generalization")),
            "ci_conflicts": {"conflict_theta": ((c.theta or {}).get("interval") or {}).get("conflict")}}


def surface_width(path: Path, delta: float) -> tuple[float, bool]:
    """Length of the interval around a = 0 where train_loss(a) ≤ train_loss(0) + delta, crossings found by
    linear interpolation; the flag is True when the interval reaches the grid's end (a lower bound)."""
    from landscape.exports.surface_file import read_surface

    s = read_surface(path)
    a, loss = s.x, s.arrays["train_loss"]
    i0 = int(np.argmin(np.abs(a)))
    level = loss[i0] + delta
    ok = np.isfinite(loss) & (loss <= level)

    def edge(step):
        i = i0
        while 0 <= i + step < len(a) and ok[i + step]:
            i += step
        if not 0 <= i + step < len(a):
            return a[i], True
        j = i + step   # first point above the level: interpolate the crossing
        if not np.isfinite(loss[j]):
            return a[i], False
        t = (level - loss[i]) / (loss[j] - loss[i])
        return a[i] + t * (a[j] - a[i]), False

    (lo, open_lo), (hi, open_hi) = edge(-1), edge(+1)
    return float(hi - lo), open_lo or open_hi


# The headline numbers, each with its 95% interval: (row key, column label, format)
HEADLINE = (("hter", "target HTER", "pct"), ("auc", "target AUC", "pct"), ("source_hter", "source HTER", "pct"),
            ("source_auc", "source AUC", "pct"), ("lambda_max", "λ_max", "num"), ("trace", "trace", "num"),
            ("conflict_theta", "conflict at θ", "num3"))
INTERVALS_NOTE = ("Brackets: 95% intervals — HTER and AUC by a bootstrap over clients (identities/videos, all "
                  "frames of a drawn client kept), λ_max and trace as value ± t·s/√B with s the spread of their values on B "
                  "disjoint probe subsets (batch means), conflict by a bootstrap "
                  "over client subsets of the per-domain gradients. A difference is *within noise* when the two "
                  "intervals overlap.\n\n")


def fmt(v, kind: str) -> str:
    return pct(v) if kind == "pct" else num(v, 3 if kind == "num3" else 4)


def cell(v, ci, kind: str) -> str:
    """The value with its interval, e.g. '18.67% [12.00, 25.33]' (percent points inside the brackets)."""
    if v is None or not ci:
        return fmt(v, kind)
    if kind == "pct":
        return f"{pct(v)} [{100 * ci[0]:.2f}, {100 * ci[1]:.2f}]"
    return f"{fmt(v, kind)} [{fmt(ci[0], kind)}, {fmt(ci[1], kind)}]"


def headline_cell(r: dict, k: str, kind: str) -> str:
    """`cell`, or 'undetermined (v ± e)' for a value whose standard error e exceeds it."""
    if k in r.get("undetermined", {}):
        return f"undetermined ({fmt(r[k], kind)} ± {num(r['undetermined'][k], 2)})"
    return cell(r[k], r["ci"].get(k), kind)


def noise_table(rows: list[dict]) -> str:
    """Every pair of methods: the difference of each headline number, marked within noise (intervals overlap
    or missing) or resolved."""
    from analysis.intervals import within_noise

    if len(rows) < 2:
        return ""
    out = ("Differences (first − second; *within noise*: the 95% intervals overlap):\n\n| pair | "
           + " | ".join(label for _, label, _ in HEADLINE) + " |\n|---|" + "---|" * len(HEADLINE) + "\n")
    for i, a in enumerate(rows):
        for b in rows[i + 1:]:
            cells = []
            for k, _, kind in HEADLINE:
                if a[k] is None or b[k] is None:
                    cells.append("–")
                    continue
                d = a[k] - b[k]
                diff = f"{100 * d:+.2f} pp" if kind == "pct" else f"{d:+.3g}"
                ca, cb = a["ci"].get(k), b["ci"].get(k)
                cells.append(f"{diff} (no interval)" if not ca or not cb else
                             f"{diff} *within noise*" if within_noise(ca, cb) else f"{diff} resolved")
            out += f"| {a['method']} − {b['method']} | " + " | ".join(cells) + " |\n"
    return out


def pct(v) -> str:
    return "–" if v is None else f"{100 * v:.2f}%"


def num(v, digits: int = 4) -> str:
    return "–" if v is None else f"{v:.{digits}g}"


def width_text(w) -> str:
    value, open_ended = w
    return f"≥ {value:.3g}" if open_ended else f"{value:.3g}"


def differences(run: dict, preset: dict, prefix: str = "") -> dict:
    """{'section.key': value} wherever the run's config differs from the preset's (keys the preset lacks too)."""
    out = {}
    for k, v in run.items():
        name = f"{prefix}{k}"
        if isinstance(v, dict) and isinstance(preset.get(k), dict):
            out.update(differences(v, preset[k], name + "."))
        elif k not in preset or preset[k] != v:
            out[name] = v
    return out


def attention_numbers(summary: dict) -> dict:
    """{"target"|"sources": {face, edge_hand, background, area}} from an attention.json: the target's mean
    fractions over its images (all of them), the sources' the mean over source domains of theirs; area is the
    face's share of the pixels. None where unknown (real crops know only the face)."""
    f = summary["fractions"]

    def four(d):
        return {**{k: f[d]["all"][k] for k in ("face", "edge_hand", "background")}, "area": f[d]["area"]["face"]}

    sources = [four(d) for d in f if d != summary["target"]]
    return {"target": four(summary["target"]),
            "sources": {k: mean_known([s[k] for s in sources]) for k in ("face", "edge_hand", "background", "area")}}


def mean_known(values: list):
    known = [v for v in values if v is not None]
    return sum(known) / len(known) if known else None


def attention_section(runs: list[tuple[str, Path]], figure: str | None = None) -> str:
    """The report's Attention section (markdown): per method (label, run directory) the Grad-CAM shares of
    <run>/attention/attention.json (`attention_numbers`), the figure views/<figure>, and for unseen-attack
    protocols the target AUC per held-out attack kind of <run>/metrics.json."""
    numbers = [(label, attention_numbers(json.loads((d / "attention" / "attention.json").read_text()))) for label, d in runs]
    cols = [(part, k) for part in ("target", "sources") for k in ("face", "edge_hand", "background", "area")]
    names = {"face": "face", "edge_hand": "edge+hand", "background": "background", "area": "face area"}
    md = ("## Attention\n\nWhere the live score looks: the mean share of each Grad-CAM map's mass on the face, on "
          "the attack medium's edge and the hand, and on the background, on the target's probe images and over the "
          "sources (mean of the source domains); face area is the face's share of the pixels, what an evenly spread "
          "map would give (real crops: the face is the centre ellipse, the other regions unknown, –).\n\n"
          "| method | " + " | ".join(f"{part} {names[k]}" for part, k in cols) + " |\n|---|" + "---|" * len(cols) + "\n"
          + "".join(f"| {label} | " + " | ".join(num_fixed(n[part][k]) for part, k in cols) + " |\n" for label, n in numbers))
    if figure:
        md += f"\n![Grad-CAM on the target's images](views/{figure})\n\n*Grad-CAM on the target's images, one row per method*\n"
    by_kind = [(label, json.loads((d / "metrics.json").read_text())["final"]["target"].get("auc_by_kind")) for label, d in runs]
    kinds = list(dict.fromkeys(k for _, a in by_kind for k in (a or {})))
    if kinds:
        md += ("\nTarget AUC per held-out attack kind (live against that kind alone, attacks no source trained on):\n\n"
               "| method | " + " | ".join(f"AUC {k}" for k in kinds) + " |\n|---|" + "---|" * len(kinds) + "\n"
               + "".join(f"| {label} | " + " | ".join(pct((a or {}).get(k)) for k in kinds) + " |\n" for label, a in by_kind))
    return md


def num_fixed(v, digits: int = 3) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


def tables_html(md: str) -> str:
    """The markdown tables of `md` (runs of '|' lines) as HTML tables."""
    import html

    blocks, current = [], []
    for l in md.splitlines():
        if l.startswith("|"):
            current.append(l)
        elif current:
            blocks.append(current)
            current = []
    if current:
        blocks.append(current)
    tables = ""
    for block in blocks:
        rows = [[html.escape(c.strip()) for c in l.strip("|").split("|")] for l in block if not l.startswith("|---")]
        tables += "<table><tr>" + "".join(f"<th>{c}</th>" for c in rows[0]) + "</tr>" + "".join(
            "<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows[1:]) + "</table>\n"
    return tables


def section_html(md: str) -> str:
    """A report section's markdown as HTML: '## ' headings, tables, '![caption](src)' figures, paragraphs."""
    import html
    import re

    out = ""
    for part in re.split(r"\n\s*\n", md.strip()):
        figure = re.fullmatch(r"!\[(.*)\]\((.*)\)", part.strip())
        if part.startswith("## "):
            out += f"<h2>{html.escape(part[3:].strip())}</h2>"
        elif part.startswith("|"):
            out += tables_html(part)
        elif figure:
            out += f'<figure><img src="{html.escape(figure[2])}" alt="{html.escape(figure[1])}"><figcaption>{html.escape(figure[1])}</figcaption></figure>'
        elif not re.fullmatch(r"\*.*\*", part.strip()):      # a figure's caption line: already the figcaption
            out += f"<p>{html.escape(part.strip())}</p>"
    return out


def report_html(protocol: str, preset: str, table_md: str, figures, pages, header=(), sections: str = "") -> str:
    """The report as one HTML page (its header lines, the table converted from its markdown, figures beside it,
    then `sections`, markdown such as `attention_section`'s)."""
    import html

    tables = tables_html(table_md)
    figs = "".join(f'<figure><img src="views/{n}" alt="{html.escape(t)}"><figcaption>{html.escape(t)}</figcaption></figure>' for n, t in figures)
    links = " · ".join(f'<a href="views/{n}">{n}</a>' for n in pages)
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>fasland study {protocol}</title><style>"
            "body{font-family:sans-serif;max-width:1200px;margin:2em auto}table{border-collapse:collapse;margin:1em 0}"
            "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}img{max-width:100%}figure{margin:1em 0}</style></head>"
            f"<body><h1>fasland study: {protocol} ({preset} preset)</h1>"
            + ("<ul>" + "".join(f"<li>{html.escape(l)}</li>" for l in header) + "</ul>" if header else "") + f"{tables}"
            "<p>Conflict = mean over domain pairs of max(0, −cos) between per-domain gradients; width = length of the "
            f"1-D interval around θ where the source loss stays within {WIDTH_DELTA} of f(0).</p>"
            f"<p>Interactive pages: {links}</p>{figs}{section_html(sections)}</body></html>")
