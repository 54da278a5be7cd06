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


def _listing_hash(frames) -> str:
    listing = hashlib.sha256()
    for path, _, _ in frames:
        st = path.stat()
        listing.update(f"{path}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return listing.hexdigest()


def all_frames(videos) -> list[tuple[Path, int, int]]:
    """[(frame path, label, client)] of every frame; a video's client id is its index."""
    return [(path, label, client) for client, (_, label, paths) in enumerate(videos) for path in paths]


def load(root, domain: str, split: str, image_size: int = 64, samples: int | None = None, seed: int = 0,
         cache=None) -> DomainData:
    """One domain's split of the real layout, frames resized to image_size; `samples` frames
    drawn at random (seeded) when given, else all. Cached on disk keyed by the file listing."""
    frames = all_frames(find_videos(root, domain, split))
    listing = _listing_hash(frames)
    if samples is not None and samples < len(frames):
        keep = torch.randperm(len(frames), generator=torch.Generator().manual_seed(seed))[:samples]
        frames = [frames[i] for i in sorted(keep.tolist())]
    key = repr((str(Path(root).resolve()), domain, split, image_size, samples, seed, listing))
    return _decode_cached(frames, domain, split, image_size, key, cache)


def load_frames(root, domain: str, split: str, image_size: int, frames_per_video: int = 1,
                max_samples: int | None = None, seed: int = 0, cache=None) -> DomainData:
    """The probe's images: `frames_per_video` frames of each video (drawn without replacement, seeded; all of a
    shorter video), then at most `max_samples` of those, evenly spread over the sorted videos. Only these
    frames are decoded: memory holds frames_per_video × videos images, never a whole domain."""
    if image_size < 8:
        raise FaslandError(f"image size {image_size} is too small; use at least 8 pixels")
    videos = find_videos(root, domain, split)
    listing = _listing_hash(all_frames(videos))
    g = torch.Generator().manual_seed(seed)
    frames = []
    for client, (_, label, paths) in enumerate(videos):
        pick = torch.randperm(len(paths), generator=g)[:frames_per_video].sort().values.tolist()
        frames += [(paths[i], label, client) for i in pick]
    if max_samples is not None and len(frames) > max_samples:
        frames = [frames[i] for i in torch.linspace(0, len(frames) - 1, max_samples).round().long().tolist()]
    key = repr((str(Path(root).resolve()), domain, split, image_size, "per-video", frames_per_video, max_samples, seed, listing))
    return _decode_cached(frames, domain, split, image_size, key, cache)


def _decode_cached(frames, domain: str, split: str, image_size: int, key: str, cache) -> DomainData:
    """Decode `frames` [(path, label, client)] into a DomainData, through the on-disk cache under `key`."""
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    cache_path = _cache_dir(cache) / f"real_{domain}_{split}_{image_size}px_{digest}.pt"
    if cache_path.exists():
        try:
            return DomainData(**torch.load(cache_path, weights_only=True))
        except Exception:
            pass    # unreadable: rebuild it
    data = decode(frames, domain, split, image_size)
    from training.checkpoint import atomic_save

    try:
        atomic_save(data._asdict(), cache_path)
    except FaslandError:
        pass    # a read-only cache only costs the decoding next time
    return data


def client_offset(domain: str, split: str) -> int:
    """Client ids are unique across domains and splits: domain · 10⁶ (+ 5·10⁵ for test) + video index."""
    return "IOCM".index(domain) * 1_000_000 + (0 if split == "train" else 500_000)


def read_frame(path: Path, label: int, image_size: int) -> tuple[np.ndarray, np.ndarray]:
    """One frame's image (uint8 [H, W, 3]) and depth map (uint8 [32, 32]): depth_*.jpg beside it when present,
    else a face prior for live and zeros for spoof."""
    image = _read(path, image_size)
    if not label:
        return image, np.zeros((DEPTH_SIZE, DEPTH_SIZE), np.uint8)
    depth_path = path.with_name("depth_" + path.name[len("crop_"):])
    return image, _read(depth_path, DEPTH_SIZE, grey=True) if depth_path.exists() else _face_prior()


def decode(frames, domain: str, split: str, image_size: int) -> DomainData:
    images, depth = zip(*(read_frame(path, label, image_size) for path, label, _ in frames))
    return DomainData(
        images=torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous(),
        labels=torch.tensor([label for _, label, _ in frames], dtype=torch.float32),
        depth=torch.from_numpy(np.stack(depth)),
        clients=torch.tensor([client_offset(domain, split) + client for _, _, client in frames], dtype=torch.int64),
    )


class VideoFrames(torch.utils.data.Dataset):
    """Training frames as the GAC-FAS release draws them: item i is one random frame of video i (a new
    draw every pass), decoded and resized in the DataLoader's worker. Item: (image uint8 [3, H, W],
    label, depth uint8 [32, 32])."""

    def __init__(self, root, domain: str, split: str, image_size: int):
        self.videos = find_videos(root, domain, split)
        self.image_size = image_size

    def __len__(self) -> int:
        return len(self.videos)

    def __getitem__(self, i: int):
        _, label, paths = self.videos[i]
        path = paths[int(torch.randint(len(paths), ()))]    # the worker's generator, seeded by the loader's
        image, depth = read_frame(path, label, self.image_size)
        return torch.from_numpy(image).permute(2, 0, 1).contiguous(), torch.tensor(float(label)), torch.from_numpy(depth)


class VideoStream:
    """An endless stream of `batch`-sized batches of one domain's training videos (one random frame per
    video, each video once per pass, passes reshuffled), decoded by `workers` DataLoader processes.
    Memory: the batches in flight, never the domain."""

    def __init__(self, root, domain: str, image_size: int, batch: int, workers: int = 2, seed: int = 0):
        self.dataset = VideoFrames(root, domain, "train", image_size)
        self.loader = torch.utils.data.DataLoader(
            self.dataset, batch_size=min(batch, len(self.dataset)), shuffle=True, drop_last=True, num_workers=workers,
            generator=torch.Generator().manual_seed(seed), persistent_workers=workers > 0)
        self._it, self._first = None, None
        self._first = self()        # the first batch now: an unreadable dataset fails before training starts

    def __call__(self, g=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The next (images uint8, labels float, depth uint8) batch."""
        if self._first is not None:
            first, self._first = self._first, None
            return first
        for _ in range(2):
            try:
                return next(self._it)
            except (StopIteration, TypeError):
                self._it = iter(self.loader)        # a new pass: reshuffled, a new random frame per video
            except FaslandError as e:               # raised in a worker: its message ends the worker's traceback
                raise FaslandError(str(e).strip().splitlines()[-1].split("FaslandError: ", 1)[-1]) from None
        raise FaslandError("the training data stream yielded nothing; each domain needs at least one video")
