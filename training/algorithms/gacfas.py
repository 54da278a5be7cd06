"""GAC-FAS (Le & Woo, CVPR 2024): one ascent point per source domain,
    θ_i = θ + ρ T² g_i/‖T g_i‖ − α ∇L(θ; S),   g_i = ∇L(θ; S_i)/k,   T = |θ| + η on "weight" tensors,
and the update gradient ∇L(θ; S) [+ ∇ supcon] + (1/k') Σ_i ∇L(θ_i; S) over the k' domains present, then
the base SGD step. `official_accumulation=True` reproduces the authors' released optimizer instead (see
`official_domain_gradients`)."""
import torch

from training.algorithms.base import Algorithm, gradient_logs, total


@torch.no_grad()
def gacfas_perturbation(named_params, domain_grad, alpha_grad, rho: float, eta: float, alpha: float,
                        inplace: bool = False) -> list[torch.Tensor]:
    """ε = ρ T² d/(‖T d‖ + 1e-16) − α m, T = |θ| + η on parameters whose name contains "weight", identity
    elsewhere, ‖·‖ over all tensors. Paper: d = g_i, m = ∇L(θ; S); θ_i = θ + ε. inplace=True writes ε into
    the tensors of `domain_grad`."""
    def scaling(name, p):                 # T, or None for identity; a fresh tensor the caller may overwrite
        if "weight" not in name:
            return None
        return p.abs().add_(eta) if eta else p.abs()

    norms = []
    for (n, p), d in zip(named_params, domain_grad):
        t = scaling(n, p)
        norms.append(torch.linalg.vector_norm(d if t is None else t.mul_(d)))
    scale = rho / (torch.linalg.vector_norm(torch.stack(norms)) + 1e-16)
    eps = []
    for (n, p), d, m in zip(named_params, domain_grad, alpha_grad):
        t = scaling(n, p)
        e = d if inplace else d.clone()
        if t is not None:
            e.mul_(t.square_())
        eps.append(e.mul_(scale).sub_(m, alpha=alpha))
    return eps


@torch.no_grad()
def official_domain_gradients(domain_grads):
    """The released optimizer's bookkeeping over all k domains in order: after domain i's backward the shared
    buffer holds c_i = g_0 + … + g_i; domain i's gradient is taken as d_i = c_i − a_{i−1} with
    a_i = c_0 + … + c_i (a_{−1} = 0), and a_{k−1} replaces ∇L(θ; S) in the α term. For k = 3: g_0, g_1,
    g_2 − g_0 and 3g_0 + 2g_1 + g_2. An absent domain (None) adds nothing to c, its c still adds to a, and
    its d is None. `domain_grads` may be any iterable. Returns ([d_i], a_{k−1})."""
    c = a = None
    ds = []
    for g in domain_grads:
        if g is not None:
            c = list(g) if c is None else [x + y for x, y in zip(c, g)]     # never written in place: aliases are safe
        ds.append(None if g is None else list(c) if a is None else [x - y for x, y in zip(c, a)])
        if c is not None:
            a = list(c) if a is None else [x + y for x, y in zip(a, c)]
    return ds, a


def gacfas_perturbations(named_params, domain_grads, full_grad, rho: float, eta: float, alpha: float,
                         official_accumulation: bool = False) -> list:
    """ε_i for each domain (None where domain_grads[i] is None), θ_i = θ + ε_i. domain_grads: g_i = ∇L(θ; S_i)/k
    in domain order; full_grad: ∇L(θ; S) = Σ g_i (ignored with official_accumulation, which uses a_{k−1})."""
    if official_accumulation:
        domain_grads, full_grad = official_domain_gradients(domain_grads)
    return [None if d is None else gacfas_perturbation(named_params, d, full_grad, rho, eta, alpha) for d in domain_grads]


def handed_over(items: list):
    """Yield the items one by one, dropping the list's reference to each, so its memory goes when used."""
    for j in range(len(items)):
        item, items[j] = items[j], None
        yield item


class GACFAS(Algorithm):
    """Every forward pass (θ and each θ_i) runs on the whole concatenated batch in train mode; θ is
    perturbed in place and restored, and the BatchNorm running statistics end as the θ pass left them.
    Logs per-domain losses, L(θ_i; S) as loss_ascent_<i>, and the gradient norms and cosines at θ."""

    HPARAMS = {"rho": 0.1, "eta": 0.0, "alpha": 0.0002, "official_accumulation": False}

    def denominator(self, batch) -> int:
        """Paper: the k' domains present; official: k, as the release divides each domain's loss by the
        number of sources whether or not the domain is in the batch."""
        return self.num_domains if self.hparams["official_accumulation"] else len(batch.domains)

    def gradient(self, batch, named) -> dict:
        params = [p for _, p in named]
        losses, aux = self.forward(batch)
        n = self.denominator(batch)
        logs = self.loss_logs(batch, losses, aux, n)
        gs = self.domain_gradients(losses, n, params, retain_last=aux is not None)
        logs.update(gradient_logs(batch.domains, gs, n))
        if aux is not None:
            aux.backward(inputs=params)           # .grad = w ∇supcon(θ); the θ graph is freed here
        del losses, aux
        full = total(gs)         # ∇L(θ; S)
        official = self.hparams["official_accumulation"]
        if official:
            in_order = [None] * self.num_domains
            for i, g in zip(batch.domains, gs):
                in_order[i] = g
            del gs
            ds, m = official_domain_gradients(handed_over(in_order))
            ds = [d for d in ds if d is not None]
        else:
            ds, m = gs, full
            del gs
        h = self.hparams
        eps = []                 # every ε_i first (ε_i in g_i's memory), so ∇L(θ; S) can become .grad
        for j in range(len(ds)):
            eps.append(gacfas_perturbation(named, ds[j], m, h["rho"], h["eta"], h["alpha"], inplace=not official))
            ds[j] = None
        del ds, m
        with torch.no_grad():    # .grad [= w ∇supcon] += ∇L(θ; S); the ascent gradients accumulate onto it
            for p, g in zip(params, handed_over(full)):
                if p.grad is None:
                    p.grad = g
                else:
                    p.grad.add_(g)
        for i, e in zip(batch.domains, handed_over(eps)):
            logs[f"loss_ascent_{i}"] = self.add_ascent_gradient(batch, params, e, n, scale=1 / len(batch.domains))
        return logs
