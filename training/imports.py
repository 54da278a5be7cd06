"""`fasland import`: a checkpoint of another codebase (the GAC-FAS release, SA-FAS, torchvision, or any
nn.Module a user's factory builds) → an ordinary fasland checkpoint {model, arch, config, epoch, metrics,
provenance} that surface, hessian, conflicts, export and the study read unchanged.

Reading the foreign file never runs code from it: `read_foreign` unpickles with a restricted unpickler
that lets torch rebuild tensors and storages and plain containers, and turns every other global into an
inert placeholder (dict-like state kept as data, so a pickled config can still be read). A pickle that
would *call* anything else (os.system, a constructor with arguments) is refused."""
import collections
import copyreg
import io
import pickle
from pathlib import Path

from training.errors import FaslandError

FORMATS = ("gacfas", "safas", "torchvision", "module")
WRAPPER_PREFIXES = ("module.", "_orig_mod.")      # DataParallel / DistributedDataParallel, torch.compile


# ------------------------------------------------------------------------------- restricted unpickling

class Opaque(dict):
    """A pickled object of a class fasland does not import: its dict items and its state, as data."""

    _global = "?"

    def __setstate__(self, state):
        self.__dict__["_state"] = state

    def field(self, name, default=None):
        """An item, else an attribute of the pickled state (EasyDict keeps both, argparse.Namespace the state)."""
        if name in self:
            return self[name]
        state = self.__dict__.get("_state")
        if isinstance(state, tuple) and state and isinstance(state[0], dict):    # (dict state, slots)
            state = state[0]
        return state.get(name, default) if isinstance(state, dict) else default

    def __repr__(self):
        return f"<pickled {self._global}>"


class _OpaqueMeta(type):
    def __call__(cls, *args, **kwargs):
        """REDUCE: the pickle asks to call this global; nothing is called, the call is recorded."""
        return Refused(cls._global)


class Refused:
    """Where a pickle asked to call a global fasland does not run."""

    def __init__(self, name: str):
        self.name = name


def _reconstructor(cls, base, state):
    """copyreg._reconstructor of protocols 0/1, for placeholders only."""
    return dict.__new__(cls) if isinstance(cls, _OpaqueMeta) else Refused("copyreg._reconstructor")


class RestrictedUnpickler(pickle.Unpickler):
    """find_class: torch's tensor and storage rebuilders, torch dtypes, plain containers; every other
    global becomes a placeholder class (instantiated without running anything)."""

    def find_class(self, module, name):
        import torch
        import torch._utils

        if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_tensor", "_rebuild_parameter",
                                                 "_rebuild_parameter_with_state"):
            return getattr(torch._utils, name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        if (module, name) in (("torch", "Size"), ("torch", "device")):
            return getattr(torch, name)
        if module in ("builtins", "__builtin__") and name in ("dict", "list", "set", "frozenset", "tuple", "int",
                                                               "float", "complex", "bool", "str", "bytes", "bytearray", "slice"):
            return getattr(__import__("builtins"), name)
        if (module, name) in (("collections", "OrderedDict"), ("collections", "defaultdict")):
            return getattr(collections, name)
        if (module, name) == ("_codecs", "encode"):
            return __import__("_codecs").encode
        if (module, name) == ("copyreg", "_reconstructor"):
            return _reconstructor
        return _OpaqueMeta(name, (Opaque,), {"_global": f"{module}.{name}", "__module__": "fasland.opaque"})


class _PickleModule:
    """What torch.load needs of a pickle module, with the restricted unpickler."""

    Unpickler = RestrictedUnpickler
    __name__ = "fasland_restricted_pickle"

    @staticmethod
    def load(f, **kwargs):
        return RestrictedUnpickler(f, **kwargs).load()


def refused_calls(obj, seen=None) -> list[str]:
    """The globals a loaded object asked to call (Refused markers), anywhere in it."""
    import torch

    seen = set() if seen is None else seen
    if id(obj) in seen or isinstance(obj, (torch.Tensor, str, bytes, int, float, bool, type(None))):
        return []
    seen.add(id(obj))
    if isinstance(obj, Refused):
        return [obj.name]
    found = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            found += refused_calls(k, seen) + refused_calls(v, seen)
    elif isinstance(obj, (list, tuple, set, frozenset)):
        for v in obj:
            found += refused_calls(v, seen)
    if isinstance(obj, Opaque):
        found += refused_calls(obj.__dict__.get("_state"), seen)
    return found


def read_foreign(path) -> object:
    """torch.load of any checkpoint with the restricted unpickler (CPU); nothing in the file runs. A file
    that asks to call a global outside tensors and containers is refused with that global's name."""
    import torch

    p = Path(path)
    if not p.is_file():
        raise FaslandError(f"--checkpoint '{path}' not found; pass the checkpoint file to import")
    try:
        obj = torch.load(p, map_location="cpu", pickle_module=_PickleModule, weights_only=False)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError, TypeError, AttributeError,
            IndexError, KeyError, ImportError) as e:
        raise FaslandError(f"--checkpoint '{path}' is not a readable torch.save file ({type(e).__name__}); re-copy it or save it with torch.save") from None
    calls = refused_calls(obj)
    if calls:
        raise FaslandError(f"--checkpoint '{path}' holds a pickled call to {calls[0]}, which would run code when loaded and is refused "
                           "(nothing was run); save the weights alone with torch.save({'state_dict': model.state_dict()}, path)")
    return obj


# ------------------------------------------------------------------------------- source layouts

class Layout:
    """How one codebase names a model's tensors: (source prefix, fasland prefix) renames, the prefixes of
    tensors the forward pass never uses (dropped), and where the state_dict sits in the saved file."""

    def __init__(self, title: str, renames, unused=(), containers=("state_dict", "model")):
        self.title, self.renames, self.unused, self.containers = title, tuple(renames), tuple(unused), containers

    def to_fasland(self, name: str) -> str:
        for src, dst in self.renames:
            if name.startswith(src):
                return dst + name[len(src):]
        return name

    def to_source(self, name: str) -> str:
        for src, dst in self.renames:
            if name.startswith(dst):
                return src + name[len(dst):]
        return name


TORCHVISION_TRUNK = (("conv1.", "stem.0."), ("bn1.", "stem.1."), ("layer", "layer"))
LAYOUTS = {
    # GAC-FAS models/resnet.py Resnet18: the torchvision resnet18 under `model.` (its 1000-class `model.fc` unused),
    # the same blocks again as `layer_blocks.N`, and the cosine head `fc.weight` (classes × 512, no bias)
    "gacfas": Layout("GAC-FAS release Resnet18", [("model.conv1.", "stem.0."), ("model.bn1.", "stem.1."),
                                                 ("model.layer", "layer"), ("fc.", "head.")],
                     unused=("model.fc.", "layer_blocks.")),
    # SA-FAS networks/resnet_lgt.py resnet18: the trunk at the top level, heads fc0..fc2 (weight 1 × 512, bias 1),
    # the learned scale fc_scale + bn_scale, and proj / projection / predictor (training only)
    "safas": Layout("SA-FAS resnet_lgt resnet18", TORCHVISION_TRUNK + tuple((f"{h}.", f"{h}.") for h in
                                                                            ("fc0", "fc1", "fc2", "fc_scale", "bn_scale")),
                    unused=("proj.", "projection.", "predictor.")),
    "torchvision": Layout("torchvision resnet18", TORCHVISION_TRUNK + (("fc.", "head."),)),
    "module": Layout("model of --model", ()),
}


def source_state(obj, path, layout: Layout) -> dict:
    """The tensors of a loaded file: a bare state_dict, or one under 'state_dict' / 'model'; the prefixes of
    DataParallel/DDP ('module.') and torch.compile ('_orig_mod.') removed."""
    import torch

    def is_state(d):
        return isinstance(d, dict) and d and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in d.items())

    state = obj if is_state(obj) else next((obj[k] for k in layout.containers if isinstance(obj, dict) and is_state(obj.get(k))), None)
    if state is None:
        where = " or under ".join(f"'{k}'" for k in layout.containers)
        raise FaslandError(f"--checkpoint '{path}' holds no state_dict of tensors (bare, or under {where}); save one with torch.save(model.state_dict(), path)")
    state = dict(state)
    for prefix in WRAPPER_PREFIXES:
        if all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def config_of(obj):
    """The pickled training config of the GAC-FAS / SA-FAS saves ('args'), or None."""
    return obj.get("args") if isinstance(obj, dict) and isinstance(obj.get("args"), (dict, Opaque)) else None


def field(cfg, *names, default=None):
    """cfg.names[0].names[1]… of a pickled config (dict items or attributes), or `default`."""
    for name in names:
        if isinstance(cfg, Opaque):
            cfg = cfg.field(name)
        elif isinstance(cfg, dict):
            cfg = cfg.get(name)
        else:
            return default
    return default if cfg is None or isinstance(cfg, (Opaque, Refused)) else cfg


def _number(value, kind=float):
    try:
        return kind(value)
    except (TypeError, ValueError):
        return None


def source_settings(fmt: str, args) -> dict:
    """protocol, image_size, normalize, logit_scale (and SA-FAS head options) read from a pickled config."""
    if args is None:
        return {"logit_scale": 12.0} if fmt == "gacfas" else {}     # the release's default scale
    if fmt == "gacfas":
        out = {"protocol": field(args, "protocol"), "image_size": _number(field(args, "MODEL", "image_size"), int),
               "normalize": "imagenet", "loss_func": field(args, "TRAIN", "loss_func", default="bce"),
               "logit_scale": _number(field(args, "TRAIN", "logit_scale", default=12.0))}
        gac = {k: _number(field(args, "TRAIN", "GAC", k)) for k in ("rho", "eta", "alpha")}
        out["hparams"] = {k: v for k, v in gac.items() if v is not None}
        return out
    if fmt == "safas":
        protocol = field(args, "protocol")
        scale = field(args, "scale", default="1")
        return {"protocol": protocol.replace("_to_", "2").replace("_", "") if isinstance(protocol, str) else None,
                "image_size": _number(field(args, "img_size"), int),
                "normalize": "imagenet" if field(args, "pretrain", default="imagenet") == "imagenet" else "minus-one-one",
                "normed": bool(field(args, "normfc", default=False)), "use_bias": bool(field(args, "usebias", default=True)),
                "logit_scale": None if str(scale) == "None" else _number(scale)}
    return {}


# ------------------------------------------------------------------------------- the import

def import_checkpoint(format: str, checkpoint, out, protocol: str | None = None, model: str | None = None,
                      data: str = "synth", image_size: int | None = None, normalize: str | None = None,
                      live_index: int | None = None, logit_scale: float | None = None) -> dict:
    """Convert `checkpoint` (written by the codebase `format`) into the fasland checkpoint `out`; returns it.
    Flags left None are read from the file's pickled config where it has one (GAC-FAS: protocol,
    MODEL.image_size, TRAIN.logit_scale; SA-FAS: protocol, img_size, pretrain, normfc, usebias, scale)."""
    import torch

    from training.checkpoint import file_hash, save_checkpoint, state_mismatch
    from training.data.domain_data import NORMALIZATIONS
    from training.data.protocols import parse_protocol
    from training.model import build_model, import_factory

    if format not in FORMATS:
        raise FaslandError(f"unknown --format '{format}'; use one of {', '.join(FORMATS)}")
    if (format == "module") != (model is not None):
        raise FaslandError("--model PKG.MODULE:FACTORY names the model of --format module (and only of it); "
                           + ("add --model" if format == "module" else f"drop --model or pass --format module"))
    if Path(out).is_dir():
        raise FaslandError(f"--out '{out}' is a folder; pass a file name such as {Path(out) / 'checkpoint.pt'}")
    if normalize is not None and normalize not in NORMALIZATIONS:
        raise FaslandError(f"unknown --normalize '{normalize}'; use one of {', '.join(NORMALIZATIONS)}")
    if image_size is not None and image_size < 8:
        raise FaslandError(f"--image-size {image_size} is too small; use at least 8 pixels (the source's training size, e.g. 256)")
    if live_index is not None and live_index not in (0, 1):
        raise FaslandError(f"--live-index {live_index} is out of range; a two-class head has classes 0 and 1, pass the live one")
    if str(data) != "synth" and not Path(data).is_dir():
        raise FaslandError(f"--data '{data}' is not a folder; pass synth or the root holding replay/, oulu/, casia/, msu/")
    if model is not None:
        import_factory(model)                  # a factory that does not import fails before the file is read

    layout = LAYOUTS[format]
    obj = read_foreign(checkpoint)
    state = source_state(obj, checkpoint, layout)
    found = source_settings(format, config_of(obj))

    protocol = protocol or found.get("protocol")
    if not protocol:
        raise FaslandError(f"--checkpoint '{checkpoint}' records no protocol (no training config saved with it); pass --protocol, e.g. --protocol ICM2O")
    try:
        parse_protocol(protocol)
    except FaslandError:
        raise FaslandError(f"protocol '{protocol}' (of --checkpoint '{checkpoint}') is not a cross-domain protocol fasland knows; "
                           "pass --protocol ICM2O, OCM2I, OCI2M, OMI2C, MI2C or MI2O") from None

    # the architecture, from the file's head and config
    if format == "gacfas" or format == "torchvision":
        w = state.get("fc.weight")
        if w is not None and (w.dim() != 2 or w.shape[0] not in (1, 2)):
            raise FaslandError(f"--checkpoint '{checkpoint}': its head fc.weight is {tuple(w.shape)}; fasland reads a head of 1 output "
                               "(a logit) or 2 (live/spoof classes) — retrain or cut the head to one of those")
        arch = {"name": "resnet18", "head": "normed" if format == "gacfas" else "linear", "outputs": 1 if w is None else int(w.shape[0])}
    elif format == "safas":
        scale = logit_scale if logit_scale is not None else found.get("logit_scale", 1.0)
        arch = {"name": "safas_resnet18", "normed": found.get("normed", False), "use_bias": found.get("use_bias", True), "scale": scale}
    else:
        arch = {"name": "module", "factory": model}
    net = build_model(arch)
    expected = {layout.to_source(k): v for k, v in net.state_dict().items()}
    kept = {k: v for k, v in state.items() if not k.startswith(layout.unused) or k in expected}
    if format == "safas" and arch["scale"] is not None:
        kept = {k: v for k, v in kept.items() if not k.startswith(("fc_scale.", "bn_scale."))}     # the fixed scale replaces them
    for k in expected:      # checkpoints from before BatchNorm counted its batches
        if k.endswith("num_batches_tracked") and k not in kept:
            kept[k] = expected[k]
    mismatch = state_mismatch(expected, kept)
    if mismatch:
        raise FaslandError(f"--checkpoint '{checkpoint}' does not fit the {layout.title} ({mismatch}); pass the --format of the codebase "
                           "that wrote it, or --format module --model PKG.MODULE:FACTORY that builds its model")
    net.load_state_dict({layout.to_fasland(k): v for k, v in kept.items()})

    # what the model gives per image decides the loss
    size = image_size or found.get("image_size") or 256
    net.eval()
    with torch.no_grad():
        try:
            z = net(torch.zeros(2, 3, size, size))
        except Exception as e:
            raise FaslandError(f"the imported model fails on a 2 × 3 × {size} × {size} batch ({type(e).__name__}: {e}); "
                               "pass the --image-size it was trained on") from None
    if not isinstance(z, torch.Tensor) or tuple(z.shape) not in ((2,), (2, 1), (2, 2)):
        shape = tuple(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__
        raise FaslandError(f"the imported model gives {shape} for 2 images; fasland needs one logit ([N] or [N, 1]) or two class "
                           "scores ([N, 2]) per image — make the factory return a model with such a head")
    two = tuple(z.shape) == (2, 2)
    if live_index is not None and not two:
        raise FaslandError(f"--live-index {live_index} is for two-class heads, but this model gives one logit per image; drop --live-index")
    if two and logit_scale is not None:
        raise FaslandError(f"--logit-scale {logit_scale} is for one-logit heads (BCE on σ(s·z)), but this model gives two class scores; drop --logit-scale")
    if two:
        loss = {"kind": "cross_entropy", "live_index": 1 if live_index is None else live_index}
    elif format == "safas":
        loss = {"kind": "bce", "logit_scale": 1.0}          # the scale is inside the model: z is the ensemble's logit
    else:
        s = logit_scale if logit_scale is not None else (found.get("logit_scale") if found.get("loss_func", "bce") == "bce" else None)
        loss = {"kind": "bce", "logit_scale": float(s if s is not None else 1.0)}

    provenance = {"format": format, "source": str(Path(checkpoint).resolve()), "source_sha256": file_hash(checkpoint)}
    if model is not None:
        provenance["factory"] = model
    data_cfg = {"root": str(data), "image_size": int(size), "normalize": normalize or found.get("normalize", "imagenet"), "seed": 0}
    if str(data) == "synth":
        from training.data.synth import VERSION
        data_cfg["synth_version"] = VERSION
    config = {"protocol": protocol, "method": format, "data": data_cfg, "model": arch, "loss": loss,
              "hparams": {**found.get("hparams", {}), **({"logit_scale": loss["logit_scale"]} if "logit_scale" in loss else {})},
              "import": provenance}
    epoch = obj.get("epoch") if isinstance(obj, dict) else None
    save_checkpoint(out, net, arch, config, epoch if isinstance(epoch, int) else 0, {}, provenance=provenance)
    return {"model": net.state_dict(), "arch": arch, "config": config, "epoch": epoch, "provenance": provenance}


# ------------------------------------------------------------------------------- the command

def register(sub) -> None:
    p = sub.add_parser("import", help="turn a GAC-FAS / SA-FAS / torchvision / any PyTorch checkpoint into a fasland checkpoint",
                       description="Write a fasland checkpoint (weights, arch, config with protocol, preprocessing and loss, "
                                   "provenance) from another codebase's file, which every later command reads unchanged. "
                                   "Nothing in the file runs: pickled objects are read as inert data.")
    p.add_argument("--format", required=True, choices=FORMATS, help="gacfas (the GAC-FAS release), safas (SA-FAS resnet_lgt), "
                   "torchvision (a resnet18 state_dict, 1 or 2 outputs) or module (--model builds it)")
    p.add_argument("--checkpoint", required=True, help="the source file")
    p.add_argument("--model", default=None, metavar="PKG.MODULE:FACTORY", help="--format module: the function that builds your nn.Module")
    p.add_argument("--protocol", default=None, help="ICM2O, OCM2I, OCI2M, OMI2C, MI2C or MI2O (default: the file's config)")
    p.add_argument("--data", default="synth", help="'synth' or the root of the real datasets (replay/, oulu/, casia/, msu/)")
    p.add_argument("--image-size", type=int, default=None, help="the size the model was trained on (default: the file's config, else 256)")
    p.add_argument("--normalize", default=None, choices=["imagenet", "minus-one-one", "none"], help="input normalization (default: the source's)")
    p.add_argument("--live-index", type=int, default=None, help="two-class heads: the class that is live (default 1)")
    p.add_argument("--logit-scale", type=float, default=None, help="one-logit heads: BCE on σ(S·z) (default: the file's config)")
    p.add_argument("--out", required=True, help="the fasland checkpoint CKPT.pt")
    p.set_defaults(run=run_import)


def run_import(args) -> int:
    ckpt = import_checkpoint(args.format, args.checkpoint, args.out, protocol=args.protocol, model=args.model, data=args.data,
                             image_size=args.image_size, normalize=args.normalize, live_index=args.live_index,
                             logit_scale=args.logit_scale)
    c = ckpt["config"]
    loss = c["loss"]
    what = f"cross-entropy, live = class {loss['live_index']}" if loss["kind"] == "cross_entropy" else f"BCE on σ({loss['logit_scale']:g}·z)"
    print(f"{args.format} → {args.out}: {c['protocol']}, {c['data']['image_size']} px, {c['data']['normalize']} normalization, {what}")
    return 0


# ------------------------------------------------------------------------------- models a study is given

def brought_checkpoints(spec, protocol: str | None = None) -> tuple[str, dict]:
    """`NAME=CKPT,…` (or a dict) → (their common protocol, {name: Path}); each a fasland checkpoint (made by
    train or import). `protocol`, when given, must be theirs."""
    import re

    from training.checkpoint import load_checkpoint

    pairs = spec.items() if isinstance(spec, dict) else [item.partition("=")[::2] for item in str(spec).split(",") if item.strip()]
    given = {}
    for name, path in pairs:
        name, path = str(name).strip(), str(path).strip()
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", name) or not path or name in given:
            raise FaslandError(f"--checkpoints entry '{name}={path}' needs a distinct NAME (letters, digits, _ . -) and a file; "
                               "pass e.g. --checkpoints erm=erm.pt,gacfas=gacfas.pt")
        given[name] = Path(path)
    if not given:
        raise FaslandError("--checkpoints names no model; pass e.g. --checkpoints erm=erm.pt,gacfas=gacfas.pt")
    found = {}
    for name, path in given.items():
        config = load_checkpoint(path)["config"]
        found.setdefault(config.get("protocol"), []).append(name)
    if len(found) > 1 or (protocol and protocol not in found):
        have = "; ".join(f"{', '.join(names)}: {p}" for p, names in found.items())
        raise FaslandError(f"the --checkpoints are of different protocols than asked ({have}{'; asked ' + protocol if protocol else ''}); "
                           "compare models of one protocol (fasland import --protocol P sets it)")
    return next(iter(found)), given


def write_metrics(checkpoint, run_dir, device="cpu") -> dict:
    """RUN_DIR/metrics.json of a model the study did not train: its target and sources' HTER/AUC (with client
    intervals) on every held-out image (real data: one frame per video), as training's final evaluation."""
    from training.checkpoint import atomic_write_json, load_model
    from training.probe import load_probe
    from training.trainer import evaluate

    model, ckpt = load_model(checkpoint, device)
    final = evaluate(model, load_probe(ckpt["config"], device, max_samples=None, source_split="test"), intervals=True)
    metrics = {"evaluations": [], "final": final, "source": str(checkpoint)}
    atomic_write_json(Path(run_dir) / "metrics.json", metrics)
    return metrics
