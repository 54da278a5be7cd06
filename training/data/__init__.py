"""Face anti-spoofing data: SynthFAS (embedded) or the real datasets' folders, one domain/split
at a time, as uint8 image tensors with live/spoof labels, depth maps and client ids."""

from training.errors import FaslandError

DOMAIN_NAMES = {"I": "replay", "O": "oulu", "C": "casia", "M": "msu"}
SPLITS = ("train", "test")

__all__ = ["DOMAIN_NAMES", "DomainData", "load_domain", "normalize"]


def __getattr__(name):
    """DomainData and normalize are imported on first use: `training.data.protocols` (the parsers' protocol
    names) must not pull in torch."""
    if name in ("DomainData", "normalize"):
        from training.data import domain_data
        return getattr(domain_data, name)
    raise AttributeError(f"module 'training.data' has no attribute '{name}'")


def load_domain(data: str, domain: str, split: str, image_size: int = 64, samples: int | None = None,
                seed: int = 0, cache_dir: str | None = None) -> "DomainData":
    """One domain's split. `data` is "synth" (SynthFAS, generated once and cached) or the root of
    the real layout ROOT/{replay,oulu,casia,msu}/{train,test}/.../<video>/crop_*.jpg.
    `samples` = images to return (None: synth 600 train / 300 test, real: every frame)."""
    if domain not in DOMAIN_NAMES:
        raise FaslandError(f"unknown domain '{domain}'; use one of {', '.join(DOMAIN_NAMES)} (I = replay, O = oulu, C = casia, M = msu)")
    if split not in SPLITS:
        raise FaslandError(f"unknown split '{split}'; use 'train' or 'test'")
    if image_size < 8:
        raise FaslandError(f"image size {image_size} is too small; use at least 8 pixels")
    if samples is not None and samples < 2:
        raise FaslandError(f"samples={samples} is too few; ask for at least 2 images (one live, one spoof)")
    if str(data) == "synth":
        from training.data import synth
        return synth.load(domain, split, image_size, samples, seed, cache=cache_dir)
    from training.data import folders
    return folders.load(data, domain, split, image_size, samples, seed, cache=cache_dir)
