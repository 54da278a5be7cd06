"""Per-domain gradient conflict: how the source domains' gradients point relative to each other at θ,
at SAM's ascent point and at each domain's GAC-FAS ascent point θ_i.

With G_i = ∇L(θ; S_i) (the gradient of domain i's mean loss):
  cosines   C_ij = ⟨G_i, G_j⟩ / (‖G_i‖ ‖G_j‖)                 (k × k)
  conflict  mean over pairs i < j of max(0, −C_ij)            (0: no pair points against another)
  ∇L(θ; S) = (1/k) Σ_i G_i                                     (docs/ARCHITECTURE.md, "The science")
SAM's ascent point θ + ε and GAC-FAS's θ_i = θ + ε_i come from the trainers' own functions
(`sam_perturbation`, `gacfas_perturbations`), fed these gradients. At every point the k per-domain
gradients are taken again; at the θ_i also the "generalization gradients" ∇L(θ_i; S), their k × k
cosines, and the alignment ⟨∇L(θ_i; S), ∇L(θ; S)⟩ (and its cosine) that GAC-FAS's objective rewards.

Every loss is in eval mode on the probe's data, exactly as the Hessian's (analysis.hessian). Under MPI
the per-domain gradients of a stage are spread over ranks and summed into place.
"""
import torch

from training.algorithms.base import cosine_matrix, gram_matrix, moved_to
from training.algorithms.gacfas import gacfas_perturbations
from training.algorithms.sam import sam_perturbation
from training.errors import FaslandError
from training.probe import batch_weights, eval_mode

AT = ("theta", "ascent", "both")


def _as_batches(data) -> list:
    """One domain's data: a list of (x, y) batches, or a single (x, y)."""
    if isinstance(data, tuple) and len(data) == 2 and isinstance(data[0], torch.Tensor):
        return [data]
    return list(data)


def _named_trainable(model):
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def loss_gradient(model, loss_fn, batches) -> torch.Tensor:
    """∇_θ of the union's mean loss over `batches` (eval mode), flat over the trainable parameters."""
    batches = _as_batches(batches)
    params = [p for _, p in _named_trainable(model)]
    g = torch.zeros(sum(p.numel() for p in params), dtype=params[0].dtype, device=params[0].device)
    with eval_mode(model):
        for (x, y), w in zip(batches, batch_weights(batches)):
            grads = torch.autograd.grad(loss_fn(model(x), y), params, allow_unused=True)
            g += w * torch.cat([(torch.zeros_like(p) if t is None else t).reshape(-1) for t, p in zip(grads, params)])
    return g


def domain_gradients(model, loss_fn, domain_batches, world=None, progress=None) -> torch.Tensor:
    """G (k × dim): row i = ∇L(θ; S_i). Under MPI rank r computes rows i ≡ r (mod ranks)."""
    domain_batches = list(domain_batches.values()) if isinstance(domain_batches, dict) else list(domain_batches)
    return _spread(model, len(domain_batches), lambda i: loss_gradient(model, loss_fn, domain_batches[i]), world, progress)


def _spread(model, n: int, row, world=None, progress=None) -> torch.Tensor:
    """Stack row(0..n−1) (flat gradients of `model`); under MPI each rank computes rows i ≡ rank (mod ranks)
    into a zero matrix and the matrices are summed over ranks."""
    rank, size = (0, 1) if world is None else (world.rank, world.size)
    params = [p for _, p in _named_trainable(model)]
    out = torch.zeros(n, sum(p.numel() for p in params), dtype=params[0].dtype, device=params[0].device)
    for i in range(rank, n, size):
        out[i] = row(i)
        if progress is not None:
            progress.update(min(size, n - i))
    return out if size == 1 else world.sum(out)


def conflict_score(C: torch.Tensor) -> float:
    """mean over i < j of max(0, −C_ij): the average amount by which pairs of gradients point against each other."""
    k = len(C)
    if k < 2:
        return 0.0
    i, j = torch.triu_indices(k, k, offset=1)
    return (-C[i, j]).clamp_min(0).mean().item()


def gradient_cosines(model, loss_fn, domain_batches) -> torch.Tensor:
    """The k × k cosine matrix of the domains' gradients ∇L(θ; S_i) at θ (eval mode)."""
    return cosine_matrix(gram_matrix(domain_gradients(model, loss_fn, domain_batches)))


def summary(G: torch.Tensor) -> dict:
    """cosines, norms, conflict and mean off-diagonal cosine of the rows of G, as JSON-ready numbers."""
    gram = gram_matrix(G)
    C = cosine_matrix(gram)
    k = len(C)
    i, j = torch.triu_indices(k, k, offset=1)
    return {"cosines": C.tolist(), "norms": gram.diagonal().sqrt().tolist(), "conflict": conflict_score(C),
            "mean_cosine": C[i, j].mean().item() if k > 1 else 1.0}


def split(model, flat: torch.Tensor) -> list[torch.Tensor]:
    """A flat vector as per-parameter tensors (views)."""
    params = [p for _, p in _named_trainable(model)]
    return [t.view_as(p) for t, p in zip(flat.split([p.numel() for p in params]), params)]


def flatten(tensors) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


def sam_ascent(model, G: torch.Tensor, rho: float, adaptive: bool = False) -> torch.Tensor:
    """SAM's ε at θ for g = ∇L(θ; S) = mean_i G_i, by the trainer's own `sam_perturbation`; flat."""
    params = [p.detach() for _, p in _named_trainable(model)]
    return flatten(sam_perturbation(params, split(model, G.mean(0)), rho, adaptive))


def gacfas_ascents(model, G: torch.Tensor, rho: float, eta: float, alpha: float, official_accumulation: bool = False) -> list:
    """GAC-FAS's ε_i, θ_i = θ + ε_i, by the trainer's own `gacfas_perturbations` with g_i = G_i / k and
    ∇L(θ; S) = Σ_i g_i; flat, one per domain."""
    k = len(G)
    named = [(n, p.detach()) for n, p in _named_trainable(model)]
    g = [split(model, G[i] / k) for i in range(k)]
    full = split(model, G.mean(0))
    return [flatten(e) for e in gacfas_perturbations(named, g, full, rho, eta, alpha, official_accumulation)]


def point_gradients(model, loss_fn, domain_batches, eps_list, world=None, progress=None) -> torch.Tensor:
    """(points × k × dim): the k per-domain gradients at each θ + ε (the (point, domain) pairs spread over ranks)."""
    domain_batches = list(domain_batches.values()) if isinstance(domain_batches, dict) else list(domain_batches)
    k = len(domain_batches)

    def row(u):
        point, i = divmod(u, k)
        params = [p for _, p in _named_trainable(model)]
        with moved_to(model, params, split(model, eps_list[point].clone())):
            return loss_gradient(model, loss_fn, domain_batches[i])

    return _spread(model, len(eps_list) * k, row, world, progress).view(len(eps_list), k, -1)


def conflicts(model, loss_fn, domain_batches, at: str = "both", rho: float = 0.1, eta: float = 0.0, alpha: float = 0.0002,
              adaptive: bool = False, official_accumulation: bool = False, names=None, world=None, progress=None) -> dict:
    """Every conflict measure of one model (see the module docstring) as a JSON-ready dict:
    theta: summary of G at θ, with the domain losses' gradient ∇L(θ; S)'s norm;
    sam (at ascent/both): summary of the per-domain gradients at θ + ε_SAM;
    gacfas (at ascent/both): per domain i, the summary of the per-domain gradients at θ_i; the summary of
    the generalization gradients ∇L(θ_i; S) across i; alignment ⟨∇L(θ_i; S), ∇L(θ; S)⟩ and its cosine."""
    if at not in AT:
        raise FaslandError(f"--at {at} is not one of {', '.join(AT)}")
    if isinstance(domain_batches, dict):
        names = names or list(domain_batches)
        domain_batches = list(domain_batches.values())
    k = len(domain_batches)
    if k < 2:
        raise FaslandError(f"gradient conflict needs at least two source domains, got {k}; use a protocol with several sources")
    names = [str(n) for n in (names or range(k))]
    G = domain_gradients(model, loss_fn, domain_batches, world, progress)
    full = G.mean(0)
    out = {"domains": names, "theta": {**summary(G), "full_gradient_norm": full.double().norm().item()}}
    if at == "theta":
        return out
    eps = [sam_ascent(model, G, rho, adaptive)] + gacfas_ascents(model, G, rho, eta, alpha, official_accumulation)
    P = point_gradients(model, loss_fn, domain_batches, eps, world, progress)
    out["sam"] = {"rho": rho, "adaptive": adaptive, **summary(P[0])}
    gen = P[1:].mean(1)                       # ∇L(θ_i; S) = (1/k) Σ_j ∇L(θ_i; S_j)
    dots = (gen.double() @ full.double()).tolist()
    cos = (gen.double() @ full.double() / (gen.double().norm(dim=1) * full.double().norm()).clamp_min(1e-300)).tolist()
    out["gacfas"] = {
        "rho": rho, "eta": eta, "alpha": alpha, "official_accumulation": official_accumulation,
        "points": {n: summary(P[1 + i]) for i, n in enumerate(names)},
        "generalization": summary(gen),
        "alignment": dict(zip(names, dots)),
        "alignment_cosine": dict(zip(names, cos)),
    }
    return out


def work_units(at: str, k: int) -> int:
    """Gradients one `conflicts` call computes: k at θ, plus k at each of the 1 + k ascent points."""
    return k if at == "theta" else k + (k + 1) * k
