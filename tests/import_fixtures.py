"""The source layouts `fasland import` reads, re-declared from their key names (modules with the releases'
attribute names and forward formulas, not their code), saved the way each codebase saves, and the model
factories of `--format module`."""
import argparse
import math
import sys
import types

import torch
import torch.nn.functional as F
import torchvision
from torch import nn


class CosineHead(nn.Module):
    """GAC-FAS `fc`: weight (classes × 512), no bias; logit = <f/‖f‖, w/‖w‖>."""

    def __init__(self, classes):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(classes, 512).uniform_(-1, 1) / math.sqrt(512))

    def forward(self, f):
        return F.normalize(f, dim=1) @ F.normalize(self.weight, dim=1).T


class GacfasResnet18(nn.Module):
    """models/resnet.py Resnet18 by its keys: torchvision resnet18 under `model` (1000-class `model.fc` kept),
    `layer_blocks` = the same four layers, `gap`, `gmp`, `dropout`, `fc` the cosine head. Output [N, classes]."""

    def __init__(self, classes=1):
        super().__init__()
        self.model = torchvision.models.resnet18(weights=None)
        self.gap, self.gmp = nn.AdaptiveAvgPool2d(1), nn.AdaptiveMaxPool2d(1)
        self.fc = CosineHead(classes)
        self.layer_blocks = nn.ModuleList([self.model.layer1, self.model.layer2, self.model.layer3, self.model.layer4])
        self.dropout = nn.Dropout(0.0)

    def forward(self, x):
        m = self.model
        x = m.maxpool(m.relu(m.bn1(m.conv1(x))))
        for block in self.layer_blocks:
            x = block(x)
        return self.fc(self.dropout(self.gap(x).flatten(1)))


class SafasHead(nn.Module):
    """resnet_lgt's (Normed)LogisticRegression by its keys: weight (1 × 512), bias (1); returns σ(ℓ)."""

    def __init__(self, normed, use_bias):
        super().__init__()
        self.normed, self.use_bias = normed, use_bias
        self.weight = nn.Parameter(torch.empty(1, 512).uniform_(-1, 1) / math.sqrt(512))
        self.bias = nn.Parameter(torch.empty(1).uniform_(-0.5, 0.5))

    def forward(self, f, scale):
        if self.normed:
            w = self.weight / self.weight.abs().clamp_min(1e-12)          # normalized along dim 0 of a 1 × 512 tensor
            ell = (f / f.norm(dim=1, keepdim=True).clamp_min(1e-12)) @ w.T * scale
            ell = ell + self.bias if self.use_bias else ell
        else:
            ell = (f @ self.weight.T + self.bias) * scale
        return torch.sigmoid(ell)


class SafasResnet18(nn.Module):
    """networks/resnet_lgt.py resnet18 by its keys: the trunk at the top level, fc0..fc2, bn_scale, fc_scale,
    proj. forward(x, scale) is out_type='all': the mean of the three heads' probabilities, [N, 1]."""

    def __init__(self, normed=False, use_bias=True):
        super().__init__()
        r = torchvision.models.resnet18(weights=None)
        self.conv1, self.bn1, self.relu, self.maxpool = r.conv1, r.bn1, r.relu, r.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = r.layer1, r.layer2, r.layer3, r.layer4
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc0, self.fc1, self.fc2 = (SafasHead(normed, use_bias) for _ in range(3))
        self.bn_scale, self.fc_scale = nn.BatchNorm1d(1), nn.Linear(512, 1)
        self.proj = nn.Linear(512, 512)

    def forward(self, x, scale=None):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        f = self.avgpool(self.layer4(self.layer3(self.layer2(self.layer1(x))))).flatten(1)
        s = torch.exp(self.bn_scale(self.fc_scale(f))) if scale is None else scale
        return (self.fc0(f, s) + self.fc1(f, s) + self.fc2(f, s)) / 3


def settle(model, size, seed=0):
    """Random weights and BatchNorm statistics moved off their defaults (one train-mode pass); eval mode."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
        model.train()
        model(torch.randn(8, 3, size, size))
    return model.eval()


def gone_config_class():
    """An EasyDict-like config class in a module that is removed after saving: it cannot be imported at load."""
    mod = types.ModuleType("gacfas_config_gone")

    class EasyDict(dict):
        def __init__(self, d=None):
            super().__init__()
            for k, v in (d or {}).items():
                setattr(self, k, v)

        def __setattr__(self, name, value):
            value = EasyDict(value) if isinstance(value, dict) and not isinstance(value, EasyDict) else value
            super().__setattr__(name, value)
            super().__setitem__(name, value)

    EasyDict.__module__ = mod.__name__
    EasyDict.__qualname__ = "EasyDict"
    mod.EasyDict = EasyDict
    return mod


def save_gacfas(path, model, protocol="ICM2O", image_size=32, logit_scale=12, loss_func="bce"):
    """As helpers/utils.py save_model: epoch, state_dict, optimizer, a pickled StepLR, the pickled EasyDict config."""
    mod = gone_config_class()
    sys.modules[mod.__name__] = mod
    try:
        config = mod.EasyDict({"protocol": protocol, "train_set": ["Replay_attack", "CASIA_MFSD", "MSU_MFSD"], "test_set": ["OULU"],
                               "MODEL": {"model_name": "resnet18", "norm": True, "usebias": False, "image_size": image_size,
                                         "num_classes": model.fc.weight.shape[0]},
                               "TRAIN": {"lr": 0.005, "logit_scale": logit_scale, "loss_func": loss_func, "lr_step_size": 40,
                                         "lr_gamma": 0.5, "GAC": {"rho": 0.1, "eta": 0.0, "alpha": 0.0002}}})
        optimizer = torch.optim.SGD([{"params": model.model.parameters()}, {"params": model.fc.parameters(), "lr": 0.05}], lr=0.005, momentum=0.9)
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=40, gamma=0.5)
        torch.save({"epoch": 42, "state_dict": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler,
                    "args": config, "eva": (0.1, 0.9)}, path)
    finally:
        del sys.modules[mod.__name__]
    return path


def save_safas(path, model, protocol="I_C_M_to_O", image_size=32, normfc=False, usebias=True, scale="1"):
    """As SA-FAS train.py: epoch, state_dict, optimizer, a pickled StepLR, args (argparse.Namespace)."""
    args = argparse.Namespace(protocol=protocol, img_size=image_size, pretrain="imagenet", normfc=normfc, usebias=usebias,
                              scale=scale, model_type="ResNet18_lgt", base_lr=0.005)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.005, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=40, gamma=0.5)
    torch.save({"epoch": 7, "state_dict": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler,
                "args": args, "eva": (0.1, 0.9)}, path)
    return path


# ---- factories of --format module
def mobilenet_v2():
    """A model that is not a ResNet: torchvision MobileNetV2 with two class scores."""
    return torchvision.models.mobilenet_v2(weights=None, num_classes=2)


def not_a_module():
    return {"weights": None}


def flat_linear():
    """A model without convolutions (one logit from the flattened 32 px image): CAM methods cannot map it."""
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 1))


class TinyNet(nn.Module):
    """A small CNN with two class scores: the study's tests analyse it in seconds."""

    def __init__(self, width=4):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, width, 3, stride=2), nn.BatchNorm2d(width)
        self.fc = nn.Linear(width, 2)

    def forward(self, x):
        return self.fc(F.adaptive_avg_pool2d(F.relu(self.bn(self.conv(x))), 1).flatten(1))


def tiny():
    return TinyNet(4)


def tiny_wide():
    return TinyNet(6)
