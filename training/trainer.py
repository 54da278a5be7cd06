"""The training loop: balanced per-domain batches, one `algo.update` per step, evaluation on held-out
clients of the sources and on the target, the trajectory saved, every epoch resumable."""
import json
import logging
import math
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml
from tqdm import tqdm

from training.algorithms import algorithm_class, make_algorithm
from training.checkpoint import atomic_save, atomic_write, atomic_write_json, load_checkpoint, save_checkpoint
from training.data import normalize
from training.data.protocols import load_protocol_domain, parse_protocol
from training.errors import FaslandError
from training.metrics import auc_by_kind, client_intervals, fas_metrics
from training.model import build_model, load_pretrained
from training.presets import config_differences
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


def without_intervals(evaluation: dict) -> dict:
    """An evaluation as made before the final epoch: without the final one's bootstrap intervals."""
    return {k: ({n: v for n, v in part.items() if n != "interval"} if isinstance(part, dict) else part)
            for k, part in evaluation.items()}


def summarize(evaluations: list[dict], last: int, rules: list[str] | None = None) -> dict:
    """final (the last evaluation), best (lowest target HTER), mean ± std of the last `last` ones, and
    `update_rules`: the rule each epoch trained with (update_rule; index 0 = epoch 1)."""
    out = {"evaluations": evaluations, "final": evaluations[-1] if evaluations else None, "update_rules": list(rules or [])}
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


# train.epochs may grow (the run continues) and train.save_every may change (which trajectory checkpoints are
# kept): neither changes what the first epochs compute, so neither makes another run
GROWABLE = {("train", "epochs"), ("train", "save_every")}


def read_run_config(out: Path, config: dict) -> dict | None:
    """The config.yaml already in `out` (None if there is none); refuses one of another run, naming every
    differing key with its old and new value."""
    path = out / "config.yaml"
    if not path.is_file():
        return None
    try:
        old = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        raise FaslandError(f"'{path}' is not a readable run config; pass a new --out or delete that file") from None
    changed = config_differences(old if isinstance(old, dict) else {}, config, GROWABLE)
    if changed:
        raise FaslandError(f"'{out}' holds a run with another configuration ({'; '.join(changed)}); "
                           "pass a new --out or the same settings")
    return old


def prepare_run_dir(out: Path, config: dict) -> None:
    """Refuse a folder that holds a run of another config, else create it (config.yaml is written by train
    once every input has been checked)."""
    read_run_config(out, config)
    make_run_dir(out)


def make_run_dir(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise FaslandError(f"cannot create run directory '{out}' ({e.strerror}); choose a writable --out") from None


def run_log(out: Path) -> logging.Logger:
    """The logger that appends to out/train.log."""
    log = logging.getLogger(f"fasland.train.{out}")
    log.handlers.clear()
    handler = logging.FileHandler(out / "train.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    return log


def write_run_config(out: Path, config: dict) -> None:
    path = out / "config.yaml"
    try:
        atomic_write(path, lambda tmp: tmp.write_text(yaml.safe_dump(config, sort_keys=False)))
    except OSError as e:
        raise FaslandError(f"cannot write '{path}' ({e.strerror}); choose a writable --out with free space") from None


def update_rule(epoch: int, config: dict) -> str:
    """The rule of 0-based `epoch`: head-only (only head.* stepped), erm-warming (a plain ERM step of another
    method, train.minimizer_warming), else the method's own."""
    t, method = config["train"], config["method"]
    if epoch < t["head_only_epochs"]:
        return "head-only"
    if epoch < t["minimizer_warming"] and method != "erm":
        return "erm-warming"
    return method


def describe_rules(rules: list[str]) -> str:
    """'epoch 1 head-only, 2–10 erm-warming, 11–150 gacfas': runs of equal rules, 1-based epochs."""
    parts, start = [], 0
    for i in range(1, len(rules) + 1):
        if i == len(rules) or rules[i] != rules[start]:
            span = f"{start + 1}" if i == start + 1 else f"{start + 1}–{i}"
            parts.append(f"{span} {rules[start]}")
            start = i
    return ("epoch " if len(rules) == 1 else "epochs ") + ", ".join(parts)


def check_update_rules(config: dict, asked: bool = False) -> str | None:
    """A method none of whose epochs uses its own rule trains as another method: refused, unless `asked`
    (the user set the warming/head-only epochs themselves), then the returned warning says so."""
    t, method = config["train"], config["method"]
    rules = [update_rule(e, config) for e in range(t["epochs"])]
    if method in rules:
        return None
    why = (f"train.epochs = {t['epochs']} ≤ train.minimizer_warming = {t['minimizer_warming']}, so every epoch is a plain ERM "
           f"warming step" if "erm-warming" in rules else
           f"train.epochs = {t['epochs']} ≤ train.head_only_epochs = {t['head_only_epochs']}, so every epoch trains only the head")
    if "head-only" in rules and "erm-warming" in rules:
        why = f"{describe_rules(rules)} ({t['epochs']} epochs)"
    if asked:
        return f"{method} never applies its own update in this run ({why}): it trains as {describe_rules(rules)}, as the config asks"
    raise FaslandError(f"--method {method} would train as plain ERM, not {method}: {why}; pass --epochs "
                       f"{max(t['minimizer_warming'], t['head_only_epochs']) + 1} or more, or set train.minimizer_warming / "
                       f"train.head_only_epochs in --config to ask for it")


# ---- warm start: the ERM warming epochs are shared ----------------------------------------------------
WARMING = "warming.pt"      # a run's full state (model, optimizer, evaluations) after its train.minimizer_warming epochs


def warming_key(config: dict) -> dict:
    """What a run's first train.minimizer_warming epochs compute from: its config without the method and with only
    the hyper-parameters of the plain ERM step (training.algorithms.base.Algorithm.HPARAMS). Two runs with equal
    keys, both of methods that warm as ERM (`warms_as_erm`), are bit-identical up to that epoch."""
    from training.algorithms.base import Algorithm

    key = {k: v for k, v in config.items() if k != "method"}
    key["hparams"] = {k: config["hparams"].get(k) for k in Algorithm.defaults()}
    return key


def shares_warming(config: dict) -> bool:
    """The run's warming epochs are plain ERM steps of the base SGD, and some epochs follow them."""
    w = config["train"]["minimizer_warming"]
    return algorithm_class(config["method"]).warms_as_erm and 0 < w < config["train"]["epochs"]


def find_warming(config: dict, candidates) -> tuple[dict | None, Path | None, list[str]]:
    """The first of the run directories `candidates` whose warming.pt a run of `config` can start from:
    (its state, its folder, []), or (None, None, why each was refused)."""
    why = []
    if not shares_warming(config):
        return None, None, [f"{config['method']} does not warm as plain ERM for train.minimizer_warming = "
                            f"{config['train']['minimizer_warming']} of {config['train']['epochs']} epochs"]
    for run in map(Path, candidates or []):
        path = run / WARMING
        if not path.is_file():
            why.append(f"'{run}' holds no {WARMING}")
            continue
        state = load_checkpoint(path)
        other = state["config"]
        changed = config_differences(warming_key(other), warming_key(config), GROWABLE)
        if not algorithm_class(other.get("method", "")).warms_as_erm:
            changed.append(f"method {other.get('method')} does not warm as plain ERM")
        if changed or state["epoch"] != config["train"]["minimizer_warming"]:
            why.append(f"'{run}' warmed with another configuration ({'; '.join(changed) or 'epoch ' + str(state['epoch'])})")
            continue
        missing = missing_warming_parts(state, run, config["train"])
        if missing:
            why.append(f"'{run}' lacks {missing[0]} that this run keeps")
            continue
        return state, run, []
    return None, None, why


def missing_warming_parts(state: dict, run: Path, t: dict) -> list[str]:
    """What a run with train settings `t` records up to the warming epoch (trajectory checkpoints, evaluations) but
    the warming state of `run` does not have (its train.epochs or save_every differed)."""
    start = state["epoch"]
    evaluated = {e["epoch"] for e in state["metrics"]["evaluations"]}
    return ([f"checkpoints/epoch_{e:03d}.pt" for e in range(start + 1) if (e == 0 or e % t["save_every"] == 0)
             and not (run / "checkpoints" / f"epoch_{e:03d}.pt").is_file()]
            + [f"the evaluation of epoch {e}" for e in range(1, start + 1) if should_evaluate(e, t) and e not in evaluated])


def warm_start(state: dict, source: Path, out: Path, config: dict, arch: dict, rules: list[str]) -> None:
    """Give the run in `out` the warming epochs of `source`: its steps.jsonl lines (with this run's rule) and its
    trajectory checkpoints up to that epoch (with this run's config and metrics), as a run trained from epoch 0
    would have written them; the model and optimizer follow from `state` as on a resume."""
    t, start = config["train"], state["epoch"]
    lines = [json.loads(l) for l in (source / "steps.jsonl").read_text().splitlines() if step_epoch(l) <= start]
    atomic_write(out / "steps.jsonl", lambda tmp: tmp.write_text(
        "".join(json.dumps({**l, "rule": rules[l["epoch"] - 1]}) + "\n" for l in lines)))
    evaluations = [without_intervals(e) for e in state["metrics"]["evaluations"] if should_evaluate(e["epoch"], t)]
    for path in (source / "checkpoints").glob("epoch_*.pt"):
        epoch = int(path.stem[len("epoch_"):])
        if epoch <= start and (epoch == 0 or epoch % t["save_every"] == 0):
            ckpt = load_checkpoint(path)
            done = [e for e in evaluations if e["epoch"] <= epoch]
            atomic_save({**ckpt, "arch": arch, "config": config,
                         "metrics": summarize(done, t["eval_last"], rules[:epoch]) if epoch else summarize([], 0)},
                        out / "checkpoints" / path.name)


def prune_trajectory(out: Path, t: dict) -> None:
    """Keep checkpoints/epoch_000.pt, every save_every-th epoch and the last; delete the others (a previous
    last epoch of a run that was continued, or epochs of an earlier --keep-checkpoints)."""
    for path in (out / "checkpoints").glob("epoch_*.pt"):
        try:
            epoch = int(path.stem[len("epoch_"):])
        except ValueError:
            continue
        if not (epoch == 0 or epoch % t["save_every"] == 0 or epoch == t["epochs"]):
            path.unlink(missing_ok=True)


def train(config: dict, out_dir, device="cpu", progress: bool = True, asked_rules: bool = False, warm_from=None) -> dict:
    """Train (or resume, continue to more epochs, or skip if finished) the run of `config` into `out_dir`;
    returns metrics.json's content. A method that would never apply its own update is refused unless
    `asked_rules` (the user chose the warming / head-only epochs), then it is warned about.
    warm_from: run directories (e.g. the ERM run of the same study) whose warming.pt a new run starts from
    instead of training its train.minimizer_warming plain-ERM epochs again (`find_warming`; the result is
    bit-identical to training them); none that fits, and the run trains from epoch 0."""
    out = Path(out_dir)
    t, device = config["train"], torch.device(device)
    for key in ("epochs", "steps_per_epoch", "batch_per_domain", "save_every"):
        if not isinstance(t[key], int) or isinstance(t[key], bool) or t[key] <= 0:
            flag = {"epochs": " (--epochs)", "save_every": " (--keep-checkpoints)"}.get(key, "")
            raise FaslandError(f"train.{key} = {t[key]!r}{flag} must be a positive integer; fix it in the config or preset")
    warning = check_update_rules(config, asked_rules)
    rules = [update_rule(e, config) for e in range(t["epochs"])]
    previous = read_run_config(out, config)
    finished = load_checkpoint(out / "checkpoint.pt")["epoch"] if (out / "checkpoint.pt").exists() and (out / "metrics.json").exists() else None
    resume = out / "resume.pt"
    state = load_checkpoint(resume) if resume.exists() and finished != t["epochs"] else None
    reached = state["epoch"] if state else finished
    if reached is not None and reached > t["epochs"]:
        raise FaslandError(f"'{out}' holds a run trained for {reached} epochs, longer than train.epochs = {t['epochs']}; "
                           f"pass --epochs {reached} to reuse it, use its checkpoints/epoch_{t['epochs']:03d}.pt, or a new --out")
    if finished is not None and finished == t["epochs"]:
        if previous != config:
            write_run_config(out, config)       # another --keep-checkpoints: the same run, kept differently
        prune_trajectory(out, t)
        return json.loads((out / "metrics.json").read_text())
    if finished is not None and state is None:
        raise FaslandError(f"cannot continue '{out}' from epoch {finished} to {t['epochs']}: its resume.pt (the optimizer state) "
                           f"is gone; pass --epochs {finished} or a new --out")
    warmed_by = None
    if state is None and warm_from:
        state, warmed_by, _ = find_warming(config, warm_from)

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

    # every input checked: only now does the folder become this run's
    make_run_dir(out)
    write_run_config(out, config)
    log = run_log(out)
    if warning:
        log.warning(warning)
        tqdm.write(f"fasland train: warning: {warning}", file=sys.stderr)
    start, evaluations = 0, []
    if state:
        model.load_state_dict(state["model"])
        algo.optimizer.load_state_dict(state["optimizer"])
        algo.load_extra_state(state["algorithm"])
        start = state["epoch"]
        # a continued run keeps the evaluations a run trained this long from the start makes
        evaluations = [e if e["epoch"] == t["epochs"] else without_intervals(e)   # only the last epoch has intervals
                       for e in state["metrics"]["evaluations"] if should_evaluate(e["epoch"], t)]
        if warmed_by is not None:
            warm_start(state, warmed_by, out, config, arch, rules)
            log.info(f"epochs 1–{start} ({rules[start - 1]}) taken from {warmed_by / WARMING}: the same plain ERM steps")
            tqdm.write(f"{config['method']}: epochs 1–{start} taken from {warmed_by} (the same plain ERM warming)", file=sys.stderr)
        else:
            log.info(f"resumed from epoch {start}" + (f" (a finished run of {finished} epochs continued to {t['epochs']})" if finished else ""))
    metrics = summarize(evaluations, t["eval_last"], rules[:start])
    steps_log = out / "steps.jsonl"
    keep = [l for l in steps_log.read_text().splitlines() if step_epoch(l) <= start] if steps_log.exists() and start else []
    atomic_write(steps_log, lambda tmp: tmp.write_text("".join(l + "\n" for l in keep)))

    if start == 0:
        save_checkpoint(out / "checkpoints" / "epoch_000.pt", model, arch, config, 0, summarize([], 0))
    log.info(f"update rules: {describe_rules(rules)}")
    log.info(f"training {config['method']} on {config['protocol']} ({', '.join(sources)} → target) for {t['epochs']} epochs on {device}")
    bar = tqdm(total=t["epochs"] * t["steps_per_epoch"], initial=start * t["steps_per_epoch"], disable=not progress,
               desc=f"train {config['method']}", unit="step", dynamic_ncols=True)
    with bar, steps_log.open("a") as steps_file:    # the bar ends its line even when a step fails (a bad frame)
        for epoch in range(start, t["epochs"]):
            g = torch.Generator().manual_seed(t["seed"] * 100_003 + epoch)
            for group, lr in zip(algo.optimizer.param_groups, base_lrs):
                group["lr"] = lr * epoch_lr_factor(epoch, t)
            algo.head_only = rules[epoch] == "head-only"
            algo.warming = epoch < t["minimizer_warming"]   # counted from epoch 0, head-only epochs included, as the released code
            model.train()
            for step in range(t["steps_per_epoch"]):
                algo.log_gradients = step % t["log_every"] == 0
                logs = algo.update(data.sample(g))
                steps_file.write(json.dumps({"epoch": epoch + 1, "step": epoch * t["steps_per_epoch"] + step, "rule": rules[epoch], **logs}) + "\n")
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
            metrics = summarize(evaluations, t["eval_last"], rules[:epoch + 1])
            if (epoch + 1) % t["save_every"] == 0 or epoch + 1 == t["epochs"]:
                save_checkpoint(out / "checkpoints" / f"epoch_{epoch + 1:03d}.pt", model, arch, config, epoch + 1, metrics)
            save_checkpoint(resume, model, arch, config, epoch + 1, metrics, optimizer=algo.optimizer.state_dict(),
                            algorithm=algo.extra_state())
            if epoch + 1 == t["minimizer_warming"] and shares_warming(config):   # what later runs can start from
                save_checkpoint(out / WARMING, model, arch, config, epoch + 1, metrics, optimizer=algo.optimizer.state_dict(),
                                algorithm=algo.extra_state())
    save_checkpoint(out / "checkpoint.pt", model, arch, config, t["epochs"], metrics, algorithm=algo.extra_state())
    atomic_write_json(out / "metrics.json", metrics)
    prune_trajectory(out, t)
    return metrics
