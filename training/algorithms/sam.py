"""Sharpness-aware minimization (Foret et al. 2021) and its adaptive variant ASAM (Kwon et al. 2021)."""
import torch

from training.algorithms.base import Algorithm


@torch.no_grad()
def sam_perturbation(params, grads, rho: float, adaptive: bool = False, inplace: bool = False) -> list[torch.Tensor]:
    """The ascent step ε: ρ g/(‖g‖ + 1e-12), or adaptive ρ θ² g/(‖|θ| g‖ + 1e-12); norms over all tensors.
    inplace=True writes ε into the tensors of `grads` (no allocation)."""
    if adaptive:
        norms = [torch.linalg.vector_norm(p.abs().mul_(g)) for p, g in zip(params, grads)]
    else:
        norms = torch._foreach_norm(grads)
    scale = rho / (torch.linalg.vector_norm(torch.stack(norms)) + 1e-12)
    eps = grads if inplace else [g.clone() for g in grads]
    if adaptive:
        for p, e in zip(params, eps):
            e.mul_(p * p).mul_(scale)
    else:
        torch._foreach_mul_(eps, scale)
    return list(eps)


class SAM(Algorithm):
    """θ ← SGD step on ∇L(θ + ε; S) [+ ∇ supcon at θ], ε = sam_perturbation(θ, ∇L(θ; S)), on the same batch."""

    HPARAMS = {"rho": 0.05, "adaptive": False}

    def gradient(self, batch, named) -> dict:
        params = [p for _, p in named]
        logs, g = self.theta_gradient(batch, params, keep=True)
        eps = sam_perturbation(params, g, self.hparams["rho"], self.hparams["adaptive"], inplace=True)
        del g
        logs["loss_ascent"] = self.add_ascent_gradient(batch, params, eps, self.denominator(batch))
        return logs
