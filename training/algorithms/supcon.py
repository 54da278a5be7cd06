"""Two-view supervised-contrastive feature loss (Khosla et al. 2020), as the GAC-FAS recipe uses it."""
import torch
import torch.nn.functional as F


def supcon_loss(z1: torch.Tensor, z2: torch.Tensor, classes: torch.Tensor,
                temperature: float = 0.1, base_temperature: float = 0.07) -> torch.Tensor:
    """f = normalize([z1; z2]) (2N anchors), s_ab = ⟨f_a, f_b⟩/τ, P(a) = {p ≠ a : class p = class a};
    L = −(τ/τ_base) · mean_a mean_{p∈P(a)} [s_ap − log Σ_{b≠a} exp s_ab].
    z1, z2: [N, d] features of the two views of the same N images; classes: [N] (here 2·domain + label).
    Every anchor has its other view as a positive, so P(a) is never empty."""
    f = F.normalize(torch.cat([z1, z2]), dim=1)
    c = torch.cat([classes, classes])
    self_pair = torch.eye(len(f), dtype=torch.bool, device=f.device)
    s = (f @ f.T / temperature).masked_fill(self_pair, float("-inf"))
    log_prob = s - torch.logsumexp(s, dim=1, keepdim=True)
    positive = (c[:, None] == c[None, :]) & ~self_pair
    mean_positive = log_prob.masked_fill(~positive, 0.0).sum(1) / positive.sum(1)
    return -(temperature / base_temperature) * mean_positive.mean()
