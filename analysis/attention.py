"""Attention maps: where a model's live score s(x) (its logit, > 0 = live) looks, and how much of that
attention falls on the face, on the attack medium's edges and the holding hand, and on the background.

A map A(x) ≥ 0 [H, W] per image; its share on a region R (a set of pixels) is
    fraction_R = Σ_{ij ∈ R} A_ij / Σ_ij A_ij,
averaged over a domain's probe images. SynthFAS annotates every pixel of every image with the region it
shows (training.data.synth.REGIONS: face; edge, hand of a spoof; background; other), so the fractions sum
to 1. Real crops have no annotation: their face is the crop's centre ellipse (FACE_ELLIPSE semi-axes, in
half-widths) — an approximation that holds for face-centred crops —, the rest is "other", and edge, hand
and background are unknown (NaN).

Methods, computed with captum (Kokhlikyan et al. 2020):
    gradcam               ReLU(Σ_k w_k A^k), w_k = mean_ij ∂s/∂A^k_ij            (captum LayerGradCam)
    gradcam++             w_k = Σ_ij α^k_ij ReLU(∂s/∂A^k_ij),
                          α = g² / (2 g² + Σ_ab A^k_ab · g³), g = ∂s/∂A^k_ij     (Chattopadhay et al. 2018,
                          on captum's layer gradients and activations)
    integrated-gradients  Σ_c |(x − x̄)_c ∫₀¹ ∂s/∂x_c(x̄ + t(x − x̄)) dt|, x̄ = 0 (the mean image after
                          normalization)                                        (captum IntegratedGradients)
A^k are the channels of the last convolutional layer the forward pass runs whose map is at least
CAM_MIN_SIDE pixels a side (or `layer`); CAM maps are upsampled bilinearly to the image size.

Why captum and not grad-cam (pytorch-grad-cam): captum is pure Python on top of torch (it brings no
OpenCV binary and left torch 2.14.1 and numpy untouched here), it returns raw attributions — grad-cam
min-max rescales every map, which would shift mass between regions — and it covers the one method that
needs no convolution (integrated gradients). It has no Grad-CAM++, which is its closed-form weights on
top of the gradients captum computes.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from training.errors import FaslandError

# torch, numpy, captum and SynthFAS are imported inside the functions: `fasland --help` stays quick

METHODS = ("gradcam", "gradcam++", "integrated-gradients")
FACE_ELLIPSE = (0.55, 0.7)      # real data: the face as the crop's centre ellipse, semi-axes in half-widths
CAM_MIN_SIDE = 4                # the default CAM layer's map has at least this many pixels a side


# ----------------------------------------------------------------------------- maps

def cam_layer(model: nn.Module, x: torch.Tensor, name: str | None = None) -> tuple[str, nn.Module]:
    """The layer whose activations a CAM weighs: the module called `name`, else the last nn.Conv2d one
    forward pass of `x` runs whose output is at least CAM_MIN_SIDE pixels on each side (a coarser map cannot
    place anything: a 32 px image leaves ResNet18's layer4 a single pixel), else the finest one."""
    import torch
    from torch import nn

    modules = dict(model.named_modules())
    if name is not None:
        if name not in modules:
            convs = [n for n, m in modules.items() if isinstance(m, nn.Conv2d)]
            raise FaslandError(f"the model has no layer '{name}'; pass --layer with a module name such as "
                               f"{', '.join(convs[-3:]) or 'layer4'}")
        return name, modules[name]
    ran = []     # (name, smaller side of the output) in the order the forward pass runs them
    hooks = [m.register_forward_hook(lambda m, i, o, n=n: ran.append((n, min(o.shape[-2:]))))
             for n, m in modules.items() if isinstance(m, nn.Conv2d)]
    try:
        with torch.no_grad():
            model(x[:1])
    finally:
        for h in hooks:
            h.remove()
    if not ran:
        raise FaslandError("the model has no convolutional layer for a class-activation map; use --method integrated-gradients")
    fine = [n for n, side in ran if side >= CAM_MIN_SIDE]
    chosen = fine[-1] if fine else max(ran, key=lambda r: r[1])[0]
    return chosen, modules[chosen]


def attention_maps(model: nn.Module, x: torch.Tensor, method: str = "gradcam", layer: str | None = None,
                   steps: int = 32, batch_size: int = 16, score=None) -> tuple[torch.Tensor, str | None]:
    """Maps [N, H, W] ≥ 0 of the live score s(x) = score(model(x)) (default: the model's one logit) for
    normalized images x [N, C, H, W], in eval mode; returns (maps, the CAM layer's name or None)."""
    import torch
    from captum.attr import IntegratedGradients, LayerActivation, LayerAttribution, LayerGradCam, LayerGradientXActivation

    from training.probe import eval_mode

    if method not in METHODS:
        raise FaslandError(f"unknown attention method '{method}'; use one of {', '.join(METHODS)}")
    forward = model if score is None else (lambda inputs: score(model(inputs)))
    with eval_mode(model):
        name = None
        if method != "integrated-gradients":
            name, module = cam_layer(model, x, layer)
        out = []
        for i in range(0, len(x), batch_size):
            xb = x[i:i + batch_size].detach().clone().requires_grad_(True)
            if method == "integrated-gradients":
                attr = IntegratedGradients(forward).attribute(xb, baselines=torch.zeros_like(xb), n_steps=steps,
                                                            internal_batch_size=batch_size)
                out.append(attr.abs().sum(1).detach())
                continue
            if method == "gradcam":
                cam = LayerGradCam(forward, module).attribute(xb, relu_attributions=True)
            else:
                grads = LayerGradientXActivation(forward, module, multiply_by_inputs=False).attribute(xb)
                acts = LayerActivation(forward, module).attribute(xb)
                cam = gradcam_plus_plus(acts, grads)
            if cam.dim() != 4:
                raise FaslandError(f"layer '{name}' gives {tuple(cam.shape)[1:]} per image, not a spatial map; "
                                   f"pass --layer with a convolutional layer, or use --method integrated-gradients")
            cam = LayerAttribution.interpolate(cam, tuple(x.shape[-2:]), interpolate_mode="bilinear")
            out.append(cam[:, 0].clamp(min=0).detach())
        return torch.cat(out).float(), name


def gradcam_plus_plus(acts: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
    """ReLU(Σ_k w_k A^k) [N, 1, h, w] with w_k = Σ_ij α^k_ij ReLU(g^k_ij), α = g² / (2g² + Σ_ab A^k_ab g³)."""
    import torch

    g2, g3 = grads ** 2, grads ** 3
    denom = 2 * g2 + acts.sum((2, 3), keepdim=True) * g3
    alpha = torch.where(grads != 0, g2 / torch.where(denom != 0, denom, torch.ones_like(denom)), torch.zeros_like(g2))
    weights = (alpha * grads.clamp(min=0)).sum((2, 3), keepdim=True)
    return (weights * acts).sum(1, keepdim=True).clamp(min=0)


# ----------------------------------------------------------------------------- where the mass falls

def region_fractions(maps: torch.Tensor, regions: torch.Tensor, known=None) -> torch.Tensor:
    """[N, len(REGIONS)]: Σ_{ij ∈ R} A_ij / Σ_ij A_ij per image, for region maps [N, H, W] of indices into
    REGIONS; NaN for regions not in `known` (default: all known) and for a map with no mass."""
    import torch
    import torch.nn.functional as F

    from training.data.synth import REGIONS

    a = maps.double().flatten(1)
    onehot = F.one_hot(regions.long().flatten(1), len(REGIONS)).double()      # [N, HW, R]
    total = a.sum(1, keepdim=True)
    out = (a[:, :, None] * onehot).sum(1) / total
    out[:, [i for i, r in enumerate(REGIONS) if known is not None and r not in known]] = float("nan")
    return torch.where(total > 0, out, torch.full_like(out, float("nan")))


def face_ellipse(size: int, semi_axes: tuple[float, float] = FACE_ELLIPSE) -> torch.Tensor:
    """Region map [size, size] of a real crop: face inside the centred ellipse (u/a)² + (v/b)² ≤ 1 (u, v in
    [-1, 1] at pixel centres), other outside."""
    import torch

    from training.data.synth import REGIONS

    t = (torch.arange(size, dtype=torch.float32) + 0.5) / size * 2 - 1
    inside = ((t[None, :] / semi_axes[0]) ** 2 + (t[:, None] / semi_axes[1]) ** 2) <= 1
    return torch.where(inside, REGIONS.index("face"), REGIONS.index("other")).to(torch.uint8)


# ----------------------------------------------------------------------------- the command's result

@dataclass
class DomainAttention:
    """One domain's probe images (uint8 [N,3,H,W]), labels (1 = live), attack kinds, region maps
    (uint8 [N,H,W], indices into REGIONS), maps [N,H,W] and their region fractions [N, len(REGIONS)]."""

    images: torch.Tensor
    labels: torch.Tensor
    kinds: list
    regions: torch.Tensor
    maps: torch.Tensor
    fractions: torch.Tensor

    def summary(self) -> dict:
        """Mean fraction per region over all images, the live ones and the spoofs (edge_hand = edge + hand),
        and "area": the regions' share of the pixels, what a map spread evenly would give."""
        import torch

        from training.data.synth import REGIONS

        out = {}
        for group, keep in (("all", torch.ones_like(self.labels, dtype=torch.bool)), ("live", self.labels == 1),
                            ("spoof", self.labels == 0)):
            out[group] = {**_row(self.fractions[keep]), "images": int(keep.sum())}
        known = [r for i, r in enumerate(REGIONS) if not self.fractions[:, i].isnan().all()]
        out["area"] = _row(region_fractions(torch.ones(self.regions.shape), self.regions, known))
        return out


def _row(fractions: torch.Tensor) -> dict:
    from training.data.synth import REGIONS

    row = {r: _mean(fractions[:, i]) for i, r in enumerate(REGIONS)}
    row["edge_hand"] = None if row["edge"] is None else row["edge"] + row["hand"]
    return row


def _mean(v: torch.Tensor):
    v = v[~v.isnan()]
    return float(v.mean()) if len(v) else None


@dataclass
class AttentionResult:
    """Maps of one checkpoint's live score on probe images of each of its protocol's domains."""

    method: str
    layer: str | None
    protocol: str
    target: str
    checkpoint: str
    samples: int | None = None                          # the images asked per domain (a domain may hold fewer)
    domains: dict = field(default_factory=dict)       # name -> DomainAttention

    def fractions(self) -> dict:
        """{domain: {"all"|"live"|"spoof": {region: mean fraction}}}."""
        return {d: a.summary() for d, a in self.domains.items()}

    def to_json(self) -> dict:
        from training.data.synth import REGIONS

        return {"command": "attention", "method": self.method, "layer": self.layer, "checkpoint": self.checkpoint,
                "protocol": self.protocol, "target": self.target, "samples": self.samples, "regions": list(REGIONS),
                "fractions": self.fractions()}

    @classmethod
    def read(cls, path) -> "AttentionResult":
        """An attention.h5 as written by `write`."""
        import h5py
        import torch

        with h5py.File(path, "r") as f:
            a = f.attrs
            r = cls(a["method"], a.get("layer"), a["protocol"], a["target"], a["checkpoint"],
                    int(a["samples"]) if "samples" in a else None)
            for d, g in f.items():
                r.domains[d] = DomainAttention(*(torch.from_numpy(g[k][()]) for k in ("images", "labels")),
                                               [k.decode() if isinstance(k, bytes) else k for k in g["kinds"][()]],
                                               *(torch.from_numpy(g[k][()]) for k in ("regions", "maps", "fractions")))
        return r

    def write(self, out) -> list[Path]:
        """out/attention.h5 (per domain: images, labels, kinds, regions, maps, fractions), out/attention.json
        (the fractions) and one contact sheet out/sheet_<D>.png per domain; returns the paths."""
        import h5py
        import numpy as np

        from training.checkpoint import atomic_write
        from training.data.synth import REGIONS

        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)

        def h5(tmp):
            with h5py.File(tmp, "w") as f:
                f.attrs.update({k: v for k, v in self.to_json().items() if isinstance(v, (str, int))})
                f.attrs["regions"] = json.dumps(list(REGIONS))
                for d, a in self.domains.items():
                    g = f.create_group(d)
                    g["images"], g["labels"] = a.images.numpy(), a.labels.numpy()
                    g["kinds"] = np.array(a.kinds, dtype=h5py.string_dtype())
                    g["regions"], g["maps"], g["fractions"] = a.regions.numpy(), a.maps.numpy(), a.fractions.numpy()
                    g.attrs["role"] = "target" if d == self.target else "source"

        paths = [out / "attention.h5", out / "attention.json"]
        atomic_write(paths[0], h5)
        for d, a in self.domains.items():
            paths.append(out / f"sheet_{d}.png")
            title = f"{self.method} of the live score, domain {d} ({'target' if d == self.target else 'source'})"
            atomic_write(paths[-1], lambda tmp, a=a, title=title: contact_sheet(a, title, tmp))
        # last: a study takes attention.json as the sign that the whole folder is written
        atomic_write(paths[1], lambda tmp: tmp.write_text(json.dumps(self.to_json(), indent=1)))
        return paths


def overlay(image: torch.Tensor, amap: torch.Tensor):
    """The uint8 image [3,H,W] under the map (scaled to its maximum) in matplotlib's jet, half and half."""
    import matplotlib

    rgb = image.permute(1, 2, 0).numpy() / 255.0
    m = amap.numpy() / max(float(amap.max()), 1e-12)
    return 0.5 * rgb + 0.5 * matplotlib.colormaps["jet"](m)[..., :3]


def shown_images(labels: torch.Tensor, columns: int) -> list[int]:
    """Indices of up to `columns` images, half live (label 1) and half spoof, the one short filled with the other."""
    live, spoof = (labels == 1).nonzero().flatten().tolist(), (labels == 0).nonzero().flatten().tolist()
    n_live = min(len(live), max(columns // 2, columns - len(spoof)))
    return sorted(live[:n_live] + spoof[:columns - n_live])


def contact_sheet(a: DomainAttention, title: str, path, columns: int = 8) -> None:
    """A PNG: columns of (image, map, overlay) for up to `columns` images, half live and half spoof where
    there are enough, each titled with its label/kind and face fraction."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = shown_images(a.labels, columns)
    n = len(shown)
    fig, axes = plt.subplots(3, n, figsize=(1.3 * n, 4.2), squeeze=False)
    for col, j in enumerate(shown):
        face = a.fractions[j, 0].item()
        axes[0, col].imshow(a.images[j].permute(1, 2, 0).numpy())
        axes[0, col].set_title(f"{a.kinds[j]}\nface {face:.2f}", fontsize=7, color="green" if a.labels[j] == 1 else "red")
        axes[1, col].imshow(a.maps[j].numpy(), cmap="jet")
        axes[2, col].imshow(overlay(a.images[j], a.maps[j]))
    for ax in axes.flat:
        ax.set_xticks([]), ax.set_yticks([])
    for i, label in enumerate(("image", "map", "overlay")):
        axes[i, 0].set_ylabel(label, fontsize=8)
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110, format="png")
    plt.close(fig)


def side_by_side(results: list[AttentionResult], labels: list[str], path, columns: int = 6) -> None:
    """A PNG of the same target-domain images under each model's map: the plain images on the first row,
    then one row of overlays per result, each titled with its face fraction, the row with its label and
    the mean face fraction over the target's probe images."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    first = results[0].domains[results[0].target]
    shown = shown_images(first.labels, columns)
    fig, axes = plt.subplots(1 + len(results), len(shown), figsize=(1.3 * len(shown), 1.45 * (1 + len(results))),
                             squeeze=False)
    for col, j in enumerate(shown):
        axes[0, col].imshow(first.images[j].permute(1, 2, 0).numpy())
        axes[0, col].set_title(first.kinds[j], fontsize=7, color="green" if first.labels[j] == 1 else "red")
    for row, (r, label) in enumerate(zip(results, labels), start=1):
        a = r.domains[r.target]
        for col, j in enumerate(shown):
            axes[row, col].imshow(overlay(a.images[j], a.maps[j]))
            axes[row, col].set_title(f"face {a.fractions[j, 0].item():.2f}", fontsize=7)
        face = a.summary()["all"]["face"]
        axes[row, 0].set_ylabel(f"{label}\nface {'–' if face is None else f'{face:.2f}'}", fontsize=8)
    for ax in axes.flat:
        ax.set_xticks([]), ax.set_yticks([])
    axes[0, 0].set_ylabel("image", fontsize=8)
    fig.suptitle(f"{results[0].method} of the live score, target {results[0].target} ({results[0].protocol})", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110, format="png")
    plt.close(fig)


# ----------------------------------------------------------------------------- from a checkpoint

def probe_images(config: dict, domain: str, samples: int, data: str | None = None):
    """`samples` test images of `domain` as the checkpoint's protocol sees them, evenly spread:
    (DomainData, kinds, region maps [N,H,W], the regions known)."""
    import torch

    from training.data.protocols import check_protocol_data, load_protocol_domain
    from training.data.synth import REGIONS

    d = config["data"]
    root = data or d["root"]
    if str(root) != "synth":      # real crops, one frame per video: the centre ellipse as the face, nothing else known
        from training.data import folders

        check_protocol_data(config["protocol"], root)
        dom = folders.load_frames(root, domain, "test", d["image_size"], 1, samples, seed=d.get("seed", 0))
        regions = face_ellipse(dom.images.shape[-1]).expand(len(dom.labels), -1, -1).clone()
        return dom, ["live" if y == 1 else "spoof" for y in dom.labels.tolist()], regions, ("face", "other")
    dom, notes = load_protocol_domain(config["protocol"], root, domain, "test", d["image_size"], d.get("seed", 0))
    idx = torch.linspace(0, len(dom.labels) - 1, min(samples, len(dom.labels))).round().long()
    names = notes.kind_names()
    return type(dom)(*(t[idx] for t in dom)), [names[i] for i in idx.tolist()], notes.regions[idx], REGIONS


def attention(checkpoint, out=None, method: str = "gradcam", layer: str | None = None, samples: int = 16,
              steps: int = 32, data: str | None = None, device="cpu") -> AttentionResult:
    """Maps of the checkpoint's live score on `samples` test images of every domain of its protocol
    (sources and target), their region fractions, and (given `out`) the files of `AttentionResult.write`."""
    from training.checkpoint import load_probed_model
    from training.data import normalize
    from training.data.protocols import parse_protocol
    from training.probe import Loss

    if method not in METHODS:
        raise FaslandError(f"unknown attention method '{method}'; use one of {', '.join(METHODS)}")
    for name, v in (("samples", samples), ("steps", steps)):
        if v <= 0:
            raise FaslandError(f"--{name} {v} must be positive; pass e.g. --{name} 16")
    model, ckpt = load_probed_model(checkpoint, device)
    config = ckpt["config"]
    sources, target = parse_protocol(config["protocol"])
    live_score = Loss.from_config(config).score      # the logit, or z_live − z_spoof of a two-class head
    result = AttentionResult(method, None, config["protocol"], target, str(checkpoint), samples)
    for d in (*sources, target):
        dom, kinds, regions, known = probe_images(config, d, samples, data)
        x = normalize(dom.images, config["data"].get("normalize", "imagenet")).to(device)
        maps, result.layer = attention_maps(model, x, method, layer, steps, score=live_score)
        maps = maps.cpu()
        result.domains[d] = DomainAttention(dom.images, dom.labels, kinds, regions, maps, region_fractions(maps, regions, known))
    if out is not None:
        result.write(out)
    return result


# ----------------------------------------------------------------------------- the command

def register(sub) -> None:
    p = sub.add_parser("attention", help="class-activation maps of the live score, and their share on face, edges/hands, background",
                       description="Maps of a checkpoint's live score (Grad-CAM, Grad-CAM++ or integrated gradients, by captum) "
                                   "on test images of every domain of its protocol; the fraction of each map's mass on the "
                                   "face, on the attack medium's edge and the hand, and on the background (SynthFAS knows "
                                   "each image's regions; real crops: the centre ellipse as the face). Writes "
                                   "attention.h5, attention.json and a contact sheet per domain.")
    p.add_argument("--checkpoint", required=True, help="a checkpoint.pt written by 'fasland train' or 'fasland import'")
    p.add_argument("--method", default="gradcam", help="gradcam (default), gradcam++ or integrated-gradients")
    p.add_argument("--layer", default=None, help="CAM layer by module name (default: the last convolution with a map of at least 4×4, e.g. layer2.1.conv2 at 32 px)")
    p.add_argument("--samples", type=int, default=16, help="test images per domain")
    p.add_argument("--steps", type=int, default=32, help="integrated gradients: points on the path")
    p.add_argument("--data", default=None, help="'synth' or the real datasets' root (default: the checkpoint's)")
    p.add_argument("--device", default="auto", help="auto (CUDA where present), cpu, cuda, cuda:N")
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(run=run_attention)


def run_attention(args) -> int:
    from training.device import pick_device

    if args.method not in METHODS:
        raise FaslandError(f"unknown attention method '{args.method}'; use one of {', '.join(METHODS)}")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise FaslandError(f"--out '{args.out}' is a file; pass a folder for the maps and contact sheets")
    r = attention(args.checkpoint, None, args.method, args.layer, args.samples, args.steps, args.data, pick_device(args.device))
    r.write(out)
    print(attention_summary(r, out))
    return 0


def attention_summary(r: AttentionResult, out) -> str:
    """What `fasland attention` prints: each domain's shares of attention and the regions' shares of the pixels."""
    lines = [f"{r.method} of {r.checkpoint} ({r.protocol}{', layer ' + r.layer if r.layer else ''}): share of attention "
             f"(area: the regions' share of the pixels)",
             f"  {'domain':<10} {'face':>6} {'edge/hand':>9} {'backgr.':>7} {'other':>6}"]
    for d, s in r.fractions().items():
        for label, a in ((d + (" (target)" if d == r.target else ""), s["all"]), ("  area", s["area"])):
            lines.append(f"  {label:<10} " + " ".join(f"{'–' if v is None else f'{v:.3f}':>{w}}" for v, w in
                                                      ((a["face"], 6), (a["edge_hand"], 9), (a["background"], 7), (a["other"], 6))))
    lines.append(f"written: {out / 'attention.h5'}, {out / 'attention.json'}, {out}/sheet_<D>.png")
    return "\n".join(lines)
