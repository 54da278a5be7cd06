"""The models fasland rebuilds from a checkpoint's `arch`: its ResNet18 (torchvision's trunk, ImageNet stem
kept, a linear or normed head of one logit or two class scores), SA-FAS's three-head ResNet18, or any
nn.Module a user's factory builds."""
import importlib
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from training.errors import FaslandError

HEADS = ("linear", "normed")


class NormedHead(nn.Module):
    """Cosine logistic regression: logit_k = <f/‖f‖, w_k/‖w_k‖> (the GAC-FAS head)."""

    def __init__(self, in_features: int, outputs: int = 1):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(outputs, in_features) * 0.01)

    def forward(self, f):
        return F.linear(F.normalize(f, dim=1), F.normalize(self.weight, dim=1))


class FASNet(nn.Module):
    """ResNet18 trunk → 512-d feature → one logit (shape [N]) or two class scores ([N, 2]). `features(x)`
    and `head` are separate so algorithms that need them (supervised contrastive loss, RFM's depth head)
    can reach them."""

    def __init__(self, head: str = "linear", outputs: int = 1):
        super().__init__()
        if head not in HEADS:
            raise FaslandError(f"unknown head '{head}'; use one of {', '.join(HEADS)}")
        if outputs not in (1, 2):
            raise FaslandError(f"a head of {outputs} outputs is not a live/spoof head; use 1 (a logit) or 2 (two classes)")
        r = torchvision.models.resnet18(weights=None)
        self.stem = nn.Sequential(r.conv1, r.bn1, r.relu, r.maxpool)
        self.layer1, self.layer2, self.layer3, self.layer4 = r.layer1, r.layer2, r.layer3, r.layer4
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(512, outputs) if head == "linear" else NormedHead(512, outputs)

    def features(self, x):
        x = self.layer4(self.layer3(self.layer2(self.layer1(self.stem(x)))))
        return torch.flatten(self.pool(x), 1)

    def forward(self, x):
        z = self.head(self.features(x))
        return z.squeeze(1) if z.shape[1] == 1 else z


class SAFASHead(nn.Module):
    """One of SA-FAS's logistic heads (networks/resnet_lgt.py), before its sigmoid:
    normed: ℓ = s·<f/‖f‖, w/|w|> + b (w normalized along dim 0 as released, b only with use_bias);
    linear: ℓ = s·(<f, w> + b)."""

    def __init__(self, normed: bool, use_bias: bool):
        super().__init__()
        self.normed, self.use_bias = normed, use_bias
        self.weight = nn.Parameter(torch.zeros(1, 512))
        self.bias = nn.Parameter(torch.zeros(1))

    def forward(self, f, scale):
        if not self.normed:
            return F.linear(f, self.weight, self.bias) * scale
        out = F.normalize(f, dim=1).mm(F.normalize(self.weight, dim=0).t()) * scale
        return out + self.bias[:, None] if self.use_bias else out


class SAFASNet(FASNet):
    """SA-FAS's ResNet18: three heads fc0..fc2 on the pooled feature, p_i = σ(ℓ_i), test score
    p = mean_i p_i, returned as its logit z = log p − log(1 − p) (so BCE on σ(z) is the BCE of p).
    scale: a number, or None for the learned s = exp(BN(fc_scale(f)))."""

    def __init__(self, normed: bool = False, use_bias: bool = True, scale: float | None = 1.0):
        super().__init__("linear", 1)
        del self.head
        self.scale = scale
        self.fc0, self.fc1, self.fc2 = (SAFASHead(normed, use_bias) for _ in range(3))
        if scale is None:
            self.fc_scale, self.bn_scale = nn.Linear(512, 1), nn.BatchNorm1d(1)

    def forward(self, x):
        f = self.features(x)
        s = torch.exp(self.bn_scale(self.fc_scale(f))) if self.scale is None else self.scale
        logits = torch.cat([h(f, s) for h in (self.fc0, self.fc1, self.fc2)], dim=1)     # [N, 3]
        return torch.logsumexp(F.logsigmoid(logits), 1) - torch.logsumexp(F.logsigmoid(-logits), 1)


def import_factory(spec: str):
    """'pkg.module:factory' → the callable (the user's own code, run because the user named it)."""
    module, _, name = str(spec).partition(":")
    if not module or not name:
        raise FaslandError(f"--model '{spec}' is not PKG.MODULE:FACTORY; name the function that builds your model, e.g. mypkg.nets:build")
    try:
        factory = getattr(importlib.import_module(module), name)
    except ImportError as e:
        raise FaslandError(f"--model '{spec}': cannot import '{module}' ({e}); put its package on PYTHONPATH or install it") from None
    except AttributeError:
        raise FaslandError(f"--model '{spec}': module '{module}' has no '{name}'; name a function defined there") from None
    if not callable(factory):
        raise FaslandError(f"--model '{spec}' is not callable; name a function or class that returns an nn.Module")
    return factory


def build_module(spec: str) -> nn.Module:
    """The model of a user's factory: factory() must return an nn.Module."""
    try:
        model = import_factory(spec)()
    except FaslandError:
        raise
    except Exception as e:
        raise FaslandError(f"--model '{spec}' failed when called ({type(e).__name__}: {e}); make it build the model with no arguments") from None
    if not isinstance(model, nn.Module):
        raise FaslandError(f"--model '{spec}' returned a {type(model).__name__}, not a torch.nn.Module; return the model itself")
    return model


def build_model(arch: dict) -> nn.Module:
    """Rebuild a model from its `arch` dict: {"name": "resnet18", "head", "outputs"},
    {"name": "safas_resnet18", "normed", "use_bias", "scale"} or {"name": "module", "factory"}."""
    name = arch.get("name", "resnet18")
    if name == "resnet18":
        return FASNet(head=arch.get("head", "linear"), outputs=arch.get("outputs", 1))
    if name == "safas_resnet18":
        return SAFASNet(arch["normed"], arch["use_bias"], arch["scale"])
    if name == "module":
        return build_module(arch["factory"])
    raise FaslandError(f"unknown architecture '{name}'; fasland builds 'resnet18', 'safas_resnet18' and 'module' (fasland import --format module)")


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
