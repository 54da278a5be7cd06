"""The result files of `fasland hessian` and `fasland conflicts`: one schema each, shared by the writer
(analysis.commands), the views (analysis.views, shown by `fasland export html`) and the study report.

Each is a dataclass with `to_json()` / `from_json(data, path)` and a `version`; a file of an older or
unknown version, or one that is not such a result, gets one sentence (FaslandError). Sections are plain
dicts under named keys; a key the dataclass does not name is kept in `extra` and written back unchanged,
so a newer writer's additions survive a read-modify-write. To add a section: add a field (default None or
an empty dict), bump nothing if old files simply lack it, bump VERSION if its meaning changes.
"""
import json
from dataclasses import dataclass, field, fields
from pathlib import Path

from training.errors import FaslandError


def read_json(path) -> dict:
    """The JSON object in `path`, or one sentence naming the file."""
    p = Path(path)
    if not p.is_file():
        raise FaslandError(f"file '{path}' not found; pass a JSON written by 'fasland hessian' or 'fasland conflicts'")
    try:
        data = json.loads(p.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise FaslandError(f"'{path}' is not readable JSON ({e.__class__.__name__}); pass a file written by "
                           "'fasland hessian' or 'fasland conflicts', or rerun that command") from None
    if not isinstance(data, dict):
        raise FaslandError(f"'{path}' holds a JSON {type(data).__name__}, not an object; pass a file written by "
                           "'fasland hessian' or 'fasland conflicts'")
    return data


class Result:
    """What both schemas share: the command that wrote the file, its version, the checkpoint and its
    training method, the resume key and the provenance; `extra` keeps keys this version does not name."""
    COMMAND = ""
    VERSION = 1

    @classmethod
    def from_json(cls, data: dict, path="the result"):
        """The result in `data` (a parsed file), checked: its command and version, then each named section."""
        redo = f"rerun 'fasland {cls.COMMAND}' to rewrite it"
        if data.get("command") != cls.COMMAND:
            raise FaslandError(f"'{path}' is not a result of 'fasland {cls.COMMAND}' (command: {data.get('command')!r}); "
                               f"pass the --out file of 'fasland {cls.COMMAND}'")
        version = data.get("version")
        if version is None:
            raise FaslandError(f"'{path}' was written by an older fasland (no result version; this one reads version "
                               f"{cls.VERSION}); {redo}")
        if version != cls.VERSION:
            raise FaslandError(f"'{path}' is a {cls.COMMAND} result of version {version!r}, which this fasland does not "
                               f"know (it reads version {cls.VERSION}); {redo} or update fasland")
        names = {f.name for f in fields(cls)} - {"extra"}
        obj = cls(**{k: v for k, v in data.items() if k in names},
                  extra={k: v for k, v in data.items() if k not in names and k != "command"})
        problem = obj.problem()
        if problem:
            raise FaslandError(f"'{path}' is not a valid {cls.COMMAND} result ({problem}); {redo}")
        return obj

    @classmethod
    def read(cls, path):
        return cls.from_json(read_json(path), path)

    def to_json(self) -> dict:
        out = {"command": self.COMMAND}
        for f in fields(self):
            if f.name != "extra":
                out[f.name] = getattr(self, f.name)
        return {**out, **self.extra}

    def problem(self) -> str:
        """'' when every named section has its layout, else what is wrong (in a few words)."""
        return ""


def _numbers(v) -> bool:
    return isinstance(v, list) and all(isinstance(x, (int, float)) for x in v)


def _square(m, k: int | None = None) -> bool:
    return (isinstance(m, list) and len(m) > 0 and all(_numbers(r) and len(r) == len(m) for r in m)
            and (k is None or len(m) == k))


@dataclass
class HessianResult(Result):
    """`fasland hessian`: sections eigenvalues (+ train_loss, eigenvalue_health), smallest, trace, density,
    per_domain, per_block, sampling; `sections` records,
    per section name, the settings it was computed with, its Hessian-vector products and seconds."""
    COMMAND = "hessian"
    VERSION = 1
    version: int = VERSION
    method: str | None = None           # the checkpoint's training method
    checkpoint: str | None = None
    key: dict = field(default_factory=dict)          # what a section must match to be reused
    provenance: dict = field(default_factory=dict)
    sections: dict = field(default_factory=dict)     # name → {settings, hvps, seconds}
    eigenvalues: list | None = None     # top-k, descending
    train_loss: float | None = None     # L(θ) on the probe's sources
    trace: dict | None = None           # {mean, stderr, n_samples, samples}
    density: dict | None = None         # {grid, density, sigma, nodes, weights}
    per_domain: dict = field(default_factory=dict)   # domain → {lambda_max, role, samples, health}
    # analysis.hessian.Eigenvalues.health() of each eigenvalue: {value, error (bound), converged, products}
    eigenvalue_health: list | None = None
    smallest: dict | None = None        # --bottom-k: {eigenvalues (ascending), health, lambda_min, convexity_ratio}
    per_block: dict = field(default_factory=dict)    # block → {lambda_max, trace, trace_stderr, parameters, health}
    sampling: dict | None = None        # --sample-batches: analysis.hessian.sampling_uncertainty's result
    extra: dict = field(default_factory=dict)

    def problem(self) -> str:
        if self.eigenvalues is not None and not _numbers(self.eigenvalues):
            return "eigenvalues is not a list of numbers"
        if self.trace is not None and not (isinstance(self.trace, dict) and isinstance(self.trace.get("mean"), (int, float))):
            return "trace has no numeric mean"
        if self.density is not None:
            d = self.density
            if not (isinstance(d, dict) and _numbers(d.get("grid")) and _numbers(d.get("density"))
                    and len(d["grid"]) == len(d["density"])):
                return "density needs grid and density lists of one length"
        if not isinstance(self.per_domain, dict) or not all(
                isinstance(v, dict) and isinstance(v.get("lambda_max"), (int, float)) for v in self.per_domain.values()):
            return "per_domain needs a lambda_max for each domain"
        return ""


@dataclass
class ConflictResult(Result):
    """`fasland conflicts`: the source `domains`, the records `theta`, `sam` and `gacfas` of the checkpoint
    (analysis.conflicts.conflicts' layout: each a k×k `cosines`, `norms`, `conflict`; gacfas has `points`
    per domain, `generalization`, `alignment`), their `summary`, and a `trajectory` of such records over epochs."""
    COMMAND = "conflicts"
    VERSION = 1
    version: int = VERSION
    method: str | None = None
    checkpoint: str | None = None
    key: dict = field(default_factory=dict)
    provenance: dict = field(default_factory=dict)
    domains: list = field(default_factory=list)
    theta: dict | None = None
    sam: dict | None = None
    gacfas: dict | None = None
    summary: dict = field(default_factory=dict)      # conflict_theta, conflict_sam, conflict_gacfas, mean_alignment_cosine
    trajectory: list = field(default_factory=list)   # [{checkpoint, epoch, sha256, theta, sam, gacfas, summary}]
    extra: dict = field(default_factory=dict)

    def records(self, entry: dict | None = None) -> dict:
        """{point: record} of the checkpoint (or of one trajectory entry): theta, sam, 'ascent D' per domain,
        generalization — each record with its k×k `cosines`."""
        e = self.to_json() if entry is None else entry
        out = {}
        for name in ("theta", "sam"):
            if isinstance(e.get(name), dict):
                out[name] = e[name]
        g = e.get("gacfas")
        if isinstance(g, dict):
            out.update({f"ascent {d}": r for d, r in (g.get("points") or {}).items()})
            if isinstance(g.get("generalization"), dict):
                out["generalization"] = g["generalization"]
        return out

    def problem(self) -> str:
        if not (isinstance(self.domains, list) and self.domains):
            return "no domains"
        k = len(self.domains)
        if not isinstance(self.trajectory, list) or not all(isinstance(e, dict) for e in self.trajectory):
            return "trajectory is not a list of records"
        for e in [None, *self.trajectory]:
            for name, r in self.records(e).items():
                if not _square(r.get("cosines"), k):
                    return f"{name} has no {k}×{k} cosine matrix"
        if self.theta is None and not self.trajectory:
            return "neither theta nor a trajectory"
        return ""
