"""Real datasets in the SA-FAS / GAC-FAS layout:
ROOT/{replay,oulu,casia,msu}/{train,test}/.../<video>/crop_*.jpg, the label read from the word
"live" or "spoof" in the path below the split folder (a folder name or a _/- separated part of one).
Each video is one client id. Depth maps come from a `depth_*.jpg` next to each `crop_*.jpg` when
present; otherwise live frames get a generic face relief (an ellipsoid over the crop) and spoof
frames zeros."""

import hashlib
import os
import re
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from training.data.domain_data import DomainData
from training.errors import FaslandError

DOMAIN_NAMES = {"I": "replay", "O": "oulu", "C": "casia", "M": "msu"}
DEPTH_SIZE = 32


def video_label(relative: Path) -> int | None:
    """1 for a path with the word 'live' in it, 0 for 'spoof', None when neither or both. A word is a
    whole folder name or a `_`/`-`-separated part of one, case-insensitive: `spoof/Clive_03` is spoof."""
    words = {w for part in relative.parts for w in re.split(r"[_-]", part.lower())}
    live, spoof = "live" in words, "spoof" in words
    return None if live == spoof else int(live)


def find_videos(root, domain: str, split: str) -> list[tuple[Path, int, list[Path]]]:
    """[(video folder, label, sorted crop_*.jpg)] of one domain's split, videos sorted by path."""
    if domain not in DOMAIN_NAMES:
        raise FaslandError(f"unknown domain '{domain}'; use one of {', '.join(DOMAIN_NAMES)} (I = replay, O = oulu, C = casia, M = msu)")
    root = Path(root)
    if not root.is_dir():
        raise FaslandError(f"data root '{root}' does not exist; pass --data DIR naming the folder that holds replay/, oulu/, casia/, msu/")
    folder = root / DOMAIN_NAMES[domain]
    if not folder.is_dir():
        raise FaslandError(f"domain folder '{folder}' not found; put dataset {domain} there as {DOMAIN_NAMES[domain]}/{{train,test}}/.../<video>/crop_*.jpg")
    split_dir = folder / split
    if not split_dir.is_dir():
        raise FaslandError(f"split folder '{split_dir}' not found; each domain folder needs train/ and test/ subfolders")
    frames: dict[Path, list[Path]] = {}
    for path in sorted(split_dir.rglob("crop_*.jpg")):
        frames.setdefault(path.parent, []).append(path)
    if not frames:
        raise FaslandError(f"no crop_*.jpg frames under '{split_dir}'; each video must be a folder of crop_*.jpg face crops")
    videos = []
    for video, paths in frames.items():
        label = video_label(video.relative_to(split_dir))
        if label is None:
            raise FaslandError(f"cannot tell live from spoof for video '{video}'; put the word 'live' or 'spoof' (not both) in its path below '{split_dir}', as a folder name or a _/- separated part of one (live/v1, v1_spoof)")
        videos.append((video, label, paths))
    for label, name in ((1, "live"), (0, "spoof")):
        if not any(v[1] == label for v in videos):
            raise FaslandError(f"'{split_dir}' has no {name} videos; a video's path must hold the word 'live' or 'spoof' (a folder name or a _/- separated part of one) and both kinds must be present")
    return videos


def _read(path: Path, size: int, grey: bool = False) -> np.ndarray:
    try:
        with Image.open(path) as im:
            im = im.convert("L" if grey else "RGB").resize((size, size), Image.BILINEAR)
            return np.asarray(im)
    except OSError as e:
        raise FaslandError(f"cannot read image '{path}' ({e}); replace or delete the file") from None


def _face_prior(size: int = DEPTH_SIZE) -> np.ndarray:
    """A generic face relief over a centred crop: an ellipsoid, uint8."""
    t = (np.arange(size) + 0.5) / size * 2 - 1
    x, y = np.meshgrid(t / 0.8, t / 0.95)
    return (np.sqrt(np.clip(1 - x ** 2 - y ** 2, 0, 1)) * 255).round().astype(np.uint8)


def _cache_dir(path) -> Path:
    if path is not None:
        return Path(path)
    root = os.environ.get("FASLAND_CACHE")
    return Path(root) / "real" if root else Path.home() / ".cache" / "fasland" / "real"


def load(root, domain: str, split: str, image_size: int = 64, samples: int | None = None, seed: int = 0,
         cache=None) -> DomainData:
    """One domain's split of the real layout, frames resized to image_size; `samples` frames
    drawn at random (seeded) when given, else all. Cached on disk keyed by the file listing."""
    videos = find_videos(root, domain, split)
    frames = [(path, label, client) for client, (_, label, paths) in enumerate(videos) for path in paths]
    listing = hashlib.sha256()
    for path, _, _ in frames:
        st = path.stat()
        listing.update(f"{path}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    if samples is not None and samples < len(frames):
        keep = torch.randperm(len(frames), generator=torch.Generator().manual_seed(seed))[:samples]
        frames = [frames[i] for i in sorted(keep.tolist())]
    key = hashlib.sha256(repr((str(Path(root).resolve()), domain, split, image_size, samples, seed, listing.hexdigest())).encode())
    cache_path = _cache_dir(cache) / f"real_{domain}_{split}_{image_size}px_{key.hexdigest()[:16]}.pt"
    if cache_path.exists():
        try:
            return DomainData(**torch.load(cache_path, weights_only=True))
        except Exception:
            pass    # unreadable: rebuild it

    prior = _face_prior()
    images, depth = [], []
    for path, label, _ in frames:
        images.append(_read(path, image_size))
        depth_path = path.with_name("depth_" + path.name[len("crop_"):])
        if not label:
            depth.append(np.zeros((DEPTH_SIZE, DEPTH_SIZE), np.uint8))
        else:
            depth.append(_read(depth_path, DEPTH_SIZE, grey=True) if depth_path.exists() else prior)
    first = "IOCM".index(domain) * 1_000_000 + (0 if split == "train" else 500_000)
    data = DomainData(
        images=torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous(),
        labels=torch.tensor([label for _, label, _ in frames], dtype=torch.float32),
        depth=torch.from_numpy(np.stack(depth)),
        clients=torch.tensor([first + client for _, _, client in frames], dtype=torch.int64),
    )
    from training.checkpoint import atomic_save

    try:
        atomic_save(data._asdict(), cache_path)
    except FaslandError:
        pass    # a read-only cache only costs the decoding next time
    return data
