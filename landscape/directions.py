"""Directions in weight space (Li et al. 2018).

A direction is a list of float32 CPU tensors, one per model tensor: `model.parameters()` order for
dir_type="weights", `model.state_dict()` order for "states" (BatchNorm running statistics included;
integer buffers such as num_batches_tracked get a zero direction). Kinds:

- random: d ~ N(0, I), each filter rescaled d_f ← d_f ‖θ_f‖ / ‖d_f‖ (or per layer / per weight);
  1-D tensors (bias, BN) zeroed ("biasbn") or set to θ itself ("none"), as the reference does;
- interpolation: d = θ_b − θ_a, so θ_a + 1·d = θ_b;
- PCA of a training trajectory: the top-2 principal components of {θ_e − θ_final};
- Hessian eigenvectors (`eigenvector_directions`): unit vectors v₁, v₂ of ∇²L (analysis.hessian computes
  them), normalized like random ones; their eigenvalues are stored as attributes.

Saved in the reference layout: groups `xdirection`/`ydirection`, one dataset per tensor named 0, 1, ….
"""
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from training.checkpoint import atomic_write, trajectory_checkpoints
from training.errors import FaslandError

NORMS = ("filter", "layer", "weight", "none")
IGNORES = ("biasbn", "none")
DIR_TYPES = ("weights", "states")
PCA_DATASETS = ("explained_variance_ratio_", "explained_variance_", "singular_values_",
                "proj_xcoord", "proj_ycoord", "proj_epochs")


@dataclass
class Directions:
    """d1 (x) and optionally d2 (y); `recipe` says how they were made (provenance, resume identity);
    `extra` holds the PCA datasets (explained variance, the projected trajectory)."""

    x: list
    y: list | None = None
    dir_type: str = "weights"
    recipe: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)
    attrs: dict = field(default_factory=dict)   # numbers stored as file attributes (Hessian: eigenvalues)

    @property
    def ndim(self) -> int:
        return 1 if self.y is None else 2


def check_choice(value, choices, flag):
    if value not in choices:
        raise FaslandError(f"{flag} '{value}' is not known; use one of {', '.join(choices)}")


def model_tensors(model: nn.Module, dir_type: str = "weights") -> list[torch.Tensor]:
    """The tensors a direction moves, detached but sharing storage with the model."""
    check_choice(dir_type, DIR_TYPES, "--dir-type")
    if dir_type == "weights":
        return [p.detach() for p in model.parameters()]
    return [t.detach() for t in model.state_dict(keep_vars=True).values()]


def state_tensors(state: dict, model: nn.Module, dir_type: str, source: str) -> list[torch.Tensor]:
    """A state_dict's tensors in the order of `model_tensors(model, dir_type)`."""
    names = ([n for n, _ in model.named_parameters()] if dir_type == "weights" else list(model.state_dict()))
    missing = [n for n in names if n not in state]
    if missing:
        raise FaslandError(f"'{source}' has no tensor '{missing[0]}' (and {len(missing) - 1} more missing); pass a checkpoint of the same architecture")
    ref = model_tensors(model, dir_type)
    for n, r in zip(names, ref):
        if tuple(state[n].shape) != tuple(r.shape):
            raise FaslandError(f"'{source}' tensor '{n}' has shape {tuple(state[n].shape)}, the model's {tuple(r.shape)}; pass a checkpoint of the same architecture")
    return [state[n] for n in names]


def normalize_direction(d: torch.Tensor, w: torch.Tensor, norm: str = "filter", ignore: str = "biasbn") -> torch.Tensor:
    """In place. 1-D (and 0-D) tensors: d ← 0 ('biasbn') or d ← θ ('none'). Otherwise
    filter: d_f ← d_f ‖θ_f‖/(‖d_f‖ + 1e-10) for each filter f (first axis); layer: d ← d ‖θ‖/‖d‖;
    weight: d ← d ⊙ θ; none: unchanged."""
    w = w.detach().to("cpu", torch.float32)
    if d.dim() <= 1:
        return d.zero_() if ignore == "biasbn" else d.copy_(w)
    if norm == "filter":
        scale = w.flatten(1).norm(dim=1) / (d.flatten(1).norm(dim=1) + 1e-10)
        d.mul_(scale.view(-1, *([1] * (d.dim() - 1))))
    elif norm == "layer":
        d.mul_(w.norm() / (d.norm() + 1e-10))
    elif norm == "weight":
        d.mul_(w)
    return d


def random_direction(model: nn.Module, seed: int = 0, norm: str = "filter", ignore: str = "biasbn",
                     dir_type: str = "weights", generator: torch.Generator | None = None) -> list[torch.Tensor]:
    """d ~ N(0, I) from a CPU generator (same numbers on any device), normalized against θ.
    Pass one `generator` to draw several directions from one stream (x, then y)."""
    check_choice(norm, NORMS, "--xnorm/--ynorm")
    check_choice(ignore, IGNORES, "--xignore/--yignore")
    g = generator if generator is not None else torch.Generator().manual_seed(int(seed))
    out = []
    for w in model_tensors(model, dir_type):
        d = torch.randn(tuple(w.shape), generator=g, dtype=torch.float32)
        out.append(normalize_direction(d, w, norm, ignore) if w.is_floating_point() else d.zero_())
    return out


def eigenvector_directions(model: nn.Module, vectors, eigenvalues, norm: str = "filter", ignore: str = "biasbn",
                           health=None, ynorm: str | None = None, yignore: str | None = None) -> Directions:
    """Directions (x = vectors[0], y = vectors[1]) from eigenvectors given per parameter (`model.parameters()`
    order, None for a parameter the vector does not move). Multi-dimensional tensors are normalized as
    random directions are (`normalize_direction`; norm "none" keeps the eigenvector); 1-D tensors are zeroed
    with ignore="biasbn" and kept with "none" (copying θ into them would make it no direction of curvature).
    y takes ynorm/yignore (default: norm/ignore)."""
    settings = [(norm, ignore), (ynorm or norm, yignore or ignore)]
    for n, i in settings:
        check_choice(n, NORMS, "--xnorm/--ynorm")
        check_choice(i, IGNORES, "--xignore/--yignore")
    params = model_tensors(model, "weights")
    dirs = []
    for vector, (norm, ignore) in zip(vectors, settings):
        d = []
        for v, w in zip(vector, params):
            t = torch.zeros(tuple(w.shape)) if v is None else v.detach().to("cpu", torch.float32).reshape(tuple(w.shape)).clone()
            if t.dim() <= 1:
                d.append(t.zero_() if ignore == "biasbn" else t)
            else:
                d.append(normalize_direction(t, w, norm, ignore) if norm != "none" else t)
        dirs.append(d)
    values = [float(v) for v in eigenvalues]
    recipe = {"kind": "hessian", "norm": settings[0][0], "ignore": settings[0][1], "eigenvalues": values}
    attrs = {"eigenvalues": np.asarray(values[:len(dirs)], dtype=np.float64)}
    if health is not None:
        recipe["health"] = list(health)
    return Directions(dirs[0], dirs[1] if len(dirs) > 1 else None, "weights", recipe, attrs=attrs)


def difference(start: list[torch.Tensor], end: list[torch.Tensor]) -> list[torch.Tensor]:
    """end − start per tensor (float32, CPU); integer tensors give 0."""
    return [(e.detach().to("cpu", torch.float32) - s.detach().to("cpu", torch.float32)) if s.is_floating_point()
            else torch.zeros(tuple(s.shape)) for s, e in zip(start, end)]


def interpolation_direction(model_a: nn.Module, model_b: nn.Module, dir_type: str = "weights") -> list[torch.Tensor]:
    """d = θ_b − θ_a: the point a = 0 is model_a, a = 1 is model_b."""
    return difference(model_tensors(model_a, dir_type), model_tensors(model_b, dir_type))


def flat(direction: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([d.reshape(-1).to(torch.float64) for d in direction])


def cosine(x: list[torch.Tensor], y: list[torch.Tensor]) -> float:
    """⟨x, y⟩ / (‖x‖ ‖y‖) over all tensors."""
    fx, fy = flat(x), flat(y)
    return float(fx @ fy / (fx.norm() * fy.norm() + 1e-300))


def orthogonalize(x: list[torch.Tensor], y: list[torch.Tensor]) -> list[torch.Tensor]:
    """Gram–Schmidt: y ← y − (⟨y, x⟩/⟨x, x⟩) x, rescaled to keep ‖y‖ (its per-filter norms then change)."""
    fx, fy = flat(x), flat(y)
    c = float(fx @ fy / (fx @ fx))
    out = [(b.double() - c * a.double()) for a, b in zip(x, y)]
    scale = float(fy.norm() / flat(out).norm())
    return [(t * scale).float() for t in out]


def pca_directions(model: nn.Module, checkpoints, dir_type: str = "weights", ignore: str = "biasbn") -> Directions:
    """PC1, PC2 of the rows θ_e − θ (θ = `model`, the final point), as the reference does; 1-D tensors
    are left out when ignore='biasbn'. `checkpoints`: a run directory (its checkpoints/epoch_*.pt) or
    a list of checkpoint paths. `extra` gets the explained variance (scikit-learn's names) and the
    trajectory projected onto the plane: (⟨θ_e − θ, pc1⟩, ⟨θ_e − θ, pc2⟩)."""
    from training.checkpoint import load_checkpoint

    check_choice(ignore, IGNORES, "--xignore")
    if isinstance(checkpoints, (str, os.PathLike)):
        checkpoints = trajectory_checkpoints(checkpoints, at_least=3)
    base = model_tensors(model, dir_type)
    rows, epochs = [], []
    for i, path in enumerate(checkpoints):
        ckpt = load_checkpoint(path)
        d = difference(base, state_tensors(ckpt["model"], model, dir_type, str(path)))
        if ignore == "biasbn":
            d = [t.zero_() if t.dim() <= 1 else t for t in d]
        rows.append(torch.cat([t.reshape(-1) for t in d]))
        epochs.append(int(ckpt.get("epoch", i)))
    matrix = torch.stack(rows)
    del rows
    pcs, variance, ratio, singular = principal_components(matrix, 2)
    proj = project_rows(matrix, pcs)
    x, y = (unflatten(pc, base) for pc in pcs)
    extra = {"explained_variance_ratio_": ratio, "explained_variance_": variance, "singular_values_": singular,
             "proj_xcoord": proj[:, 0], "proj_ycoord": proj[:, 1], "proj_epochs": np.asarray(epochs, dtype=np.int64)}
    return Directions(x, y, dir_type, extra=extra)


def column_chunks(p: int, size: int = 1 << 20):
    return (slice(i, min(i + size, p)) for i in range(0, p, size))


def principal_components(rows: torch.Tensor, k: int = 2):
    """Exact PCA of n ≪ p rows (what scikit-learn's PCA computes) through the n×n Gram matrix of the
    centred rows C, in float64: C Cᵀ = U Λ Uᵀ, component_j = C ᵀu_j / √λ_j, explained variance
    λ_j/(n − 1). A float32 SVD of the n × p matrix is slower and loses digits over p ≈ 10⁷ terms.
    Each component's largest entry is made positive (scikit-learn's sign convention).
    Returns (components float32 [k, p], explained_variance_, explained_variance_ratio_, singular_values_)."""
    n, p = rows.shape
    mean = torch.cat([rows[:, c].double().mean(0) for c in column_chunks(p)])
    gram = torch.zeros(n, n, dtype=torch.float64)
    for c in column_chunks(p):
        centred = rows[:, c].double() - mean[c]
        gram += centred @ centred.T
    lam, u = torch.linalg.eigh(gram)
    lam, u = lam.flip(0).clamp_min(0), u.flip(1)
    if n <= k or lam[k - 1] <= 1e-12 * max(float(lam[0]), 1e-300):
        raise FaslandError(f"the trajectory spans fewer than {k} independent directions; use a run with more distinct epoch checkpoints")
    comps = torch.empty(k, p, dtype=torch.float32)
    for c in column_chunks(p):
        comps[:, c] = (u[:, :k].T @ (rows[:, c].double() - mean[c]) / lam[:k].sqrt()[:, None]).float()
    signs = torch.sign(comps.gather(1, comps.abs().argmax(1, keepdim=True))).squeeze(1)
    comps *= signs[:, None]
    lam_k = lam[:k].numpy()
    return comps, lam_k / (n - 1), lam_k / float(lam.sum()), np.sqrt(lam_k)


def project_rows(rows: torch.Tensor, directions: torch.Tensor) -> np.ndarray:
    """⟨row, d⟩/‖d‖ for every row and direction (the reference's 'cos' projection), in float64."""
    out = torch.zeros(rows.shape[0], directions.shape[0], dtype=torch.float64)
    norms = torch.zeros(directions.shape[0], dtype=torch.float64)
    for c in column_chunks(rows.shape[1]):
        d = directions[:, c].double()
        out += rows[:, c].double() @ d.T
        norms += (d * d).sum(1)
    return (out / norms.sqrt()).numpy()


def unflatten(vector: torch.Tensor, like: list[torch.Tensor]) -> list[torch.Tensor]:
    """A flat vector cut into tensors shaped like `like`."""
    out, i = [], 0
    for t in like:
        out.append(vector[i:i + t.numel()].reshape(tuple(t.shape)).clone())
        i += t.numel()
    return out


def save_directions(path, directions: Directions, attrs: dict | None = None) -> None:
    """Write the reference layout to a temporary file, then rename (a kill never leaves a torn file)."""
    import h5py

    def write(tmp):
        with h5py.File(tmp, "w", locking=False) as f:
            for name, d in (("xdirection", directions.x), ("ydirection", directions.y)):
                if d is not None:
                    g = f.create_group(name)
                    for i, t in enumerate(d):
                        g.create_dataset(str(i), data=t.numpy())
            for k, v in directions.extra.items():
                f[k] = v
            f.attrs["dir_type"] = directions.dir_type
            f.attrs["recipe"] = json.dumps(directions.recipe, sort_keys=True)
            for k, v in {**directions.attrs, **(attrs or {})}.items():
                f.attrs[k] = v

    atomic_write(path, write)


def load_directions(path, model: nn.Module | None = None, dir_type: str | None = None) -> Directions:
    """Read a direction file (ours or the reference's); with `model`, check each tensor's shape."""
    import h5py

    p = Path(path)
    if not p.is_file():
        raise FaslandError(f"direction file '{path}' not found; pass an .h5 with xdirection (and ydirection) groups, e.g. SURF.dirs.h5 of an earlier surface")
    try:
        f = h5py.File(p, "r", locking=False)
    except OSError:
        raise FaslandError(f"direction file '{path}' is not a readable HDF5 file; pass a direction .h5 written by fasland or the loss-landscape code") from None
    with f:
        if "xdirection" not in f or not isinstance(f["xdirection"], h5py.Group):
            raise FaslandError(f"direction file '{path}' has no 'xdirection' group; pass a direction .h5 written by fasland or the loss-landscape code")
        stored_type = f.attrs.get("dir_type")
        stored_type = stored_type.decode() if isinstance(stored_type, bytes) else stored_type
        if stored_type and dir_type and stored_type != dir_type:
            raise FaslandError(f"direction file '{path}' holds '{stored_type}' directions, not '{dir_type}'; pass --dir-type {stored_type}")
        dir_type = stored_type or dir_type or "weights"
        x = read_group(f, "xdirection", path)
        y = read_group(f, "ydirection", path) if "ydirection" in f else None
        recipe = json.loads(f.attrs["recipe"]) if "recipe" in f.attrs else {}
        extra = {k: f[k][()] for k in PCA_DATASETS if k in f}
        attrs = {k: np.asarray(f.attrs[k]) for k in ("eigenvalues",) if k in f.attrs}
    dirs = Directions(x, y, dir_type, recipe, extra, attrs)
    if model is not None:
        check_fits(dirs, model, path)
    return dirs


def read_group(f, name, path) -> list[torch.Tensor]:
    g = f[name]
    try:
        return [torch.from_numpy(np.asarray(g[str(i)][()], dtype=np.float32)) for i in range(len(g))]
    except (KeyError, ValueError, TypeError):
        raise FaslandError(f"direction file '{path}': group '{name}' is not a list of numeric datasets 0..{len(g) - 1}; pass a direction .h5 in the reference layout") from None


def check_fits(dirs: Directions, model: nn.Module, path) -> None:
    """Each direction has one tensor per model tensor, of the same shape."""
    ref = model_tensors(model, dirs.dir_type)
    for name, d in (("xdirection", dirs.x), ("ydirection", dirs.y)):
        if d is None:
            continue
        if len(d) != len(ref):
            raise FaslandError(f"direction file '{path}' has {len(d)} tensors in {name} but the model has {len(ref)} {dirs.dir_type}; "
                               "make the directions for this architecture and --dir-type")
        for i, (t, r) in enumerate(zip(d, ref)):
            if tuple(t.shape) != tuple(r.shape):
                raise FaslandError(f"direction file '{path}' tensor {name}/{i} has shape {tuple(t.shape)}, the model's is {tuple(r.shape)}; "
                                   "make the directions for this architecture and --dir-type")
