"""What every method shares: hyper-parameters, the batch of present domains, the source loss L(θ; S),
per-domain gradients and their log, the ascent-point gradient, and the base SGD step.

Minibatches, one entry per source domain in domain order:
  (x, y)      images and labels (float or long, 1 = live, 0 = spoof);
  (x, y, x2)  plus x2, a second augmented view of the same images. Every forward pass then runs on both
              views (view 1 of all present domains, then view 2), each domain's loss is its BCE over both
              views, and with supcon_weight > 0 the supervised-contrastive loss of the two views' features
              (supcon.py; classes = domain × label) is added at θ, as the GAC-FAS release does;
  None, or an x with no rows: the domain is absent from this batch and skipped.

Switches the trainer sets between steps (all False by default):
  warming        a plain ERM step, ∇L(θ; S) [+ supcon], whatever the method (the trainer's `train.minimizer_warming` epochs)
  head_only      only parameters named `head.*` get gradients and are stepped (the paper's first epoch);
                 the others keep grad None, so SGD leaves them, their momentum and weight decay alone
  log_gradients  ERM/SAM also return gnorm_<i> and cos_<i>_<j> at θ (GAC-FAS always does)

`update` returns floats: loss = L(θ; S), loss_<i> = L(θ; S_i) for each present domain i, loss_supcon (the
unweighted supcon loss) when on, gnorm_<i> = ‖∇L(θ; S_i)‖ and cos_<i>_<j> (all k'×k' pairs) of the
per-domain gradients at θ, and L at the ascent point(s): loss_ascent (SAM), loss_ascent_<i> (GAC-FAS).
An absent domain has no keys.
"""
import contextlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from training.algorithms.supcon import supcon_loss
from training.errors import FaslandError

def bce(logits: torch.Tensor, y: torch.Tensor, logit_scale: float = 1.0) -> torch.Tensor:
    """Mean binary cross-entropy of sigmoid(logit_scale · logit) against y (1 = live)."""
    return F.binary_cross_entropy_with_logits(logit_scale * logits, y.to(logits.dtype))


@dataclass
class Batch:
    """The domains present in one update, concatenated for a single forward pass."""
    domains: list[int]          # indices of the present domains
    x: torch.Tensor             # view 1 of every present domain, then view 2 (if any)
    y: list[torch.Tensor]       # per present domain, its labels once per view
    sizes: list[int]            # per present domain, samples per view
    views: int                  # 1 or 2
    classes: torch.Tensor       # per sample of one view: 2·domain + label (the supcon classes)


class Algorithm:
    """One optimizer step per `update(minibatches)`. A subclass defines `gradient(batch, params)`, which
    leaves the update gradient in each trainable parameter's .grad; the base SGD step follows.

    HPARAMS are the only defaults of the hyper-parameters: a class declares its own keys, `defaults()` adds
    those of its bases; presets and configs override them (`training.algorithms.hparams`)."""

    HPARAMS: dict = {
        "lr": 0.01,
        "momentum": 0.9,
        "weight_decay": 5e-4,
        "head_lr_mult": 1.0,         # the paper recipe trains the head at 10× the backbone's rate
        "logit_scale": 1.0,          # BCE on sigmoid(logit_scale · logit)
        "supcon_weight": 0.0,        # two-view supervised-contrastive feature loss (0 = off; paper 0.2)
    }
    needs_depth = False              # update() takes (x, y, depth) per domain (RFM)
    warms_as_erm = True              # its `warming` step is ERM's (erm_gradient + the base SGD step), so a run's
                                     # warming epochs equal an ERM run's (the trainer's warm start; every domain is
                                     # in every trainer batch, so the GAC-FAS denominators agree too)

    @classmethod
    def defaults(cls) -> dict:
        """Every hyper-parameter the class accepts with its default: the HPARAMS of its bases, then its own."""
        out = {}
        for c in reversed(cls.__mro__):
            out.update(vars(c).get("HPARAMS", {}))
        return out

    def __init__(self, model: nn.Module, num_domains: int, hparams: dict | None = None):
        defaults = self.defaults()
        hparams = dict(hparams or {})
        unknown = sorted(set(hparams) - set(defaults))
        if unknown:
            raise FaslandError(f"unknown hyper-parameter(s) {', '.join(unknown)} for {type(self).__name__}; known: {', '.join(sorted(defaults))}")
        self.hparams = {**defaults, **hparams}
        if self.hparams["supcon_weight"] and not (hasattr(model, "features") and hasattr(model, "head")):
            raise FaslandError(f"supcon_weight = {self.hparams['supcon_weight']} needs a model with .features(x) and .head (FASNet); set supcon_weight 0 for {type(model).__name__}")
        self.model = model
        self.num_domains = num_domains
        self.warming = self.head_only = self.log_gradients = False
        self.optimizer = torch.optim.SGD(self.param_groups(), lr=self.hparams["lr"],
                                         momentum=self.hparams["momentum"], weight_decay=self.hparams["weight_decay"])

    def param_groups(self) -> list[dict]:
        """Backbone at lr, head (parameters named `head.*`) at lr × head_lr_mult."""
        head = [p for n, p in self.model.named_parameters() if n.startswith("head.")]
        body = [p for n, p in self.model.named_parameters() if not n.startswith("head.")]
        lr = self.hparams["lr"]
        return [g for g in ({"params": body, "lr": lr}, {"params": head, "lr": lr * self.hparams["head_lr_mult"]}) if g["params"]]

    def trainable(self) -> list[tuple[str, nn.Parameter]]:
        """(name, parameter) of what this step trains: all parameters with requires_grad, or the head's."""
        named = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad and (not self.head_only or n.startswith("head."))]
        if not named:
            raise FaslandError("the model has no trainable parameters" + (" named head.*; set head_only False" if self.head_only else ""))
        return named

    # ---- one step -------------------------------------------------------------------------------------

    def extra_state(self) -> dict:
        """Tensors a method keeps beside the model (RFM's depth head); saved in checkpoints."""
        return {}

    def load_extra_state(self, state: dict) -> None:
        pass

    def update(self, minibatches) -> dict:
        """One optimizer step; returns loss, loss_<i> (and gnorm_<i>, cos_<i>_<j>, loss_supcon when computed)."""
        batch = self.batch(minibatches)
        named = self.trainable()
        self.optimizer.zero_grad(set_to_none=True)
        logs = self.erm_gradient(batch, named) if self.warming else self.gradient(batch, named)
        self.optimizer.step()
        return logs

    def gradient(self, batch: Batch, named) -> dict:
        raise NotImplementedError

    def erm_gradient(self, batch: Batch, named) -> dict:
        """.grad = ∇L(θ; S) [+ ∇ supcon]; per-domain gradients only when log_gradients is set."""
        return self.theta_gradient(batch, [p for _, p in named])[0]

    def theta_gradient(self, batch: Batch, params, keep: bool = False):
        """One forward at θ → (logs, g). g = ∇L(θ; S) is put in .grad (keep=False; g None) or returned (keep=True);
        w ∇supcon(θ) always goes into .grad. With log_gradients g is Σ_i g_i of the logged per-domain gradients."""
        losses, aux = self.forward(batch)
        n = self.denominator(batch)
        logs = self.loss_logs(batch, losses, aux, n)
        if self.log_gradients:
            gs = self.domain_gradients(losses, n, params, retain_last=aux is not None)
            logs.update(gradient_logs(batch.domains, gs, n))
            g = total(gs)
            del gs
        elif keep:
            g = list(torch.autograd.grad(sum(losses) / n, params, retain_graph=aux is not None,
                                         allow_unused=True, materialize_grads=True))
        else:               # one backward of the sum: no gradient is held twice
            loss = sum(losses) / n
            (loss if aux is None else loss + aux).backward(inputs=params)
            return logs, None
        if not keep:
            set_grad(params, g)
            g = None
        if aux is not None:
            aux.backward(inputs=params)
        return logs, g

    # ---- pieces the methods share ---------------------------------------------------------------------

    def batch(self, minibatches) -> Batch:
        """Check the per-domain minibatches and concatenate the present ones (see the module docstring)."""
        if not isinstance(minibatches, (list, tuple)) or len(minibatches) != self.num_domains:
            got = len(minibatches) if isinstance(minibatches, (list, tuple)) else type(minibatches).__name__
            raise FaslandError(f"update got {got} domain minibatches for {self.num_domains} source domains; pass one (x, y) per domain, None for an absent one")
        present = []
        for i, b in enumerate(minibatches):
            if b is None:
                continue
            if not isinstance(b, (list, tuple)) or len(b) not in (2, 3):
                raise FaslandError(f"domain {i}'s minibatch must be (x, y) or (x, y, x2), not {type(b).__name__} of length {len(b) if hasattr(b, '__len__') else '?'}")
            if len(b[0]) != len(b[1]) or (len(b) == 3 and b[2].shape != b[0].shape):
                raise FaslandError(f"domain {i}'s minibatch has {len(b[0])} images, {len(b[1])} labels" + (f" and a second view of shape {tuple(b[2].shape)}" if len(b) == 3 else "") + "; pass matching x, y (and x2)")
            if len(b[0]):
                present.append((i, b))
        if not present:
            raise FaslandError("every domain minibatch is empty; pass at least one (x, y) with samples")
        views = {len(b) - 1 for _, b in present}
        if len(views) > 1:
            raise FaslandError("some domains carry a second view (x, y, x2) and others not; pass the same form for every domain")
        views = views.pop()
        if self.hparams["supcon_weight"] and views == 1:
            raise FaslandError(f"supcon_weight = {self.hparams['supcon_weight']} needs two views; pass (x, y, x2) per domain or set supcon_weight 0")
        x = torch.cat([b[0] for _, b in present] + ([b[2] for _, b in present] if views == 2 else []))
        ys = [b[1].reshape(-1) for _, b in present]
        return Batch(domains=[i for i, _ in present], x=x, y=[y.repeat(views) for y in ys],
                     sizes=[len(y) for y in ys], views=views,
                     classes=torch.cat([2 * i + y.long() for (i, _), y in zip(present, ys)]))

    def loss(self, logits, y):
        return bce(logits, y, self.hparams["logit_scale"])

    def forward(self, batch: Batch, supcon: bool = True):
        """One train-mode forward of the whole batch → ([L(θ; S_i)] over present domains, w·supcon or None)."""
        aux = None
        if supcon and self.hparams["supcon_weight"]:
            z = self.model.features(batch.x)
            logits = self.model.head(z)
            z1, z2 = z.reshape(2, len(z) // 2, -1)
            aux = self.hparams["supcon_weight"] * supcon_loss(z1, z2, batch.classes)
        else:
            logits = self.model(batch.x)
        parts = logits.reshape(batch.views, -1).split(batch.sizes, dim=1)
        return [self.loss(p.reshape(-1), y) for p, y in zip(parts, batch.y)], aux

    def denominator(self, batch: Batch) -> int:
        """L(θ; S) = (1/n) Σ_i L(θ; S_i) with n = the number of domains present."""
        return len(batch.domains)

    def loss_logs(self, batch, losses, aux, n) -> dict:
        logs = {"loss": (sum(losses) / n).item(), **{f"loss_{i}": l.item() for i, l in zip(batch.domains, losses)}}
        if aux is not None:
            logs["loss_supcon"] = aux.item() / self.hparams["supcon_weight"]
        return logs

    def domain_gradients(self, losses, n, params, retain_last=False) -> list[list[torch.Tensor]]:
        """g_i = ∇(L(θ; S_i)/n), one backward per domain through the shared θ graph."""
        last = len(losses) - 1
        return [list(torch.autograd.grad(l / n, params, retain_graph=j < last or retain_last,
                                         allow_unused=True, materialize_grads=True))
                for j, l in enumerate(losses)]

    def add_ascent_gradient(self, batch: Batch, params, eps: list, n: int, scale: float = 1.0) -> float:
        """.grad += scale · ∇L(θ + ε; S) on the whole batch in train mode, at θ + ε by `moved_to` (θ and the
        BatchNorm running statistics come back bit for bit); returns L(θ + ε; S). Consumes `eps`."""
        with moved_to(self.model, params, eps):
            eps.clear()
            losses, _ = self.forward(batch, supcon=False)
            loss = sum(losses) / n
            (scale * loss).backward(inputs=params)
            return loss.item()


@contextlib.contextmanager
def moved_to(model: nn.Module, params: list, eps: list):
    """The block runs at θ + ε. θ + ε is written into ε's tensors (ε is consumed; one pass, no copy of θ)
    and swapped in as the parameters' data, so θ is never written and is swapped back exactly; the model's
    buffers (BatchNorm running statistics) are restored from copies. If a tensor of ε is laid out unlike its
    parameter (a view of a flat vector against channels_last weights), θ + ε goes into new tensors laid out as θ."""
    theta = [p.data for p in params]
    buffers = [b.clone() for b in model.buffers()]
    with torch.no_grad():
        if all(e.stride() == t.stride() for e, t in zip(eps, theta)):
            torch._foreach_add_(eps, theta)
            moved = list(eps)
        else:
            moved = list(torch._foreach_add(theta, eps))
    for p, m in zip(params, moved):
        p.data = m
    del moved
    try:
        yield model
    finally:
        for p, t in zip(params, theta):
            p.data = t
        with torch.no_grad():
            for b, saved in zip(model.buffers(), buffers):
                b.copy_(saved)


def total(grads: list[list[torch.Tensor]]) -> list[torch.Tensor]:
    """Σ_i g_i, tensor by tensor."""
    out = [g.clone() for g in grads[0]]
    for g in grads[1:]:
        torch._foreach_add_(out, g)
    return out


def set_grad(params, grads) -> None:
    for p, g in zip(params, grads):
        p.grad = g


@torch.no_grad()
def gram_matrix(grads) -> torch.Tensor:
    """G_ij = ⟨g_i, g_j⟩ in float64 of k gradients: the rows of a k × dim tensor, or k lists of tensors
    (per-tensor dots summed in float64, without flattening)."""
    if isinstance(grads, torch.Tensor):
        g = grads.double()
        return g @ g.T
    k = len(grads)
    dots = [[torch.stack([torch.dot(a.reshape(-1), b.reshape(-1)) for a, b in zip(grads[i], grads[j])]).double().sum()
             for j in range(i + 1)] for i in range(k)]
    return torch.stack([torch.stack([dots[max(i, j)][min(i, j)] for j in range(k)]) for i in range(k)])


def cosine_matrix(gram: torch.Tensor) -> torch.Tensor:
    """C_ij = G_ij / (‖g_i‖ ‖g_j‖), ‖g_i‖ = √G_ii, from a Gram matrix (0 where a gradient is zero)."""
    norm = gram.diagonal().sqrt()
    return gram / (norm[:, None] * norm[None, :]).clamp_min(1e-300)


def gradient_logs(domains: list[int], grads: list[list[torch.Tensor]], scale: float) -> dict:
    """gnorm_<i> = ‖∇L(θ; S_i)‖ = scale·‖g_i‖ and cos_<i>_<j> = ⟨g_i, g_j⟩/(‖g_i‖‖g_j‖), over present domains."""
    gram = gram_matrix(grads)
    norm, cos = gram.diagonal().sqrt(), cosine_matrix(gram)
    logs = {f"gnorm_{i}": scale * norm[a].item() for a, i in enumerate(domains)}
    logs.update({f"cos_{i}_{j}": cos[a, b].item() for a, i in enumerate(domains) for b, j in enumerate(domains)})
    return logs
