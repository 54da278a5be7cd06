"""The surface engine: f(a, b) = probe(θ + a·d1 + b·d2) at every point of a grid.

Each point writes θ + a·d1 + b·d2 into the model's own tensors (no copy of the model, no tensor
allocated per point), then runs the probe, whose one pass gives every metric (per domain, train, test,
HTER, AUC). Non-finite values far from θ are stored as they come (NaN/inf) and never stop the job.
Points go in the reference's flat order k = iy·nx + ix, row by row of fixed b: θ + b·d2 is formed
once per row and each point is then a single pass t ← (θ + b·d2) + a·d1 (a snake order would save
nothing more: every point rewrites every moved tensor anyway).

Evaluation options (recorded in the provenance as `evaluation`, part of the surface's identity):
- precision: float32 on every device by default; autocast "bf16" or "fp16" on request;
- bn: "theta" keeps θ's BatchNorm running statistics at every point (the reference's choice);
  "recompute" re-estimates them at each point from the given images (`recompute_batchnorm`);
- measure: any model → {name: float} evaluated after the probe at each point (e.g. the curvature of
  analysis.hessian.curvature_measure: datasets lambda_max, lambda_min, convexity_ratio).
"""
import math

import numpy as np
import torch
from torch import nn

from landscape import mpi
from landscape.directions import Directions, cosine, model_tensors
from landscape.store import SurfaceStore
from training.errors import FaslandError
from training.provenance import versions


def parse_axis(spec: str, flag: str = "--x") -> np.ndarray:
    """'MIN:MAX:N' → N evenly spaced coordinates from MIN to MAX (np.linspace)."""
    parts = str(spec).split(":")
    hint = f"use {flag} MIN:MAX:N such as -1:1:51"
    if len(parts) != 3:
        raise FaslandError(f"grid spec '{flag} {spec}' is not MIN:MAX:N; {hint}")
    try:
        lo, hi = float(parts[0]), float(parts[1])
    except ValueError:
        raise FaslandError(f"grid spec '{flag} {spec}' has a MIN or MAX that is not a number; {hint}") from None
    try:
        n = int(parts[2])
    except ValueError:
        raise FaslandError(f"grid spec '{flag} {spec}' has N '{parts[2]}' that is not a whole number; {hint}") from None
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise FaslandError(f"grid spec '{flag} {spec}' has a MIN or MAX that is not finite; {hint}")
    if n <= 0:
        raise FaslandError(f"grid spec '{flag} {spec}' asks for {n} points; N must be at least 1, {hint}")
    if n == 1 and lo != hi:
        raise FaslandError(f"grid spec '{flag} {spec}' asks for 1 point between two different ends; for one point pass MIN = MAX "
                           f"(e.g. {flag} {parts[0]}:{parts[0]}:1), else N ≥ 2")
    if n > 1 and not lo < hi:
        raise FaslandError(f"grid spec '{flag} {spec}' has MIN ≥ MAX; {hint}")
    return np.linspace(lo, hi, n)


class Grid:
    """The points (x[ix], y[iy]) in the reference's flat order k = iy·nx + ix (1-D: k = ix, b = 0)."""

    def __init__(self, xcoords, ycoords=None):
        self.x = np.asarray(xcoords, dtype=np.float64)
        self.y = None if ycoords is None else np.asarray(ycoords, dtype=np.float64)
        self.shape = (len(self.x),) if self.y is None else (len(self.x), len(self.y))
        self.size = int(np.prod(self.shape))

    def point(self, k: int) -> tuple[float, float]:
        nx = len(self.x)
        return float(self.x[k % nx]), (0.0 if self.y is None else float(self.y[k // nx]))


class Plane:
    """The affine plane θ + a·d1 + b·d2, written in place into the model's tensors.
    Keeps θ, d1, d2 (on the model's device, dtype and memory format) and θ + b·d2 for the current b
    for the whole surface; `move_to` allocates nothing, and along a row (fixed b) it is one pass
    t ← (θ + b·d2) + a·d1 over the moved tensors. Tensors no direction moves are never touched."""

    def __init__(self, model: nn.Module, directions: Directions):
        targets = model_tensors(model, directions.dir_type)
        if len(directions.x) != len(targets) or (directions.y is not None and len(directions.y) != len(targets)):
            raise FaslandError(f"the directions have {len(directions.x)} tensors but the model has {len(targets)} {directions.dir_type}; "
                               "make the directions for this model and --dir-type")
        ys = directions.y if directions.y is not None else [None] * len(targets)
        self.moves = []   # (tensor, θ, d1, d2 or None, θ + b·d2 or θ)
        for t, dx, dy in zip(targets, directions.x, ys):
            dy = dy if dy is not None and bool(dy.any()) else None
            if t.is_floating_point() and (bool(dx.any()) or dy is not None):
                w = t.clone()
                self.moves.append((t, w, like(dx, t), None if dy is None else like(dy, t), w if dy is None else w.clone()))
        self.b = 0.0

    @torch.no_grad()
    def move_to(self, a: float, b: float = 0.0) -> None:
        """t ← θ + a·d1 + b·d2 for every moved tensor t."""
        if b != self.b:
            for _, w, _, dy, wb in self.moves:
                if dy is not None:
                    torch.add(w, dy, alpha=b, out=wb)
            self.b = b
        for t, _, dx, _, wb in self.moves:
            torch.add(wb, dx, alpha=a, out=t)

    @torch.no_grad()
    def reset(self) -> None:
        for t, w, *_ in self.moves:
            t.copy_(w)


def like(d: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """d with t's device, dtype and memory format."""
    return torch.empty_like(t).copy_(d)


def model_device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return torch.device("cpu") if p is None else p.device


PRECISIONS = {"float32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
# |metric(bf16/fp16) − metric(float32)| ≤ tol·(|metric(float32)| + 0.01) for losses near θ
# (tests/test_curvature.py measures it on a small network with BatchNorm on CPU).
AUTOCAST_TOLERANCE = {"bf16": 0.03, "fp16": 0.005}
BN_MODES = ("theta", "recompute")


def precision_of(autocast) -> str:
    """The precision of an autocast setting: None, False or "float32" → float32; "bf16"; "fp16"."""
    if autocast in (None, False, "float32"):
        return "float32"
    if autocast in ("bf16", "fp16"):
        return autocast
    raise FaslandError(f"--autocast '{autocast}' is not known; use bf16 or fp16 (float32 is the default)")


def check_evaluation(autocast, bn: str) -> str:
    """The precision of `autocast`, once `autocast` and `bn` are known settings (one sentence otherwise)."""
    if bn not in BN_MODES:
        raise FaslandError(f"--bn '{bn}' is not known; use theta (θ's running statistics) or recompute")
    return precision_of(autocast)


def evaluate(probe, model: nn.Module, autocast=None) -> dict[str, float]:
    """probe(model) as floats; with autocast "bf16"/"fp16" the forward runs under torch.autocast in that
    dtype (on the model's device), else in the model's own dtype (float32)."""
    dtype = PRECISIONS[precision_of(autocast)]
    if dtype is not None:
        with torch.autocast(model_device(model).type, dtype=dtype):
            metrics = probe(model)
    else:
        metrics = probe(model)
    return {k: float(v) for k, v in metrics.items()}


def batchnorms(model: nn.Module) -> list:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


@torch.no_grad()
def recompute_batchnorm(model: nn.Module, inputs) -> None:
    """BatchNorm running statistics re-estimated at the current weights: reset, then one train-mode pass
    without gradients over `inputs` (tensors, or (x, y) batches) with momentum None, so each statistic is
    the plain average over the batches of their batch mean / unbiased batch variance (as
    torch.optim.swa_utils.update_bn does). The model's mode and momenta are restored."""
    bns = batchnorms(model)
    if not bns:
        return
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    was_training = model.training
    model.train()
    try:
        for x in inputs:
            model(x[0] if isinstance(x, (tuple, list)) else x)
    finally:
        for m, momentum in zip(bns, momenta):
            m.momentum = momentum
        model.train(was_training)


class BatchNormState:
    """A copy of every BatchNorm buffer, put back by `restore` (recompute changes them at every point)."""

    def __init__(self, model: nn.Module):
        self.saved = [(b, b.clone()) for m in batchnorms(model) for b in m.buffers()]

    @torch.no_grad()
    def restore(self) -> None:
        for b, v in self.saved:
            b.copy_(v)


def compute_surface(model: nn.Module, probe, directions: Directions, xcoords, ycoords=None, out_path=None,
                    provenance: dict | None = None, comm=None, progress: bool = True, autocast=None,
                    channels_last: bool = True, root_computes: bool = True, bn: str = "theta", bn_inputs=None,
                    measure=None, measure_spec: dict | None = None) -> SurfaceStore | None:
    """Every metric of `probe` (any callable model → {name: float}) at θ + x[ix]·d1 + y[iy]·d2.

    Results go to `out_path` (None: kept in memory), resumed if the file holds this very surface and
    refused if it holds another. Under MPI (`comm`) every rank calls this with the same arguments;
    rank 0 returns the store, the others None. autocast: None (float32, the default), "bf16" or "fp16".
    bn="recompute" re-estimates BatchNorm statistics at each point from `bn_inputs` (the sources' probe
    images) before evaluating. `measure` (model → {name: float}) adds datasets at each point; `measure_spec`
    names it in the provenance."""
    if ycoords is not None and directions.y is None:
        raise FaslandError("a 2-D grid (--y) needs two directions but only an x direction was given; add --y directions or drop --y")
    precision = check_evaluation(autocast, bn)
    if bn == "recompute" and not bn_inputs:
        raise FaslandError("--bn recompute needs images to re-estimate BatchNorm statistics from; pass the sources' probe batches")
    evaluation = {"precision": precision, "bn": bn, "measure": measure_spec if measure is not None else None}
    if channels_last:
        model.to(memory_format=torch.channels_last)
    grid = Grid(xcoords, None if directions.y is None else ycoords)
    store = None

    def open_store():
        nonlocal store
        prov = {"versions": versions(), "directions": directions.recipe, "dir_type": directions.dir_type, "evaluation": evaluation,
                **({"direction_cosine": cosine(directions.x, directions.y)} if directions.y is not None else {}),
                **(provenance or {})}
        if out_path is None:
            store = SurfaceStore(None, grid.x, grid.y, prov, directions.extra)
        else:
            store = SurfaceStore.open(out_path, grid.x, grid.y, prov, directions.extra)
        return store.missing()

    todo = mpi.on_root(comm, open_store)
    bar = None
    try:
        plane = mpi.on_every_rank(comm, lambda: Plane(model, directions))
        bn_state = BatchNormState(model) if bn == "recompute" else None
        if mpi.rank(comm) == 0 and progress:
            from tqdm import tqdm
            bar = tqdm(total=grid.size, initial=grid.size - len(todo), desc="surface", unit="point", dynamic_ncols=True)

        def evaluate_point(k):
            plane.move_to(*grid.point(k))
            if bn_state is not None:
                recompute_batchnorm(model, bn_inputs)
            metrics = evaluate(probe, model, precision)
            if measure is not None:
                metrics.update(measure(model))
            return metrics

        def record(k, metrics):
            store.record(k, metrics)
            store.save_if_due()
            if bar is not None:
                bar.update()

        try:
            mpi.map_points(comm, todo, evaluate_point, record, root_computes)
        finally:
            plane.reset()
            if bn_state is not None:
                bn_state.restore()
    finally:
        if bar is not None:
            bar.close()
        if store is not None:
            store.close()
    return store
