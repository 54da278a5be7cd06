"""The probe: each domain's evaluation images, loaded once onto the device as uint8 and normalized per
batch, the loss the model was trained with, and every metric of a model in one pass over them.
Surfaces, Hessians and conflict matrices all start from it, and every eval-mode loop over its batches
(the logits here, a Hessian's loss, a domain's gradient) runs under `eval_mode` and averages batches
with `batch_weights`."""
import contextlib

import torch
import torch.nn.functional as F
from torch import nn

from training.algorithms import hparams
from training.data import normalize
from training.data.protocols import UNSEEN_ATTACKS, check_protocol_data, load_protocol_domain, parse_protocol
from training.errors import FaslandError
from training.metrics import fas_metrics

LOSSES = ("bce", "cross_entropy")


class Loss:
    """The source's training loss of the model's output z and its live score s (higher = live):
    one logit (z of shape [N] or [N, 1]): L = BCE(σ(logit_scale · z), y), s = z;
    two classes (z of shape [N, 2]): L = cross-entropy of softmax(z) against class `live_index` for y = 1 and
    the other class for y = 0, s = z_live − z_spoof (the log-odds of live)."""

    def __init__(self, kind: str = "bce", logit_scale: float = 1.0, live_index: int = 1):
        if kind not in LOSSES:
            raise FaslandError(f"unknown loss '{kind}'; use one of {', '.join(LOSSES)}")
        if live_index not in (0, 1):
            raise FaslandError(f"live index {live_index} is out of range; a two-class head has classes 0 and 1 (--live-index 0 or 1)")
        self.kind, self.logit_scale, self.live_index = kind, float(logit_scale), int(live_index)

    @classmethod
    def from_config(cls, config: dict) -> "Loss":
        """config["loss"] ({"kind", "logit_scale", "live_index"}), else BCE at hparams.logit_scale."""
        spec = config.get("loss") or {"kind": "bce", "logit_scale": hparams("erm", config)["logit_scale"]}
        return cls(spec.get("kind", "bce"), spec.get("logit_scale", 1.0), spec.get("live_index", 1))

    def _check(self, z: torch.Tensor) -> torch.Tensor:
        two = z.dim() == 2 and z.shape[1] == 2
        if self.kind == "cross_entropy" and not two:
            raise FaslandError(f"the model gives outputs of shape {tuple(z.shape)}, but its loss is cross-entropy over two classes; "
                               "import it again with a two-class head (fasland import)")
        if self.kind == "bce":
            if z.dim() == 2 and z.shape[1] == 1:
                return z[:, 0]
            if z.dim() != 1:
                raise FaslandError(f"the model gives outputs of shape {tuple(z.shape)}; fasland reads one logit or two class "
                                   "scores per image (import a two-class model with fasland import)")
        return z

    def __call__(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        z = self._check(z)
        if self.kind == "bce":
            return F.binary_cross_entropy_with_logits(self.logit_scale * z, y.to(z.dtype))
        live = y.long() if self.live_index == 1 else 1 - y.long()
        return F.cross_entropy(z, live)

    def score(self, z: torch.Tensor) -> torch.Tensor:
        z = self._check(z)
        return z if self.kind == "bce" else z[:, self.live_index] - z[:, 1 - self.live_index]


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
    """domains: {name: (x, y)} with x uint8 images (normalized per batch by `normalization`, as the model was
    trained) or float images used as given; sources are averaged into `train_*`, the target gives `test_*`
    plus its HTER and AUC on the live score. loss: a Loss (default BCE at `logit_scale`). clients: {name: client
    id per sample} (CPU), the unit of the bootstrap intervals; {} when unknown. `bn` names the BatchNorm
    mode of every metric: eval, θ's running statistics."""

    bn = "eval"

    def __init__(self, domains: dict, sources, target=None, batch_size: int = 256, logit_scale: float = 1.0,
                 device="cpu", channels_last: bool = True, loss: Loss | None = None, normalization: str = "imagenet",
                 clients: dict | None = None):
        if batch_size <= 0:
            raise FaslandError(f"batch size {batch_size} must be positive; pass --batch-size 128 or similar")
        self.device = torch.device(device)
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        self.domains = {d: (x.to(self.device).contiguous(memory_format=fmt), y.to(self.device).float()) for d, (x, y) in domains.items()}
        self.sources, self.target = tuple(sources), target
        self.clients = {d: c.cpu() for d, c in (clients or {}).items()}
        self.batch_size, self.channels_last = batch_size, channels_last
        self.loss = loss or Loss("bce", logit_scale)
        self.normalization = normalization
        normalize(torch.zeros(1, 3, 1, 1, dtype=torch.uint8), normalization)    # an unknown kind fails here

    @property
    def logit_scale(self) -> float:
        return self.loss.logit_scale

    def inputs(self, x: torch.Tensor) -> torch.Tensor:
        """What the model is fed: uint8 images normalized, float images as they are."""
        return normalize(x, self.normalization) if x.dtype == torch.uint8 else x

    def loss_fn(self, logits, y):
        """The loss the model was trained on (self.loss)."""
        return self.loss(logits, y)

    def batches(self, which: str = "train") -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(x, y) batches, x normalized, of one domain, of all sources ('train') or of the target ('test')."""
        names = {"train": self.sources, "test": (self.target,)}.get(which, (which,))
        if any(n not in self.domains for n in names):
            raise FaslandError(f"the probe has no domain '{which}'; use train, test or one of {', '.join(self.domains)}")
        return [(self.inputs(x[i:i + self.batch_size]), y[i:i + self.batch_size])
                for n in names for x, y in [self.domains[n]] for i in range(0, len(x), self.batch_size)]

    def logits(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """One eval-mode pass: {domain: model outputs}."""
        if self.channels_last:   # outside inference mode: the parameters must stay usable by autograd
            model.to(memory_format=torch.channels_last)
        with eval_mode(model), torch.inference_mode():
            return {d: torch.cat([model(self.inputs(x[i:i + self.batch_size])).float() for i in range(0, len(x), self.batch_size)])
                    for d, (x, _) in self.domains.items()}

    def scores(self, logits: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """{domain: live score} of one pass's outputs."""
        return {d: self.loss.score(z) for d, z in logits.items()}

    def metrics(self, logits: dict[str, torch.Tensor]) -> dict[str, float]:
        """loss_<D>, acc_<D> (live score > 0) per domain; train_* = mean over sources; test_* and
        test_hter/test_auc on the target's live scores."""
        m = {}
        for d, z in logits.items():
            y = self.domains[d][1]
            m[f"loss_{d}"] = self.loss(z, y).item()
            m[f"acc_{d}"] = ((self.loss.score(z) > 0).float() == y).float().mean().item()
        m["train_loss"] = sum(m[f"loss_{d}"] for d in self.sources) / len(self.sources)
        m["train_acc"] = sum(m[f"acc_{d}"] for d in self.sources) / len(self.sources)
        if self.target is not None:
            m["test_loss"], m["test_acc"] = m[f"loss_{self.target}"], m[f"acc_{self.target}"]
            fas = fas_metrics(self.loss.score(logits[self.target]).cpu().numpy(), self.domains[self.target][1].cpu().numpy())
            m["test_hter"], m["test_auc"] = fas["hter"], fas["auc"]
        return m

    def __call__(self, model: nn.Module) -> dict[str, float]:
        return self.metrics(self.logits(model))


def load_probe(config: dict, device="cpu", max_samples: int | None = 256, batch_size: int = 256,
               data: str | None = None, source_split: str = "train", frames_per_video: int = 1) -> Probe:
    """The probe of a run's config (a checkpoint's `config`): its sources' `source_split` images and its
    target's test images, at most `max_samples` per domain (None: all; evenly spread, both classes kept),
    with the config's preprocessing (data.image_size, data.normalize) and loss. Real data: `frames_per_video`
    frames of each video (seeded by data.seed), only those decoded."""
    if max_samples is not None and max_samples <= 0:
        raise FaslandError(f"--max-samples {max_samples} must be positive; pass e.g. --max-samples 256")
    if frames_per_video <= 0:
        raise FaslandError(f"--frames-per-video {frames_per_video} must be positive; pass e.g. --frames-per-video 1")
    sources, target = parse_protocol(config["protocol"])
    d = config["data"]
    root = data or d["root"]
    domains, clients, kinds = {}, {}, {}
    for name, split in [(s, source_split) for s in sources] + [(target, "test")]:
        if str(root) == "synth":
            dom, notes = load_protocol_domain(config["protocol"], root, name, split, d["image_size"], d.get("seed", 0))
            idx = torch.arange(len(dom.labels))
            if max_samples is not None and len(idx) > max_samples:
                idx = torch.linspace(0, len(idx) - 1, max_samples).round().long()
            domains[name], clients[name] = (dom.images[idx], dom.labels[idx]), dom.clients[idx]
            names = notes.kind_names()
            kinds[name] = [names[i] for i in idx.tolist()]
        else:
            from training.data import folders
            check_protocol_data(config["protocol"], root)
            dom = folders.load_frames(root, name, split, d["image_size"], frames_per_video, max_samples, seed=d.get("seed", 0))
            domains[name], clients[name] = (dom.images, dom.labels), dom.clients
    probe = Probe(domains, sources, target, batch_size=batch_size, device=device, loss=Loss.from_config(config),
                  normalization=d.get("normalize", "imagenet"), clients=clients)
    # unseen-attack protocols: each image's attack kind ('live' for live ones), for the AUC per held-out kind
    probe.kinds = kinds if config["protocol"] in UNSEEN_ATTACKS else {}
    return probe


UNSETTLED_HTER = 0.3    # the run separated its sources at least this well


def unsettled_batchnorm(probe: Probe, model: nn.Module, run_metrics) -> str | None:
    """A warning when eval-mode accuracy at θ (acc_<D>, live score > 0) is no better than always guessing the
    majority class in every source domain while the run's own evaluation (HTER at its equal-error threshold)
    separated the sources: after few steps BatchNorm's running statistics still lag the weights and shift
    every logit."""
    final = run_metrics.get("final") if isinstance(run_metrics, dict) else None
    sources = final.get("sources") if isinstance(final, dict) else None
    trained = sources.get("hter") if isinstance(sources, dict) else None
    if not isinstance(trained, (int, float)) or not trained <= UNSETTLED_HTER:
        return None
    m = probe(model)
    live = {d: probe.domains[d][1].mean().item() for d in probe.sources}
    if any(m[f"acc_{d}"] > max(live[d], 1 - live[d]) + 0.02 for d in probe.sources):
        return None
    accuracies = ", ".join(f"{d} {m['acc_' + d]:.2f}" for d in probe.sources)
    return (f"eval-mode accuracy at θ (live score > 0) is at chance in every source domain ({accuracies}) while the run's own evaluation "
            f"reached sources HTER {100 * trained:.1f}% (at its equal-error threshold): BatchNorm's running statistics "
            f"have not settled (too few training steps), so losses and accuracies here describe eval mode, not "
            f"training; train longer, or read HTER/AUC")
