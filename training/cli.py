"""`fasland train` and `fasland data`."""
from pathlib import Path

import torch
import yaml

from training.errors import FaslandError


def register(sub) -> None:
    p = sub.add_parser("train", help="train ERM / SAM / GAC-FAS / RFM on the source domains of a protocol",
                       description="Train one method on a protocol's source domains; rerunning resumes from the last epoch.")
    p.add_argument("--protocol", required=True, help="ICM2O, OCM2I, OCI2M, OMI2C, MI2C or MI2O")
    p.add_argument("--method", required=True, help="erm, sam, gacfas or rfm")
    p.add_argument("--data", default=None, help="'synth' (default: the embedded SynthFAS) or the root of the real datasets")
    p.add_argument("--preset", default="demo", help="demo (2-core CPU) or paper (the GAC-FAS recipe)")
    p.add_argument("--config", default=None, help="YAML file whose sections override the preset (data, model, hparams, train)")
    p.add_argument("--epochs", type=int, default=None, help="epochs to train (default: the preset's); a larger value on a finished run continues it")
    p.add_argument("--keep-checkpoints", type=int, default=None, metavar="N",
                   help="keep the trajectory checkpoint of every N-th epoch (epoch 0 and the last always); default: the preset's train.save_every")
    p.add_argument("--image-size", type=int, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--pretrained", default=None, help="a local torchvision resnet18 state_dict (nothing downloads)")
    p.add_argument("--device", default="auto", help="auto (CUDA where present), cpu, cuda, cuda:N")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--out", required=True, help="run directory")
    p.set_defaults(run=run_train)

    p = sub.add_parser("data", help="write the SynthFAS cache and a contact sheet",
                       description="fasland data synth --out DIR: SynthFAS arrays and contact_sheet.png.")
    p.add_argument("kind", choices=["synth"])
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    p.set_defaults(run=run_data)


def read_yaml(path) -> dict:
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


def run_config(args) -> dict:
    """The preset, then the --config file, then the single-value flags; paths stored resolved."""
    from training.data.protocols import parse_protocol
    from training.presets import make_config

    parse_protocol(args.protocol)
    overrides = read_yaml(args.config) if args.config else {}
    flags = {}
    for value, section, key in ((args.data, "data", "root"), (args.image_size, "data", "image_size"),
                                (args.epochs, "train", "epochs"), (args.seed, "train", "seed"),
                                (args.keep_checkpoints, "train", "save_every"),
                                (args.pretrained, "model", "pretrained")):
        if value is not None:
            flags.setdefault(section, {})[key] = value
    return make_config(args.protocol, args.method, args.preset, overrides, flags)


def asks_for_rules(args) -> bool:
    """The --config file sets the warming or head-only epochs itself: a method that then never applies its
    own update does so because the user asked (trainer.check_update_rules)."""
    section = (read_yaml(args.config) if args.config else {}).get("train")
    return isinstance(section, dict) and bool({"minimizer_warming", "head_only_epochs"} & set(section))


def run_train(args) -> int:
    from training.device import pick_device
    from training.trainer import train

    if args.threads:
        torch.set_num_threads(args.threads)
    config = run_config(args)
    metrics = train(config, args.out, pick_device(args.device), asked_rules=asks_for_rules(args))
    f = metrics["final"]["target"]
    print(f"{args.method} {args.protocol}: target HTER {100 * f['hter']:.2f}%  AUC {100 * f['auc']:.2f}%  "
          f"(sources HTER {100 * metrics['final']['sources']['hter']:.2f}%)  → {args.out}")
    return 0


def run_data(args) -> int:
    from training.data.synth import write_synth

    for path in write_synth(args.out, image_size=args.image_size, seed=args.seed):
        print(path)
    return 0
