"""The probe: each domain's evaluation tensors, loaded once onto the device, and every metric of a
model in one pass over them. Surfaces, Hessians and conflict matrices all start from it, and every
eval-mode loop over its batches (the logits here, a Hessian's loss, a domain's gradient) runs under
`eval_mode` and averages batches with `batch_weights`."""
import contextlib

import torch
from torch import nn

from training.algorithms import hparams
from training.algorithms.base import bce
from training.data import load_domain, normalize
from training.data.protocols import parse_protocol
from training.errors import FaslandError
from training.metrics import fas_metrics


@contextlib.contextmanager
def eval_mode(model):
    """Run in eval mode (BatchNorm on its running statistics), then restore the caller's mode."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def batch_weights(batches, world=None) -> list[float]:
    """w_b = n_b / Σ n over all ranks' batches: Σ_b w_b L_b is the union's mean loss."""
    n_local = sum(len(y) for _, y in batches)
    n = world.sum_scalar(n_local) if world is not None else n_local
    if n == 0:
        raise FaslandError("the batches hold no samples; pass a probe with at least one image per domain")
    return [len(y) / n for _, y in batches]


class Probe:
    """domains: {name: (x, y)} with x already normalized; sources are averaged into `train_*`,
    the target gives `test_*` plus its HTER and AUC. clients: {name: client id per sample} (CPU), the unit
    of the bootstrap intervals; {} when unknown. `bn` names the BatchNorm mode of every metric: eval, θ's
    running statistics."""

    bn = "eval"

    def __init__(self, domains: dict, sources, target=None, batch_size: int = 256, logit_scale: float = 1.0,
                 device="cpu", channels_last: bool = True, clients: dict | None = None):
        if batch_size <= 0:
            raise FaslandError(f"batch size {batch_size} must be positive; pass --batch-size 128 or similar")
        self.device = torch.device(device)
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        self.domains = {d: (x.to(self.device).contiguous(memory_format=fmt), y.to(self.device).float()) for d, (x, y) in domains.items()}
        self.sources, self.target = tuple(sources), target
        self.clients = {d: c.cpu() for d, c in (clients or {}).items()}
        self.batch_size, self.logit_scale, self.channels_last = batch_size, logit_scale, channels_last

    def loss_fn(self, logits, y):
        """Mean BCE of sigmoid(logit_scale · logit): the loss the model was trained on."""
        return bce(logits, y, self.logit_scale)

    def batches(self, which: str = "train") -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(x, y) batches of one domain, of all sources ('train') or of the target ('test')."""
        names = {"train": self.sources, "test": (self.target,)}.get(which, (which,))
        if any(n not in self.domains for n in names):
            raise FaslandError(f"the probe has no domain '{which}'; use train, test or one of {', '.join(self.domains)}")
        return [(x[i:i + self.batch_size], y[i:i + self.batch_size])
                for n in names for x, y in [self.domains[n]] for i in range(0, len(x), self.batch_size)]

    def logits(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """One eval-mode pass: {domain: logits}."""
        if self.channels_last:   # outside inference mode: the parameters must stay usable by autograd
            model.to(memory_format=torch.channels_last)
        with eval_mode(model), torch.inference_mode():
            return {d: torch.cat([model(x[i:i + self.batch_size]).float() for i in range(0, len(x), self.batch_size)])
                    for d, (x, _) in self.domains.items()}

    def metrics(self, logits: dict[str, torch.Tensor]) -> dict[str, float]:
        """loss_<D>, acc_<D> per domain; train_* = mean over sources; test_* and test_hter/test_auc on the target."""
        m = {}
        for d, z in logits.items():
            y = self.domains[d][1]
            m[f"loss_{d}"] = self.loss_fn(z, y).item()
            m[f"acc_{d}"] = ((z > 0).float() == y).float().mean().item()
        m["train_loss"] = sum(m[f"loss_{d}"] for d in self.sources) / len(self.sources)
        m["train_acc"] = sum(m[f"acc_{d}"] for d in self.sources) / len(self.sources)
        if self.target is not None:
            m["test_loss"], m["test_acc"] = m[f"loss_{self.target}"], m[f"acc_{self.target}"]
            fas = fas_metrics(logits[self.target].cpu().numpy(), self.domains[self.target][1].cpu().numpy())
            m["test_hter"], m["test_auc"] = fas["hter"], fas["auc"]
        return m

    def __call__(self, model: nn.Module) -> dict[str, float]:
        return self.metrics(self.logits(model))


def load_probe(config: dict, device="cpu", max_samples: int | None = 256, batch_size: int = 256,
               data: str | None = None, source_split: str = "train") -> Probe:
    """The probe of a run's config (a checkpoint's `config`): its sources' `source_split` images and
    its target's test images, at most `max_samples` per domain (evenly spread, both classes kept)."""
    if max_samples is not None and max_samples <= 0:
        raise FaslandError(f"--max-samples {max_samples} must be positive; pass e.g. --max-samples 256")
    sources, target = parse_protocol(config["protocol"])
    d = config["data"]
    root = data or d["root"]
    domains, clients = {}, {}
    for name, split in [(s, source_split) for s in sources] + [(target, "test")]:
        dom = load_domain(root, name, split, image_size=d["image_size"], seed=d.get("seed", 0))
        idx = torch.arange(len(dom.labels))
        if max_samples is not None and len(idx) > max_samples:
            idx = torch.linspace(0, len(idx) - 1, max_samples).round().long()
        domains[name], clients[name] = (normalize(dom.images[idx]), dom.labels[idx]), dom.clients[idx]
    return Probe(domains, sources, target, batch_size=batch_size,
                 logit_scale=hparams("erm", config)["logit_scale"], device=device, clients=clients)



UNSETTLED_HTER = 0.3    # the run separated its sources at least this well


def unsettled_batchnorm(probe: Probe, model: nn.Module, run_metrics) -> str | None:
    """A warning when eval-mode accuracy at θ (logit > 0) is no better than always guessing the majority class
    in every source domain while the run's own evaluation (HTER at its equal-error threshold) separated the
    sources: after few steps BatchNorm's running statistics still lag the weights and shift every logit."""
    final = (run_metrics or {}).get("final") if isinstance(run_metrics, dict) else None
    trained = final.get("sources", {}).get("hter") if isinstance(final, dict) and isinstance(final.get("sources"), dict) else None
    if not isinstance(trained, (int, float)) or not trained <= UNSETTLED_HTER:
        return None
    logits = probe.logits(model)
    acc, chance = {}, {}
    for d in probe.sources:
        y = probe.domains[d][1]
        acc[d] = ((logits[d] > 0).float() == y).float().mean().item()
        chance[d] = max(y.mean().item(), 1 - y.mean().item())
    if any(acc[d] > chance[d] + 0.02 for d in probe.sources):
        return None
    return (f"eval-mode accuracy at θ (logit > 0) is at chance in every source domain "
            f"({', '.join(f'{d} {acc[d]:.2f}' for d in probe.sources)}) while the run's own evaluation reached sources "
            f"HTER {100 * trained:.1f}% (at its equal-error threshold): BatchNorm's running statistics have not settled "
            f"(too few training steps), so losses and accuracies here describe eval mode, not training; train longer, "
            f"or read HTER/AUC")

