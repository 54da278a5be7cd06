"""The training loop: balanced per-domain batches, one `algo.update` per step, evaluation on held-out
clients of the sources and on the target, the trajectory saved, every epoch resumable."""
import json
import logging
import math
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml
from tqdm import tqdm

from training.algorithms import algorithm_class, make_algorithm
from training.checkpoint import atomic_write, atomic_write_json, load_checkpoint, save_checkpoint
from training.data import normalize
from training.data.protocols import load_protocol_domain, parse_protocol
from training.errors import FaslandError
from training.metrics import auc_by_kind, client_intervals, fas_metrics
from training.model import build_model, load_pretrained
from training.probe import load_probe


class SourceBatches:
    """Each source domain's training images; `sample` draws one balanced batch per domain. SynthFAS is held
    in memory (uint8, CPU); real data streams one random frame per video from DataLoader workers."""

    def __init__(self, config: dict, device):
        d = config["data"]
        sources, _ = parse_protocol(config["protocol"])
        t = config["train"]
        self.batch, self.augment, self.two_views = t["batch_per_domain"], t["augment"], t["two_views"]
        if str(d["root"]) == "synth":
            self.draws = [InMemory(load_protocol_domain(config["protocol"], d["root"], s, "train", d["image_size"], d.get("seed", 0))[0],
                                   self.batch) for s in sources]
        else:
            from training.data.folders import VideoStream
            self.draws = [VideoStream(d["root"], s, d["image_size"], self.batch, d.get("workers", 2), seed=t["seed"] * 1009 + i)
                          for i, s in enumerate(sources)]
        self.names, self.device, self.normalization = sources, device, d.get("normalize", "imagenet")
        self.with_depth = algorithm_class(config["method"]).needs_depth

    def sample(self, g: torch.Generator) -> list[tuple]:
        """[(x, y)] per domain; (x, y, x2) with a second view; (x, y, depth) for RFM."""
        out = []
        for draw in self.draws:
            images, labels, depth = draw(g)
            x, depth = augment(images, self.augment, g, depth if self.with_depth else None)
            item = [normalize(x, self.normalization).to(self.device), labels.to(self.device)]
            if self.two_views:
                item.append(normalize(augment(images, self.augment, g)[0], self.normalization).to(self.device))
            if self.with_depth:
                item.append(depth.to(self.device))
            out.append(tuple(item))
        return out


class InMemory:
    """Batches of `batch` images drawn with replacement from one domain held in memory."""

    def __init__(self, dom, batch: int):
        self.dom, self.batch = dom, batch

    def __call__(self, g: torch.Generator):
        idx = torch.randint(len(self.dom.labels), (self.batch,), generator=g)
        return self.dom.images[idx], self.dom.labels[idx], self.dom.depth[idx]


def rotate(x: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:
    """Rotate each uint8 image [N, C, H, W] by its angle (radians), reflecting at the border."""
    n, c, h, w = x.shape
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 1], theta[:, 1, 0], theta[:, 1, 1] = angle.cos(), -angle.sin(), angle.sin(), angle.cos()
    grid = F.affine_grid(theta, (n, c, h, w), align_corners=False)
    return F.grid_sample(x.float(), grid, padding_mode="reflection", align_corners=False).round().clamp(0, 255).to(torch.uint8)


def augment(x: torch.Tensor, kind: str, g: torch.Generator, depth: torch.Tensor | None = None):
    """flip: random horizontal flip; paper: flip, rotation in ±15° and a cutout of a quarter of the side.
    A depth map [N, h, w] follows the image's flip and rotation (not the cutout). Returns (x, depth)."""
    if kind == "none":
        return x, depth
    flip = torch.rand(len(x), generator=g) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    depth = None if depth is None else torch.where(flip[:, None, None], depth.flip(-1), depth)
    if kind == "flip":
        return x, depth
    n, _, h, w = x.shape
    angle = (torch.rand(n, generator=g) * 2 - 1) * math.radians(15)
    x = rotate(x, angle)
    depth = None if depth is None else rotate(depth[:, None], angle)[:, 0]
    side = max(1, h // 4)
    cy, cx = torch.randint(h, (n,), generator=g), torch.randint(w, (n,), generator=g)
    ys, xs = torch.arange(h)[None, :, None], torch.arange(w)[None, None, :]
    hole = ((ys - cy[:, None, None]).abs() <= side // 2) & ((xs - cx[:, None, None]).abs() <= side // 2)
    return x.masked_fill(hole[:, None], 0), depth


def evaluate(model, probe, intervals: bool = False) -> dict:
    """Target HTER/AUC/TPR@FPR5/ACC and the sources' pooled HTER/AUC, on held-out clients; with `intervals`
    also their 95% client-level bootstrap intervals (`client_intervals`) under "interval"."""
    logits = probe.scores(probe.logits(model))      # live scores: the logit, or z_live − z_spoof
    out = {}
    for part, names, keys in (("target", (probe.target,), ("hter", "auc", "tpr_at_fpr5", "acc")),
                              ("sources", probe.sources, ("hter", "auc"))):
        scores = torch.cat([logits[d] for d in names]).cpu().numpy()
        labels = torch.cat([probe.domains[d][1] for d in names]).cpu().numpy()
        m = fas_metrics(scores, labels)
        out[part] = {k: m[k] for k in keys}
        if intervals and all(d in probe.clients for d in names):
            out[part]["interval"] = client_intervals(scores, labels, torch.cat([probe.clients[d] for d in names]).numpy())
    t = probe.target
    if getattr(probe, "kinds", {}).get(t):     # unseen-attack protocols: live against each held-out kind
        out["target"]["auc_by_kind"] = auc_by_kind(logits[t].cpu().numpy(), probe.domains[t][1].cpu().numpy(), probe.kinds[t])
    return out


def summarize(evaluations: list[dict], last: int) -> dict:
    """final (the last evaluation), best (lowest target HTER) and mean ± std of the last `last` ones."""
    out = {"evaluations": evaluations, "final": evaluations[-1] if evaluations else None}
    if evaluations:
        out["best"] = min(evaluations, key=lambda e: e["target"]["hter"])
        tail = evaluations[-last:] if last else evaluations[-1:]
        for key in ("hter", "auc"):
            v = torch.tensor([e["target"][key] for e in tail], dtype=torch.float64)
            out.setdefault("last", {"n": len(tail)})[key] = {"mean": v.mean().item(), "std": v.std(unbiased=False).item()}
    return out


def step_epoch(line: str) -> float:
    """The epoch of one steps.jsonl line; a line torn by a kill counts as unfinished (dropped on resume)."""
    try:
        return json.loads(line)["epoch"]
    except (ValueError, KeyError, TypeError):
        return float("inf")


def epoch_lr_factor(epoch: int, t: dict) -> float:
    """StepLR: lr × gamma^⌊epoch / step⌋ (step 0 = constant)."""
    return t["lr_gamma"] ** (epoch // t["lr_step"]) if t["lr_step"] else 1.0


def should_evaluate(epoch: int, t: dict) -> bool:
    """Every `eval_every` epochs, each of the last `eval_last`, and always the final one (1-based epoch)."""
    return epoch % t["eval_every"] == 0 or epoch > t["epochs"] - t["eval_last"] or epoch == t["epochs"]


def prepare_run_dir(out: Path, config: dict) -> None:
    """Create the run directory and its config.yaml; refuse a folder that holds a run of another config."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise FaslandError(f"cannot create run directory '{out}' ({e.strerror}); choose a writable --out") from None
    path = out / "config.yaml"
    if path.exists():
        old = yaml.safe_load(path.read_text())
        if old != config:
            changed = sorted(k for k in set(old or {}) | set(config) if (old or {}).get(k) != config.get(k))
            raise FaslandError(f"'{out}' holds a run with another configuration (differs in {', '.join(changed)}); pass a new --out or the same settings")
        return
    atomic_write(path, lambda tmp: tmp.write_text(yaml.safe_dump(config, sort_keys=False)))


def train(config: dict, out_dir, device="cpu", progress: bool = True) -> dict:
    """Train (or resume, or skip if finished) the run of `config` into `out_dir`; returns metrics.json's content."""
    out = Path(out_dir)
    t, device = config["train"], torch.device(device)
    for key in ("epochs", "steps_per_epoch", "batch_per_domain"):
        if not isinstance(t[key], int) or t[key] <= 0:
            raise FaslandError(f"train.{key} = {t[key]!r} must be a positive integer; fix it in the config or preset")
    prepare_run_dir(out, config)   # after validation: a rejected start does not lock the folder to its settings
    if (out / "checkpoint.pt").exists() and (out / "metrics.json").exists():
        done = load_checkpoint(out / "checkpoint.pt")
        if done["epoch"] >= t["epochs"]:
            return json.loads((out / "metrics.json").read_text())

    log = logging.getLogger(f"fasland.train.{out}")
    log.handlers.clear()
    handler = logging.FileHandler(out / "train.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False

    torch.manual_seed(t["seed"])
    arch = {k: v for k, v in config["model"].items() if k != "pretrained"}
    model = build_model(arch)
    if config["model"].get("pretrained"):
        load_pretrained(model, config["model"]["pretrained"])
    model.to(device, memory_format=torch.channels_last)   # as the probe runs it: a resumed run computes identically
    sources, _ = parse_protocol(config["protocol"])
    algo = make_algorithm(config["method"], model, len(sources), config["hparams"])
    base_lrs = [g["lr"] for g in algo.optimizer.param_groups]
    data = SourceBatches(config, device)
    probe = load_probe(config, device, max_samples=t["eval_samples"], source_split="test")

    start, evaluations = 0, []
    resume = out / "resume.pt"
    if resume.exists():
        state = load_checkpoint(resume)
        model.load_state_dict(state["model"])
        algo.optimizer.load_state_dict(state["optimizer"])
        algo.load_extra_state(state["algorithm"])
        start, evaluations = state["epoch"], state["metrics"]["evaluations"]
        log.info(f"resumed from epoch {start}")
    metrics = summarize(evaluations, t["eval_last"])
    steps_log = out / "steps.jsonl"
    keep = [l for l in steps_log.read_text().splitlines() if step_epoch(l) <= start] if steps_log.exists() and start else []
    atomic_write(steps_log, lambda tmp: tmp.write_text("".join(l + "\n" for l in keep)))

    if start == 0:
        save_checkpoint(out / "checkpoints" / "epoch_000.pt", model, arch, config, 0, summarize([], 0))
    log.info(f"training {config['method']} on {config['protocol']} ({', '.join(sources)} → target) for {t['epochs']} epochs on {device}")
    bar = tqdm(total=t["epochs"] * t["steps_per_epoch"], initial=start * t["steps_per_epoch"], disable=not progress,
               desc=f"train {config['method']}", unit="step", dynamic_ncols=True)
    with steps_log.open("a") as steps_file:
        for epoch in range(start, t["epochs"]):
            g = torch.Generator().manual_seed(t["seed"] * 100_003 + epoch)
            for group, lr in zip(algo.optimizer.param_groups, base_lrs):
                group["lr"] = lr * epoch_lr_factor(epoch, t)
            algo.head_only = epoch < t["head_only_epochs"]
            algo.warming = epoch < t["minimizer_warming"]   # counted from epoch 0, head-only epochs included, as the released code
            model.train()
            for step in range(t["steps_per_epoch"]):
                algo.log_gradients = step % t["log_every"] == 0
                logs = algo.update(data.sample(g))
                steps_file.write(json.dumps({"epoch": epoch + 1, "step": epoch * t["steps_per_epoch"] + step, **logs}) + "\n")
                bar.update(1)
                bar.set_postfix(epoch=epoch + 1, loss=f"{logs['loss']:.3f}",
                                **{f"L_{s}": f"{logs[f'loss_{i}']:.2f}" for i, s in enumerate(sources) if f"loss_{i}" in logs})
            steps_file.flush()
            if not all(math.isfinite(v) for v in logs.values()):
                raise FaslandError(f"training diverged at epoch {epoch + 1} (loss {logs['loss']}); lower hparams.lr or rho and rerun with a new --out")
            if should_evaluate(epoch + 1, t):
                evaluations.append({"epoch": epoch + 1, **evaluate(model, probe, intervals=epoch + 1 == t["epochs"])})
                e = evaluations[-1]
                log.info(f"epoch {epoch + 1}: target HTER {e['target']['hter']:.4f} AUC {e['target']['auc']:.4f}; sources HTER {e['sources']['hter']:.4f}")
                bar.write(f"epoch {epoch + 1}: target HTER {100 * e['target']['hter']:.2f}% AUC {100 * e['target']['auc']:.2f}% | sources HTER {100 * e['sources']['hter']:.2f}%")
            metrics = summarize(evaluations, t["eval_last"])
            if (epoch + 1) % t["save_every"] == 0 or epoch + 1 == t["epochs"]:
                save_checkpoint(out / "checkpoints" / f"epoch_{epoch + 1:03d}.pt", model, arch, config, epoch + 1, metrics)
            save_checkpoint(resume, model, arch, config, epoch + 1, metrics, optimizer=algo.optimizer.state_dict(),
                            algorithm=algo.extra_state())
    bar.close()
    save_checkpoint(out / "checkpoint.pt", model, arch, config, t["epochs"], metrics, algorithm=algo.extra_state())
    atomic_write_json(out / "metrics.json", metrics)
    return metrics
