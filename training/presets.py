"""Run configurations as plain data: `demo` sized for a 2-core CPU (32 px, minutes; its models do not learn the
sources to 5%), `demo64` the `make demo` recipe (64 px, sources learned), `paper` the GAC-FAS recipe.
A preset's `hparams` only override the algorithm classes' HPARAMS (the one set of defaults)."""
import copy
from pathlib import Path

from training.data.synth import VERSION as SYNTH_VERSION
from training.errors import FaslandError

DEMO = {
    "data": {"root": "synth", "image_size": 32, "seed": 0},
    "model": {"name": "resnet18", "head": "linear", "pretrained": None},
    "hparams": {},                              # the classes' defaults
    "train": {
        "seed": 0, "epochs": 6, "steps_per_epoch": 25, "batch_per_domain": 16,
        "lr_step": 0, "lr_gamma": 0.5,          # StepLR(lr_step epochs, lr_gamma); 0 = constant
        "head_only_epochs": 0,                  # epochs that train only the head
        "minimizer_warming": 1,                 # epochs of plain ERM (head-only ones included) before SAM/GAC-FAS
        "augment": "flip",                      # flip | paper (rotation + cutout) | none
        "two_views": False,                     # second augmented view for the supervised-contrastive loss
        "eval_every": 1, "eval_last": 0, "eval_samples": 300,
        "log_every": 5,                         # per-step gradient log for ERM/SAM every N steps
        "save_every": 1,                        # trajectory checkpoint every N epochs
    },
}

PAPER = {
    "data": {"root": "synth", "image_size": 256, "seed": 0},
    "model": {"name": "resnet18", "head": "normed", "pretrained": None},
    "hparams": {"lr": 0.005, "momentum": 0.9, "weight_decay": 1e-4, "head_lr_mult": 10.0,
                "logit_scale": 12.0, "supcon_weight": 0.2},
    "train": {
        "seed": 0, "epochs": 150, "steps_per_epoch": 100, "batch_per_domain": 32,
        "lr_step": 40, "lr_gamma": 0.5, "head_only_epochs": 1, "minimizer_warming": 10,
        "augment": "paper", "two_views": True,
        "eval_every": 5, "eval_last": 10, "eval_samples": None,
        "log_every": 10, "save_every": 5,
    },
}

# `make demo`: the demo at 64 px, whose models learn their sources (README, "What the demo measured"): lr 0.02
# halved every 2 epochs; SAM and GAC-FAS apply their own update in the last 2 of 8 epochs (late phase, warm-started
# from the ERM run's first 6 in a study: the shortest own phase that keeps `make demo` under 25 minutes on the slow
# AVX2 machine), the trajectory keeps every 2nd epoch and the run is evaluated at epochs 4 and 8.
DEMO64 = copy.deepcopy(DEMO)
DEMO64["data"]["image_size"] = 64
DEMO64["hparams"] = {"lr": 0.02}
DEMO64["train"].update(epochs=8, lr_step=2, minimizer_warming=6, eval_every=4, save_every=2)

PRESETS = {"demo": DEMO, "demo64": DEMO64, "paper": PAPER}


def make_config(protocol: str, method: str, preset: str = "demo", *overrides: dict | None) -> dict:
    """A full run config: the preset, its hparams resolved over the method's defaults (so the config names
    every hyper-parameter of the run), then each of `overrides` merged in order (nested dicts; None is skipped)."""
    from training.algorithms import hparams

    if preset not in PRESETS:
        raise FaslandError(f"unknown preset '{preset}'; use one of {', '.join(PRESETS)}")
    config = copy.deepcopy(PRESETS[preset])
    config.update(protocol=protocol, method=method, preset=preset)
    config["hparams"] = hparams(method, config)
    for o in overrides:
        merge(config, o or {})
    resolve_paths(config)
    if config["data"]["root"] == "synth":   # a run on older SynthFAS images is another run
        config["data"]["synth_version"] = SYNTH_VERSION
    return config


def resolve_paths(config: dict) -> dict:
    """data.root (unless 'synth') and model.pretrained as resolved absolute paths: a run started from another
    folder finds them, and one folder given relative or absolute is one configuration."""
    d, m = config["data"], config["model"]
    if isinstance(d.get("root"), str):
        d["root"] = resolved_root(d["root"])
    if isinstance(m.get("pretrained"), str):
        m["pretrained"] = resolved(m["pretrained"])
    return config


def resolved(path) -> str:
    """A path as stored in configs and provenance: absolute, symlinks and '..' resolved, '~' expanded."""
    return str(Path(path).expanduser().resolve())


def resolved_root(root: str) -> str:
    """A data root as stored: 'synth' as it is, a folder resolved."""
    return root if str(root) == "synth" else resolved(root)


def merge(base: dict, overrides: dict, path: str = "") -> dict:
    """Recursively merge `overrides` into `base`; an unknown top-level section is an error."""
    for k, v in overrides.items():
        if path == "" and k not in base:
            raise FaslandError(f"unknown config section '{k}'; use one of {', '.join(sorted(base))}")
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            merge(base[k], v, f"{path}{k}.")
        else:
            base[k] = v
    return base


def flatten(config: dict, prefix: tuple = ()) -> dict:
    """{(section, key, …): value} of a nested config."""
    out = {}
    for k, v in config.items():
        if isinstance(v, dict) and v:
            out.update(flatten(v, prefix + (k,)))
        else:
            out[prefix + (k,)] = v
    return out


def config_differences(old: dict, new: dict, ignore=frozenset()) -> list[str]:
    """'section.key old → new' for every key whose value differs (a missing key shows as 'unset')."""
    a, b = flatten(old or {}), flatten(new or {})
    unset = object()
    return [f"{'.'.join(map(str, k))} {'unset' if a.get(k, unset) is unset else repr(a[k])} → "
            f"{'unset' if b.get(k, unset) is unset else repr(b[k])}"
            for k in sorted(set(a) | set(b), key=lambda k: tuple(map(str, k)))
            if k not in ignore and a.get(k, unset) != b.get(k, unset)]
