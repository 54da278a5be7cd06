"""The tensors one domain/split of face anti-spoofing data is made of."""

from typing import NamedTuple

import torch

from training.errors import FaslandError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class DomainData(NamedTuple):
    """One domain's split: images uint8 [N,3,H,W], labels float32 [N] (1 = live, 0 = spoof),
    depth uint8 [N,32,32] (live: face relief, spoof: zeros), clients int64 [N]."""

    images: torch.Tensor
    labels: torch.Tensor
    depth: torch.Tensor
    clients: torch.Tensor


NORMALIZATIONS = ("imagenet", "minus-one-one", "none")


def normalize(images: torch.Tensor, kind: str = "imagenet") -> torch.Tensor:
    """uint8 images -> float32: imagenet (x/255 - mean) / std with the ImageNet statistics,
    minus-one-one 2·x/255 − 1 (mean = std = 0.5), none x/255."""
    x = images.float() / 255.0
    if kind == "imagenet":
        mean = torch.tensor(IMAGENET_MEAN, device=images.device).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=images.device).view(1, 3, 1, 1)
        return (x - mean) / std
    if kind == "minus-one-one":
        return x * 2 - 1
    if kind == "none":
        return x
    raise FaslandError(f"unknown normalization '{kind}'; use one of {', '.join(NORMALIZATIONS)}")
