"""ResNet18 with one logit per image: torchvision's trunk, ImageNet stem kept, a linear or normed head."""
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from training.errors import FaslandError

HEADS = ("linear", "normed")


class NormedHead(nn.Module):
    """Cosine logistic regression: logit = <f/‖f‖, w/‖w‖> (the GAC-FAS head)."""

    def __init__(self, in_features: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(1, in_features) * 0.01)

    def forward(self, f):
        return F.linear(F.normalize(f, dim=1), F.normalize(self.weight, dim=1))


class FASNet(nn.Module):
    """ResNet18 trunk → 512-d feature → one logit. `features(x)` and `head` are separate so
    algorithms that need them (supervised contrastive loss, RFM's depth head) can reach them."""

    def __init__(self, head: str = "linear"):
        super().__init__()
        if head not in HEADS:
            raise FaslandError(f"unknown head '{head}'; use one of {', '.join(HEADS)}")
        r = torchvision.models.resnet18(weights=None)
        self.stem = nn.Sequential(r.conv1, r.bn1, r.relu, r.maxpool)
        self.layer1, self.layer2, self.layer3, self.layer4 = r.layer1, r.layer2, r.layer3, r.layer4
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(512, 1) if head == "linear" else NormedHead(512)

    def features(self, x):
        x = self.layer4(self.layer3(self.layer2(self.layer1(self.stem(x)))))
        return torch.flatten(self.pool(x), 1)

    def forward(self, x):
        return self.head(self.features(x)).squeeze(1)


def build_model(arch: dict) -> nn.Module:
    """Rebuild a model from its `arch` dict ({"name": "resnet18", "head": ...})."""
    if arch.get("name", "resnet18") != "resnet18":
        raise FaslandError(f"unknown architecture '{arch.get('name')}'; fasland builds 'resnet18'")
    return FASNet(head=arch.get("head", "linear"))


def load_pretrained(model: FASNet, path: str) -> None:
    """Load a local torchvision resnet18 state_dict into the trunk (the fc layer is dropped)."""
    p = Path(path)
    if not p.is_file():
        raise FaslandError(f"pretrained weights '{path}' not found; pass a local torchvision resnet18 state_dict file")
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:
        raise FaslandError(f"pretrained weights '{path}' are not a readable state_dict ({type(e).__name__}); save one with torch.save(resnet18().state_dict(), path)") from None
    r = torchvision.models.resnet18(weights=None)
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    missing, unexpected = r.load_state_dict(state, strict=False)
    if unexpected or [k for k in missing if not k.startswith("fc.")]:
        raise FaslandError(f"pretrained weights '{path}' are not a torchvision resnet18 state_dict; missing {len(missing)} and unexpected {len(unexpected)} keys")
    model.stem = nn.Sequential(r.conv1, r.bn1, r.relu, r.maxpool)
    model.layer1, model.layer2, model.layer3, model.layer4 = r.layer1, r.layer2, r.layer3, r.layer4
