"""Checkpoints: {model, arch, config, epoch, metrics}, written atomically, loaded without unpickling code."""
import hashlib
import json
import os
import pickle
import zipfile
from pathlib import Path

import torch
from torch import nn

from training.errors import FaslandError
from training.model import build_model

KEYS = ("model", "arch", "config", "epoch", "metrics")


def atomic_save(obj, path) -> None:
    """torch.save to a temporary file beside `path`, then rename: a kill never leaves a torn file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise FaslandError(f"cannot write '{path}' ({e.strerror}); choose a writable output folder with free space") from None


def atomic_write_json(path, obj) -> None:
    """JSON to a temporary file beside `path`, then rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(obj, indent=2))
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise FaslandError(f"cannot write '{path}' ({e.strerror}); choose a writable output folder with free space") from None


def save_checkpoint(path, model: nn.Module, arch: dict, config: dict, epoch: int, metrics: dict, **extra) -> None:
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    atomic_save({"model": state, "arch": arch, "config": config, "epoch": epoch, "metrics": metrics, **extra}, path)


def load_checkpoint(path) -> dict:
    """Load a fasland checkpoint on the CPU with weights_only=True; every failure is one clear sentence."""
    p = Path(path)
    if not p.exists():
        raise FaslandError(f"checkpoint '{path}' not found; pass the checkpoint.pt of a run made by 'fasland train'")
    if not p.is_file():
        raise FaslandError(f"checkpoint '{path}' is not a file; pass RUN_DIR/checkpoint.pt")
    try:
        ckpt = torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise FaslandError(f"checkpoint '{path}' holds pickled objects that could run code and is refused; save plain tensors, dicts and numbers") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as e:
        raise FaslandError(f"checkpoint '{path}' is truncated or corrupt ({type(e).__name__}); re-run or re-copy the training run") from None
    if not isinstance(ckpt, dict) or any(k not in ckpt for k in KEYS):
        raise FaslandError(f"'{path}' is not a fasland checkpoint (it needs the keys {', '.join(KEYS)}); pass one written by 'fasland train'")
    return ckpt


def load_model(path, device="cpu") -> tuple[nn.Module, dict]:
    """Rebuild the checkpoint's model in eval mode on `device`; returns (model, checkpoint)."""
    ckpt = load_checkpoint(path)
    model = build_model(ckpt["arch"])
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        first = str(e).splitlines()[1].strip() if len(str(e).splitlines()) > 1 else str(e)
        raise FaslandError(f"checkpoint '{path}' does not fit the {ckpt['arch']} model ({first[:120]}); pass a checkpoint of that architecture") from None
    bad = [k for k, v in ckpt["model"].items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise FaslandError(f"checkpoint '{path}' has NaN/inf weights in {bad[0]} (and {len(bad) - 1} more); use an earlier epoch checkpoint of that run")
    return model.to(device).eval(), ckpt


def file_hash(path) -> str:
    """sha256 of a file's bytes: the provenance stamp of surfaces and analyses."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
