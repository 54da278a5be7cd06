"""Checkpoints: {model, arch, config, epoch, metrics}, written atomically, loaded without unpickling code."""
import contextlib
import hashlib
import json
import os
import pickle
import re
import zipfile
from pathlib import Path

import torch
from torch import nn

from training.errors import FaslandError
from training.model import build_model

KEYS = ("model", "arch", "config", "epoch", "metrics")


def atomic_save(obj, path) -> None:
    """torch.save to a temporary file beside `path`, then rename: a kill never leaves a torn file."""
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def atomic_write_json(path, obj) -> None:
    """JSON to a temporary file beside `path`, then rename."""
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(obj, indent=2)))


def atomic_write(path, write) -> Path:
    """write(tmp) then rename tmp over `path`; temporaries left by killed writers of `path` are removed.
    A failed write (read-only folder, a file where a folder should be, full disk: torch.save and h5py
    report that as a RuntimeError) is one sentence, and `path` keeps its old content."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_temporaries(path)
        write(tmp)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        blocker = next((a for a in path.parents if a.exists() and not a.is_dir()), None)
        reason = (f"'{blocker}' is a file, not a folder" if blocker else e.strerror if isinstance(e, OSError) and e.strerror
                  else "the write stopped part-way, is the disk full?")
        raise FaslandError(f"cannot write '{path}' ({reason}); choose a writable output folder with free space") from None
    return path


def _remove_stale_temporaries(path: Path) -> None:
    """Delete the `.NAME.PID.tmp` files in `path`'s folder whose writer PID no longer runs (killed mid-write)."""
    for tmp in path.parent.glob(".*.tmp"):
        pid = tmp.name[:-len(".tmp")].rsplit(".", 1)[-1]
        if pid.isdigit() and int(pid) != os.getpid() and not _running(int(pid)):
            with contextlib.suppress(OSError):
                tmp.unlink()


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def save_checkpoint(path, model: nn.Module, arch: dict, config: dict, epoch: int, metrics: dict, **extra) -> None:
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    atomic_save({"model": state, "arch": arch, "config": config, "epoch": epoch, "metrics": metrics, **extra}, path)


def trajectory_checkpoints(run_dir, at_least: int = 1) -> list[Path]:
    """RUN_DIR/checkpoints/epoch_*.pt, the trajectory a run saved, in epoch order (at least `at_least`)."""
    if not Path(run_dir).is_dir():
        raise FaslandError(f"run directory '{run_dir}' is not a folder; pass the RUN_DIR written by 'fasland train'")
    folder = Path(run_dir) / "checkpoints"
    files = sorted(folder.glob("epoch_*.pt"), key=lambda p: int(re.sub(r"\D", "", p.stem) or 0))
    if len(files) < at_least:
        raise FaslandError(f"need at least {at_least} checkpoint{'s' if at_least > 1 else ''} epoch_*.pt in '{folder}', found {len(files)}; "
                           "pass the RUN_DIR of a 'fasland train' run (it saves one per epoch)")
    return files


def load_checkpoint(path) -> dict:
    """Load a fasland checkpoint on the CPU with weights_only=True; every failure is one clear sentence."""
    p = Path(path)
    if not p.exists():
        raise FaslandError(f"checkpoint '{path}' not found; pass the checkpoint.pt of a run made by 'fasland train'")
    if not p.is_file():
        raise FaslandError(f"checkpoint '{path}' is not a file; pass RUN_DIR/checkpoint.pt")
    try:
        ckpt = torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"GLOBAL ([\w.]+)", str(e))
        if found or zipfile.is_zipfile(p):
            what = f" ({found.group(1)})" if found else ""
            raise FaslandError(f"checkpoint '{path}' holds pickled objects{what} that could run code and is refused; "
                               "save plain tensors, dicts and numbers, or convert another codebase's file with 'fasland import'") from None
        raise FaslandError(f"checkpoint '{path}' is truncated or corrupt (not a torch.save file); re-run or re-copy the training run") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as e:
        raise FaslandError(f"checkpoint '{path}' is truncated or corrupt ({type(e).__name__}); re-run or re-copy the training run") from None
    if not isinstance(ckpt, dict) or any(k not in ckpt for k in KEYS):
        raise FaslandError(f"'{path}' is not a fasland checkpoint (it needs the keys {', '.join(KEYS)}); pass one written by 'fasland train', "
                           "or convert it with 'fasland import --format gacfas|safas|torchvision|module'")
    state = ckpt["model"]
    if (not isinstance(ckpt["arch"], dict) or not isinstance(ckpt["config"], dict) or not isinstance(state, dict)
            or not all(isinstance(v, torch.Tensor) for v in state.values())):
        raise FaslandError(f"'{path}' is not a fasland checkpoint (model must be a state_dict of tensors, arch and config dicts); "
                           "pass one written by 'fasland train'")
    return ckpt


def load_model(path, device="cpu") -> tuple[nn.Module, dict]:
    """Rebuild the checkpoint's model in eval mode on `device`; returns (model, checkpoint)."""
    ckpt = load_checkpoint(path)
    model = build_model(ckpt["arch"])
    mismatch = state_mismatch(model.state_dict(), ckpt["model"])
    if mismatch:
        name = "/".join(str(v) for v in ckpt["arch"].values())
        raise FaslandError(f"checkpoint '{path}' does not fit the {name} model named by its arch ({mismatch}); "
                           "pass a checkpoint of that architecture")
    model.load_state_dict(ckpt["model"])
    bad = [k for k, v in ckpt["model"].items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        more = f" and {len(bad) - 1} more tensors" if len(bad) > 1 else ""
        raise FaslandError(f"checkpoint '{path}' has NaN/inf weights in {bad[0]}{more}; use an earlier epoch checkpoint of that run")
    return model.to(device).eval(), ckpt


def load_probed_model(path, device="cpu") -> tuple[nn.Module, dict]:
    """`load_model` of a checkpoint whose config names the protocol and data its probe is built from."""
    model, ckpt = load_model(path, device)
    config = ckpt["config"]
    if not isinstance(config, dict) or "protocol" not in config or "data" not in config:
        raise FaslandError(f"checkpoint '{path}' has no protocol/data in its config; pass a checkpoint written by 'fasland train'")
    return model, ckpt


def state_mismatch(expected: dict, state: dict) -> str:
    """'' when `state` has exactly the keys and shapes of `expected`, else a short account of the first differences."""
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    def count(names, what):
        return f"{len(names)} {what} tensor{'s' if len(names) > 1 else ''} ({names[0]}{', …' if len(names) > 1 else ''})"

    parts = []
    if missing:
        parts.append(count(missing, "missing"))
    if unexpected:
        parts.append(count(unexpected, "unexpected"))
    if shapes:
        k = shapes[0]
        n, more = len(shapes), ", …" if len(shapes) > 1 else ""
        parts.append(f"{n} mis-shaped tensor{'s' if n > 1 else ''} ({k} is {tuple(state[k].shape)}, not {tuple(expected[k].shape)}{more})")
    return ", ".join(parts)


def file_hash(path) -> str:
    """sha256 of a file's bytes: the provenance stamp of surfaces and analyses."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
