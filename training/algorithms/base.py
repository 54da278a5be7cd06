"""What every method shares: hyper-parameters, the SGD optimizer and the source loss L(θ; S)."""
import torch
import torch.nn.functional as F
from torch import nn

from training.errors import FaslandError

BASE_HPARAMS = {
    "lr": 0.01,
    "momentum": 0.9,
    "weight_decay": 5e-4,
    "head_lr_mult": 1.0,   # the paper recipe trains the head at 10× the backbone's rate
    "logit_scale": 1.0,    # BCE on sigmoid(logit_scale · logit)
}


def bce(logits: torch.Tensor, y: torch.Tensor, logit_scale: float = 1.0) -> torch.Tensor:
    """Mean binary cross-entropy of sigmoid(logit_scale · logit) against y (1 = live)."""
    return F.binary_cross_entropy_with_logits(logit_scale * logits, y.to(logits.dtype))


class Algorithm:
    """One optimizer step per `update(minibatches)`; minibatches = [(x_i, y_i)] one per source domain."""

    HPARAMS: dict = {}

    def __init__(self, model: nn.Module, num_domains: int, hparams: dict | None = None):
        defaults = {**BASE_HPARAMS, **self.HPARAMS}
        hparams = dict(hparams or {})
        unknown = sorted(set(hparams) - set(defaults))
        if unknown:
            raise FaslandError(f"unknown hyper-parameter(s) {', '.join(unknown)} for {type(self).__name__}; known: {', '.join(sorted(defaults))}")
        self.hparams = {**defaults, **hparams}
        self.model = model
        self.num_domains = num_domains
        self.optimizer = torch.optim.SGD(self.param_groups(), lr=self.hparams["lr"],
                                         momentum=self.hparams["momentum"], weight_decay=self.hparams["weight_decay"])

    def param_groups(self) -> list[dict]:
        """Backbone at lr, head (parameters named `head.*`) at lr × head_lr_mult."""
        head = [p for n, p in self.model.named_parameters() if n.startswith("head.")]
        body = [p for n, p in self.model.named_parameters() if not n.startswith("head.")]
        lr = self.hparams["lr"]
        return [g for g in ({"params": body, "lr": lr}, {"params": head, "lr": lr * self.hparams["head_lr_mult"]}) if g["params"]]

    def loss(self, logits, y):
        return bce(logits, y, self.hparams["logit_scale"])

    def source_loss(self, minibatches):
        """L(θ; S) = (1/k) Σ_i L(θ; S_i) over the domains present, on one forward of the concatenated batch.
        Returns (L, [L_i], logits)."""
        x = torch.cat([x for x, _ in minibatches])
        logits = self.model(x)
        losses = [self.loss(part, y) for part, (_, y) in zip(logits.split([len(x) for x, _ in minibatches]), minibatches)]
        return torch.stack(losses).mean(), losses, logits

    def update(self, minibatches) -> dict:
        raise NotImplementedError
