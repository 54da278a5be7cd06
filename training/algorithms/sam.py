"""Sharpness-aware minimization (Foret et al. 2021) and its adaptive variant ASAM (Kwon et al. 2021)."""
import torch

from training.algorithms.base import Algorithm, gradient_logs, total


@torch.no_grad()
def sam_perturbation(params, grads, rho: float, adaptive: bool = False) -> list[torch.Tensor]:
    """The ascent step ε: ρ g/(‖g‖ + 1e-12), or adaptive ρ θ² g/(‖|θ| g‖ + 1e-12); norms over all tensors."""
    if adaptive:
        norms = [torch.linalg.vector_norm(p.abs().mul_(g)) for p, g in zip(params, grads)]
    else:
        norms = torch._foreach_norm(grads)
    scale = rho / (torch.linalg.vector_norm(torch.stack(norms)) + 1e-12)
    if adaptive:
        return [(p * p).mul_(g).mul_(scale) for p, g in zip(params, grads)]
    return list(torch._foreach_mul(grads, scale))


class SAM(Algorithm):
    """θ ← SGD step on ∇L(θ + ε; S) [+ ∇ supcon at θ], ε = sam_perturbation(θ, ∇L(θ; S)), on the same batch."""

    HPARAMS = {"rho": 0.05, "adaptive": False}

    def gradient(self, batch, named) -> dict:
        params = [p for _, p in named]
        losses, aux = self.forward(batch)
        n = self.denominator(batch)
        logs = self.loss_logs(batch, losses, aux, n)
        if self.log_gradients:
            gs = self.domain_gradients(losses, n, params, retain_last=aux is not None)
            logs.update(gradient_logs(batch.domains, gs, n))
            g = total(gs)
            del gs
        else:
            g = list(torch.autograd.grad(sum(losses) / n, params, retain_graph=aux is not None,
                                         allow_unused=True, materialize_grads=True))
        if aux is not None:
            aux.backward(inputs=params)
        del losses, aux
        eps = sam_perturbation(params, g, self.hparams["rho"], self.hparams["adaptive"])
        del g
        logs["loss_ascent"] = self.add_ascent_gradient(batch, params, eps, n)
        return logs

