"""`fasland train` and `fasland data` as Python functions (training/cli.py only parses and prints)."""
from pathlib import Path

from training.errors import FaslandError


def read_yaml(path) -> dict:
    import yaml

    p = Path(path)
    if not p.is_file():
        raise FaslandError(f"config file '{path}' not found; pass a YAML file with sections data, model, hparams, train")
    try:
        cfg = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise FaslandError(f"config file '{path}' is not valid YAML (line {getattr(getattr(e, 'problem_mark', None), 'line', '?')}); fix its syntax") from None
    if not isinstance(cfg, dict):
        raise FaslandError(f"config file '{path}' holds a YAML {type(cfg).__name__}, not a mapping; write sections such as 'train: {{epochs: 2}}' (data, model, hparams, train)")
    return cfg


def run_config(protocol: str, method: str, preset: str = "demo", config=None, data=None, image_size=None, epochs=None,
               seed=None, pretrained=None, keep_checkpoints=None) -> dict:
    """The preset, then the `config` YAML file (a path) or dict, then the single values; paths stored resolved."""
    from training.data.protocols import check_protocol_data, parse_protocol

    parse_protocol(protocol)          # before the heavy imports: a mistyped protocol answers at once
    from training.presets import make_config

    overrides = (read_yaml(config) if not isinstance(config, dict) else config) if config else {}
    flags = {}
    for value, section, key in ((data, "data", "root"), (image_size, "data", "image_size"), (epochs, "train", "epochs"),
                                (seed, "train", "seed"), (pretrained, "model", "pretrained"),
                                (keep_checkpoints, "train", "save_every")):
        if value is not None:
            flags.setdefault(section, {})[key] = value
    made = make_config(protocol, method, preset, overrides, flags)
    check_protocol_data(protocol, made["data"]["root"])    # unseen-attack protocols need SynthFAS's attack kinds
    return made


def train(protocol: str, method: str, out, *, preset: str = "demo", config=None, data=None, image_size=None,
          epochs=None, seed=None, pretrained=None, keep_checkpoints=None, warm_from=None, device: str = "auto",
          threads: int | None = None) -> dict:
    """Train `method` on the protocol's source domains into the run directory `out` (resumed from its last
    epoch when rerun, continued when `epochs` grew); returns its metrics (metrics.json). keep_checkpoints=N
    keeps the trajectory checkpoint of every N-th epoch (epoch 0 and the last always). warm_from: a run
    directory (or a list of them, the first that fits is taken) of the same configuration whose plain-ERM
    warming epochs this run shares instead of training them again (training.trainer.find_warming); a single
    folder that does not fit is an error, a list falls back to training from epoch 0."""
    cfg = run_config(protocol, method, preset, config, data, image_size, epochs, seed, pretrained, keep_checkpoints)
    import torch

    from training.device import pick_device
    from training.trainer import find_warming, train as train_run

    if isinstance(warm_from, (str, Path)):
        fresh = not (Path(out) / "resume.pt").exists() and not (Path(out) / "checkpoint.pt").exists()
        _, _, why = find_warming(cfg, [warm_from]) if fresh else (None, None, [])
        if why:
            raise FaslandError(f"--warm-from {warm_from}: {why[0]}; pass the run directory of the same protocol, preset "
                               "and config (any method but rfm) trained past train.minimizer_warming, or leave --warm-from out")
        warm_from = [warm_from]
    if threads:
        torch.set_num_threads(threads)
    return train_run(cfg, out, pick_device(device), asked_rules=asks_for_rules(config), warm_from=warm_from)


def asks_for_rules(config) -> bool:
    """The user's config (YAML path or dict) sets the warming or head-only epochs itself: a method that then
    never applies its own update does so because they asked (training.trainer.check_update_rules)."""
    overrides = (read_yaml(config) if not isinstance(config, dict) else config) if config else {}
    section = overrides.get("train")
    return isinstance(section, dict) and bool({"minimizer_warming", "head_only_epochs"} & set(section))


def train_summary(metrics: dict, method: str, protocol: str, out) -> str:
    f = metrics["final"]["target"]
    per_kind = "".join(f", {k} {100 * v:.2f}%" for k, v in f.get("auc_by_kind", {}).items())    # unseen-attack protocols
    return (f"{method} {protocol}: target HTER {100 * f['hter']:.2f}%  AUC {100 * f['auc']:.2f}%{per_kind and ' (' + per_kind[2:] + ')'}  "
            f"(sources HTER {100 * metrics['final']['sources']['hter']:.2f}%)  → {out}")


def data_synth(out, image_size: int = 64, seed: int = 0) -> list:
    """The SynthFAS arrays and a contact sheet in `out`; returns the files written."""
    from training.data.synth import write_synth

    return list(write_synth(out, image_size=image_size, seed=seed))
