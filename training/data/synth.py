"""SynthFAS: four procedurally rendered face anti-spoofing domains, named I, O, C, M after
Idiap Replay-Attack, OULU-NPU, CASIA-MFSD and MSU-MFSD.

A domain is its people (procedural identities, disjoint between train and test), its
cameras (blur/resolution, sensor noise, white balance, gamma and illumination, JPEG) and its
attacks (print, replay, cut and warped photos, each with its own devices). A live image renders
the client's face with relief shading; a spoof renders the same face as a flat photo on paper
or on a screen, places that medium in the scene and recaptures it with the domain's camera.
Everything is vectorized in torch over the images of a chunk and deterministic from the seed.
"""

import hashlib
import io
import math
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from training.data.domain_data import DomainData

VERSION = 2          # bump when the rendering changes: it keys the cache
SUPERSAMPLE = 2      # scenes are rendered at this multiple of the image size, then averaged
DEPTH_SIZE = 32
CHUNK = 96           # images rendered at once (fixed: noise is drawn per chunk)
DEFAULT_SAMPLES = {"train": 600, "test": 300}
KINDS = ("print", "replay", "cut", "warped")
REGIONS = ("face", "edge", "hand", "background", "other")   # what each pixel of an image shows
EDGE_BAND = 2.0      # image pixels inside a medium's outline that count as its edge


class Annotations(NamedTuple):
    """What SynthFAS knows of each image beyond its label: kinds int64 [N] (an index into KINDS, -1 for
    live) and regions uint8 [N, H, W], each pixel's index into REGIONS: the face (live: the face; spoof:
    the face on the medium), the medium's edge (margin or bezel and a band of EDGE_BAND pixels inside its
    outline), the holding hand, the background (the room around the person or the medium), and other
    (hair, neck, body; the medium's non-face content). A pixel is the region covering most of it."""

    kinds: torch.Tensor
    regions: torch.Tensor

    def kind_names(self) -> list[str]:
        """Each image's attack kind by name, 'live' for live images."""
        return ["live" if k < 0 else KINDS[k] for k in self.kinds.tolist()]


@dataclass(frozen=True)
class Camera:
    """One capture device: ranges are drawn uniformly per image."""

    share: float                      # fraction of the domain's recordings
    resolution: float                 # sensor resolution as a fraction of the image size
    blur: tuple[float, float]         # optical blur sigma, in image pixels
    noise: tuple[float, float]        # sensor noise std at mid-grey, fraction of full scale
    warmth: tuple[float, float]       # white balance: > 0 warm (red up, blue down), < 0 cool
    gamma: tuple[float, float]
    exposure: tuple[float, float]
    jpeg: tuple[int, int]             # JPEG quality


@dataclass(frozen=True)
class Attack:
    """One attack instrument (a printer and paper, or a display) and how it is presented."""

    kind: str                         # print | replay | cut | warped
    share: float
    scale: tuple[float, float]        # medium size relative to the frame (> 1.15 hides its edges)
    cue: tuple[float, float]          # strength of the medium texture (halftone or moire)
    frequency: tuple[float, float]    # halftone lines or moire cycles per image width
    gamut: tuple[float, float]        # fraction of colour saturation the medium keeps
    contrast: tuple[float, float]     # dynamic range the medium keeps
    tint: tuple[float, float, float]  # colour cast of the paper or backlight
    glare: tuple[float, float]        # peak of the specular reflection
    border: float = 0.0               # paper margin or screen bezel width, medium units
    fingers: float = 0.0              # probability that a holding hand shows
    bend: tuple[float, float] = (0.0, 0.0)  # paper curvature (warped photos), radians
    lift: tuple[float, float] = (0.0, 0.0)  # black level of the paper or screen


@dataclass(frozen=True)
class Lighting:
    level: tuple[float, float]        # overall illumination
    gradient: tuple[float, float]     # linear fall-off across the frame
    side: tuple[float, float]         # lateral component of the key light on the face
    ambient: tuple[float, float]      # share of non-directional light on the face
    backlight: float                  # probability that the background outshines the face


@dataclass(frozen=True)
class Domain:
    name: str
    clients: tuple[int, int]          # (train, test) identities
    cameras: tuple[Camera, ...]
    attacks: tuple[Attack, ...]
    lighting: Lighting
    backgrounds: tuple[tuple[float, float, float], ...]
    # light on the photos the attackers reproduce: flat studio light unless they shot them on site
    photo_lighting: Lighting = Lighting((0.95, 1.05), (0.0, 0.1), (-0.3, 0.3), (0.5, 0.7), 0.0)


DOMAINS = {
    # Replay-Attack: one warm, noisy laptop webcam, controlled and adverse (daylight, backlit)
    # sessions; a washed-out A4 print with coarse dots, held by hand, and two displays with a
    # visible bezel, glare and lifted blacks; studio photos.
    "I": Domain(
        name="I", clients=(15, 20),
        cameras=(Camera(1.0, 0.7, (0.6, 1.0), (0.025, 0.045), (0.04, 0.12), (0.8, 1.0), (0.7, 1.1), (70, 85)),),
        attacks=(
            Attack("print", 1 / 3, (0.95, 1.2), (0.45, 0.7), (10, 14), (0.5, 0.7), (0.65, 0.8),
                   (1.0, 0.97, 0.9), (0.0, 0.15), border=0.08, fingers=0.6, lift=(0.1, 0.16)),
            Attack("replay", 1 / 3, (0.6, 0.8), (0.12, 0.2), (4, 7), (0.75, 0.9), (0.7, 0.85),
                   (0.94, 0.98, 1.08), (0.2, 0.45), border=0.12, lift=(0.15, 0.25)),
            Attack("replay", 1 / 3, (0.95, 1.15), (0.1, 0.18), (5, 9), (0.8, 0.95), (0.75, 0.88),
                   (0.95, 1.0, 1.06), (0.15, 0.35), border=0.08, lift=(0.12, 0.2)),
        ),
        lighting=Lighting((0.6, 1.1), (0.1, 0.6), (-0.9, 0.9), (0.15, 0.45), 0.4),
        backgrounds=((0.55, 0.55, 0.6), (0.7, 0.68, 0.62), (0.35, 0.4, 0.45), (0.8, 0.8, 0.78)),
    ),
    # OULU-NPU: sharp, clean, cool high-resolution phones, office light, photos shot in the same
    # office; a printer and a display whose fine dot or pixel texture only these phones resolve,
    # washed out, with a thin edge and often a hand.
    "O": Domain(
        name="O", clients=(20, 20),
        cameras=(
            Camera(0.5, 1.0, (0.3, 0.45), (0.004, 0.01), (-0.08, -0.02), (0.95, 1.05), (0.9, 1.1), (90, 95)),
            Camera(0.5, 1.0, (0.3, 0.5), (0.006, 0.012), (-0.12, -0.04), (0.9, 1.0), (0.9, 1.15), (88, 95)),
        ),
        attacks=(
            Attack("print", 0.5, (1.0, 1.2), (0.35, 0.5), (26, 32), (0.7, 0.85), (0.75, 0.88),
                   (1.02, 0.98, 0.94), (0.0, 0.1), border=0.05, fingers=0.4, lift=(0.09, 0.13)),
            Attack("replay", 0.5, (0.95, 1.15), (0.1, 0.2), (18, 26), (0.85, 0.95), (0.78, 0.9),
                   (0.96, 0.98, 1.06), (0.1, 0.3), border=0.06, lift=(0.1, 0.15)),
        ),
        lighting=Lighting((0.85, 1.1), (0.0, 0.25), (-0.4, 0.4), (0.35, 0.6), 0.05),
        backgrounds=((0.75, 0.72, 0.68), (0.6, 0.62, 0.65), (0.85, 0.83, 0.8)),
        photo_lighting=Lighting((0.9, 1.05), (0.0, 0.25), (-0.4, 0.4), (0.35, 0.6), 0.0),
    ),
    # CASIA-FASD: low- and normal-quality cameras (soft, noisy, heavily compressed, warm) and a
    # better one, whose blur hides the texture of the media; photos shot on site. Three in ten
    # attacks are glossy, oversaturated photos with a yellow-green cast, warped or cut and held
    # close (no edge, no hand); the rest washed-out cut photos held by hand and an iPad replay.
    "C": Domain(
        name="C", clients=(20, 30),
        cameras=(
            Camera(0.4, 0.45, (1.2, 1.7), (0.04, 0.06), (0.12, 0.2), (0.85, 1.0), (0.8, 1.1), (35, 55)),
            Camera(0.4, 0.55, (1.0, 1.3), (0.03, 0.045), (0.08, 0.16), (0.9, 1.0), (0.85, 1.1), (50, 70)),
            Camera(0.2, 0.7, (0.8, 1.0), (0.02, 0.03), (0.05, 0.12), (0.95, 1.05), (0.9, 1.1), (70, 85)),
        ),
        attacks=(
            Attack("warped", 0.15, (1.2, 1.4), (0.0, 0.05), (20, 26), (1.3, 1.5), (1.0, 1.1),
                   (0.94, 1.05, 0.82), (0.0, 0.05), bend=(0.7, 1.1)),
            Attack("cut", 0.15, (1.2, 1.4), (0.0, 0.05), (20, 26), (1.3, 1.5), (1.0, 1.1),
                   (0.94, 1.05, 0.82), (0.0, 0.05), bend=(0.0, 0.3)),
            Attack("cut", 0.35, (0.95, 1.15), (0.0, 0.05), (20, 26), (0.65, 0.8), (0.75, 0.88),
                   (1.0, 0.97, 0.9), (0.0, 0.1), border=0.06, fingers=0.5, bend=(0.0, 0.3), lift=(0.08, 0.12)),
            Attack("replay", 0.35, (0.9, 1.1), (0.1, 0.2), (5, 9), (0.8, 0.95), (0.75, 0.88),
                   (0.94, 1.0, 1.08), (0.15, 0.35), border=0.08, lift=(0.12, 0.2)),
        ),
        lighting=Lighting((0.8, 1.05), (0.05, 0.3), (-0.5, 0.5), (0.3, 0.55), 0.1),
        backgrounds=((0.3, 0.3, 0.32), (0.45, 0.4, 0.35), (0.2, 0.22, 0.25)),
        photo_lighting=Lighting((0.85, 1.05), (0.05, 0.3), (-0.5, 0.5), (0.3, 0.55), 0.0),
    ),
    # MSU-MFSD: a cool laptop webcam and an Android phone; a washed-out warm A3 print and two
    # displays with bezel, glare and lifted blacks; studio photos.
    "M": Domain(
        name="M", clients=(15, 20),
        cameras=(
            Camera(0.5, 0.6, (0.8, 1.2), (0.025, 0.04), (-0.2, -0.08), (0.85, 1.0), (0.85, 1.05), (65, 80)),
            Camera(0.5, 0.8, (0.5, 0.8), (0.02, 0.03), (0.0, 0.1), (0.9, 1.05), (0.9, 1.1), (80, 90)),
        ),
        attacks=(
            Attack("print", 1 / 3, (1.0, 1.2), (0.35, 0.55), (12, 16), (0.55, 0.75), (0.7, 0.85),
                   (1.04, 0.98, 0.88), (0.0, 0.15), border=0.05, fingers=0.4, lift=(0.1, 0.16)),
            Attack("replay", 1 / 3, (0.95, 1.15), (0.1, 0.18), (5, 9), (0.8, 0.95), (0.75, 0.88),
                   (0.95, 1.0, 1.08), (0.1, 0.3), border=0.08, lift=(0.12, 0.2)),
            Attack("replay", 1 / 3, (0.65, 0.85), (0.12, 0.2), (4, 8), (0.75, 0.9), (0.7, 0.85),
                   (0.92, 0.98, 1.1), (0.15, 0.4), border=0.12, lift=(0.15, 0.25)),
        ),
        lighting=Lighting((0.8, 1.05), (0.05, 0.3), (-0.5, 0.5), (0.3, 0.55), 0.1),
        backgrounds=((0.9, 0.9, 0.88), (0.65, 0.6, 0.55), (0.7, 0.75, 0.8)),
    ),
}

SKIN_LIGHT, SKIN_DARK = (0.96, 0.80, 0.69), (0.36, 0.23, 0.16)
HAIR = ((0.08, 0.06, 0.05), (0.3, 0.18, 0.1), (0.75, 0.6, 0.35), (0.55, 0.25, 0.1), (0.6, 0.6, 0.6))


# ----------------------------------------------------------------------------- randomness

def _generator(*key) -> torch.Generator:
    digest = hashlib.sha256("/".join(map(str, key)).encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))


def _uniform(g, n, lo, hi):
    return lo + (hi - lo) * torch.rand(n, generator=g)


def _choice(g, n, weights):
    return torch.multinomial(torch.tensor(weights, dtype=torch.float64), n, True, generator=g)


def _colour(g, n, palette, jitter):
    base = torch.tensor(palette)[_choice(g, n, [1.0] * len(palette))]
    return (base + jitter * (torch.rand(n, 3, generator=g) - 0.5)).clamp(0, 1)


# ----------------------------------------------------------------------------- parameters

def _identities(g, n):
    """Per-client face, hair, clothes and room."""
    tone = torch.rand(n, generator=g)
    skin = torch.tensor(SKIN_LIGHT) * (1 - tone[:, None]) + torch.tensor(SKIN_DARK) * tone[:, None]
    skin = (skin * (1 + 0.08 * (torch.rand(n, 3, generator=g) - 0.5))).clamp(0, 1)
    return {
        "face_a": _uniform(g, n, 0.4, 0.48), "face_b": _uniform(g, n, 0.54, 0.64),
        "jaw": _uniform(g, n, 0.0, 0.35), "skin": skin,
        "hair": _colour(g, n, HAIR, 0.1), "hair_style": _choice(g, n, [0.5, 0.35, 0.15]).float(),
        "fringe": _uniform(g, n, 0.45, 0.75),
        "eye_dx": _uniform(g, n, 0.36, 0.46), "eye_size": _uniform(g, n, 0.85, 1.2),
        "iris": _colour(g, n, ((0.25, 0.15, 0.08), (0.2, 0.35, 0.55), (0.3, 0.4, 0.25)), 0.1),
        "brow": _uniform(g, n, 0.025, 0.05), "brow_tilt": _uniform(g, n, -0.2, 0.2),
        "nose": _uniform(g, n, 0.8, 1.2), "mouth_w": _uniform(g, n, 0.3, 0.45),
        "lips": _colour(g, n, ((0.65, 0.3, 0.3), (0.5, 0.25, 0.25), (0.7, 0.4, 0.4)), 0.1),
        "glasses": (torch.rand(n, generator=g) < 0.3).float(),
        "frame": _colour(g, n, ((0.05, 0.05, 0.05), (0.4, 0.25, 0.1), (0.6, 0.6, 0.65)), 0.1),
        "shirt": _colour(g, n, ((0.15, 0.2, 0.45), (0.6, 0.1, 0.1), (0.2, 0.2, 0.2), (0.85, 0.85, 0.85),
                                 (0.2, 0.45, 0.25)), 0.2),
    }


def _rooms(g, n, domain: Domain):
    """Per-image background: a wall of the domain's palette and three pieces of clutter."""
    return {
        "wall": _colour(g, n, domain.backgrounds, 0.12),
        "clutter": _colour(g, n * 3, domain.backgrounds + ((0.3, 0.25, 0.2), (0.9, 0.9, 0.9)), 0.3).view(n, 3, 3),
        "clutter_box": torch.stack([_uniform(g, n * 3, -1.0, 1.0), _uniform(g, n * 3, -1.0, 1.0),
                                    _uniform(g, n * 3, 0.05, 0.4), _uniform(g, n * 3, 0.05, 0.6)], 1).view(n, 3, 4),
    }


def _poses(g, n, frontal=False):
    """Per-image head placement and expression; `frontal` for the photo an attacker prints."""
    k = 0.4 if frontal else 1.0
    return {
        "cx": _uniform(g, n, -0.08 * k, 0.08 * k), "cy": _uniform(g, n, -0.12, 0.0),
        "scale": _uniform(g, n, 1.1, 1.35), "roll": _uniform(g, n, -0.18 * k, 0.18 * k),
        "yaw": _uniform(g, n, -0.35 * k, 0.35 * k), "smile": _uniform(g, n, -0.3, 1.0),
        "open": torch.rand(n, generator=g) ** 3 * k, "blink": (torch.rand(n, generator=g) < 0.1 * k).float(),
        "gaze": _uniform(g, n, -0.3, 0.3),
    }


def _lights(g, n, lighting: Lighting):
    angle = _uniform(g, n, 0, 2 * math.pi)
    return {
        "level": _uniform(g, n, *lighting.level), "gradient": _uniform(g, n, *lighting.gradient),
        "grad_x": torch.cos(angle), "grad_y": torch.sin(angle),
        "side": _uniform(g, n, *lighting.side), "ambient": _uniform(g, n, *lighting.ambient),
        "backlight": (torch.rand(n, generator=g) < lighting.backlight).float() * _uniform(g, n, 1.2, 1.6),
    }


def _attacks(g, n, domain: Domain):
    which = _choice(g, n, [a.share for a in domain.attacks])
    out = {"kind": torch.tensor([KINDS.index(a.kind) for a in domain.attacks])[which].float()}
    for field in ("scale", "cue", "frequency", "gamut", "contrast", "glare", "bend", "lift"):
        lo = torch.tensor([getattr(a, field)[0] for a in domain.attacks], dtype=torch.float32)[which]
        hi = torch.tensor([getattr(a, field)[1] for a in domain.attacks], dtype=torch.float32)[which]
        out[field] = lo + (hi - lo) * torch.rand(n, generator=g)
    out["tint"] = torch.tensor([a.tint for a in domain.attacks])[which] * (1 + 0.04 * (torch.rand(n, 3, generator=g) - 0.5))
    out["border"] = torch.tensor([a.border for a in domain.attacks])[which]
    out["fingers"] = (torch.rand(n, generator=g) < torch.tensor([a.fingers for a in domain.attacks])[which]).float()
    out["finger_x"] = _uniform(g, n, -0.7, 0.7)
    out["finger_skin"] = _colour(g, n, (SKIN_LIGHT, SKIN_DARK, (0.7, 0.5, 0.4)), 0.1)
    out["offset_x"], out["offset_y"] = _uniform(g, n, -0.1, 0.1), _uniform(g, n, -0.1, 0.1)
    out["tilt"] = _uniform(g, n, -0.12, 0.12)
    out["moire_angle"] = _uniform(g, n, 0, math.pi)
    out["moire_curve"] = _uniform(g, n, -2.0, 2.0)
    out["glare_x"], out["glare_y"] = _uniform(g, n, -0.8, 0.8), _uniform(g, n, -0.8, 0.8)
    out["glare_r"] = _uniform(g, n, 0.15, 0.45)
    return out


def _cameras(g, n, domain: Domain):
    which = _choice(g, n, [c.share for c in domain.cameras])
    out = {"camera": which}
    for field in ("blur", "noise", "warmth", "gamma", "exposure", "jpeg"):
        lo = torch.tensor([float(getattr(c, field)[0]) for c in domain.cameras])[which]
        hi = torch.tensor([float(getattr(c, field)[1]) for c in domain.cameras])[which]
        out[field] = lo + (hi - lo) * torch.rand(n, generator=g)
    out["resolution"] = torch.tensor([c.resolution for c in domain.cameras])[which]
    return out


# ----------------------------------------------------------------------------- rendering

def _grid(size):
    t = (torch.arange(size, dtype=torch.float32) + 0.5) / size * 2 - 1
    return t.view(1, 1, 1, size), t.view(1, 1, size, 1)   # u: x to the right, v: y downwards


def _col(p, key):
    return p[key].view(-1, 3, 1, 1)


def _sc(p, key):
    return p[key].view(-1, 1, 1, 1)


def _inside(d, width):
    """Soft mask of a signed distance (negative inside)."""
    return torch.sigmoid(-d / width)


def _ellipse(x, y, a, b):
    """Signed distance to an ellipse, to first order: (r - 1) / |grad r|."""
    r = torch.sqrt((x / a) ** 2 + (y / b) ** 2 + 1e-12)
    slope = torch.sqrt((x / a ** 2) ** 2 + (y / b ** 2) ** 2 + 1e-12) / r
    return (r - 1) / slope


def _box(x, y, hw, hh):
    return torch.maximum(x.abs() - hw, y.abs() - hh)


def _paint(img, mask, colour):
    return img + mask * (colour - img)


def _face_coords(u, v, p):
    """Frame coordinates -> face-local coordinates (head centre at 0, unit = frame half-width)."""
    s, r = _sc(p, "scale"), _sc(p, "roll")
    du, dv = u - _sc(p, "cx"), v - _sc(p, "cy")
    return (du * torch.cos(r) + dv * torch.sin(r)) / s, (-du * torch.sin(r) + dv * torch.cos(r)) / s


def _face_shape(x, y, p):
    """(x/a)^2 + (y/b)^2 for the face outline with a narrowing jaw; < 1 inside."""
    a, b, jaw = _sc(p, "face_a"), _sc(p, "face_b"), _sc(p, "jaw")
    xj = x / (1 - jaw * (y / b).clamp(0, 1) ** 2)
    return (xj / a) ** 2 + (y / b) ** 2


def _features(p):
    """Face-local feature anchors: eye centres, horizontal shift from yaw."""
    a, b = _sc(p, "face_a"), _sc(p, "face_b")
    shift = _sc(p, "yaw") * a * 0.35
    return a, b, shift, _sc(p, "eye_dx") * a, -0.1 * b


def _relief(x, y, p):
    """Height of the face in face-local coordinates, about [0, 1]: ellipsoid, nose, sockets."""
    a, b, shift, ex, ey = _features(p)
    f = _face_shape(x, y, p)
    z = 0.7 * torch.sqrt((1 - f).clamp(min=0))
    nose = 0.3 * _sc(p, "nose") * torch.exp(-0.5 * (((x - shift) / (0.11 * a)) ** 2 + ((y - 0.08 * b) / (0.22 * b)) ** 2))
    sockets = sum(torch.exp(-0.5 * (((x - shift - sx * ex) / (0.18 * a)) ** 2 + ((y - ey) / (0.12 * a)) ** 2))
                  for sx in (-1, 1))
    chin = 0.08 * torch.exp(-0.5 * ((x - shift) / (0.25 * a)) ** 2 - 0.5 * ((y - 0.75 * b) / (0.15 * b)) ** 2)
    return z + (nose - 0.1 * sockets + chin) * (f < 1).float()


def _render(p, size, face=True):
    """The scene in linear RGB [n,3,size,size]: room, then (if `face`) the person lit by
    p's lights with relief shading. Returns (image, {"face": mask, "person": mask}), soft masks [n,1,size,size];
    the person is face, hair, neck and body."""
    n = p["wall"].shape[0]
    u, v = _grid(size)
    px = 2.0 / size
    light = _sc(p, "level") * (1 + _sc(p, "gradient") * (u * _sc(p, "grad_x") + v * _sc(p, "grad_y")) * 0.5)

    img = _col(p, "wall") * (1.0 - 0.12 * v) * torch.ones(1, 1, size, size)
    for k in range(3):
        cx, cy, hw, hh = (p["clutter_box"][:, k, j].view(n, 1, 1, 1) for j in range(4))
        img = _paint(img, _inside(_box(u - cx, v - cy, hw, hh), px), p["clutter"][:, k].view(n, 3, 1, 1))
    back = 1 + (_sc(p, "backlight") - 1).clamp(min=0) if "backlight" in p else 1
    if not face:
        none = torch.zeros(n, 1, size, size)
        return img * light * back, {"face": none, "person": none}

    x, y = _face_coords(u, v, p)
    a, b, shift, ex, ey = _features(p)
    w = px / _sc(p, "scale")
    skin, hair = _col(p, "skin"), _col(p, "hair")
    style = _sc(p, "hair_style")
    # body, long hair behind the head, neck
    img = _paint(img, _inside(_ellipse(x, y - 2.25 * b, 2.3 * a, 1.05 * b), w), _col(p, "shirt"))
    long_hair = (style == 1).float() * _inside(_ellipse(x, y - 0.35 * b, 1.3 * a, 1.35 * b), w)
    img = _paint(img, long_hair, hair * 0.85)
    img = _paint(img, _inside(_box(x, y - 1.2 * b, 0.42 * a, 0.6 * b), w), skin * 0.8)
    # face with relief shading
    f = _face_shape(x, y, p)
    face_mask = _inside((torch.sqrt(f + 1e-12) - 1) * a, w)
    z = _relief(x, y, p)
    dzdy, dzdx = _grad(z, w)
    side, amb = _sc(p, "side"), _sc(p, "ambient")
    lz = torch.sqrt((1 - side ** 2 - 0.09).clamp(min=0.05))
    lambert = ((-dzdx * side + dzdy * 0.3 + lz) / torch.sqrt(dzdx ** 2 + dzdy ** 2 + 1)).clamp(min=0)
    shade = amb + (1 - amb) * lambert / lz.clamp(min=0.3)
    img = _paint(img, face_mask, skin * shade)
    # eyes, iris, brows, mouth
    eye_h = 0.085 * a * _sc(p, "eye_size") * (1 - 0.85 * _sc(p, "blink"))
    for sx in (-1, 1):
        cx = shift + sx * ex
        img = _paint(img, _inside(_ellipse(x - cx, y - ey, 0.17 * a * _sc(p, "eye_size"), eye_h), w),
                     torch.tensor([0.93, 0.92, 0.9]).view(1, 3, 1, 1) * shade)
        iris = _inside(_ellipse(x - cx - _sc(p, "gaze") * 0.08 * a, y - ey, 0.075 * a, 0.075 * a), w)
        iris = iris * _inside(_ellipse(x - cx, y - ey, 0.17 * a * _sc(p, "eye_size"), eye_h), w)
        img = _paint(img, iris, _col(p, "iris") * 0.7)
        pupil = _inside(_ellipse(x - cx - _sc(p, "gaze") * 0.08 * a, y - ey, 0.03 * a, 0.03 * a), w) * iris
        img = _paint(img, pupil, torch.zeros(1, 3, 1, 1))
        tilt = _sc(p, "brow_tilt") * sx
        by = y - (ey - 0.17 * b) - tilt * (x - cx)
        img = _paint(img, _inside(_ellipse(x - cx, by, 0.21 * a, _sc(p, "brow") * a), w), hair * 0.8)
    mw = _sc(p, "mouth_w") * a
    my = y - 0.5 * b + _sc(p, "smile") * 0.06 * a * (1 - ((x - shift) / mw).clamp(-1, 1) ** 2)
    img = _paint(img, _inside(_ellipse(x - shift, my, mw, (0.035 + 0.09 * _sc(p, "open")) * a), w), _col(p, "lips") * shade)
    img = _paint(img, _inside(_ellipse(x - shift, my, 0.8 * mw, (0.07 * _sc(p, "open") + 0.01) * a), w) * (_sc(p, "open") > 0.1),
                 torch.tensor([0.15, 0.05, 0.05]).view(1, 3, 1, 1))
    nostril = _inside(_ellipse(x - shift, y - 0.27 * b, 0.1 * a, 0.025 * a), w)
    img = _paint(img, nostril * 0.5, skin * 0.45)
    # hair cap over the top of the head
    hairline = -_sc(p, "fringe") * b + 0.35 * b * (x / a) ** 2
    cap = _inside(_ellipse(x, y + 0.08 * b, 1.1 * a, 1.02 * b), w) * _inside(y - hairline, w)
    img = _paint(img, cap * (style != 2).float(), hair * (0.75 + 0.25 * shade))
    # glasses: two rims and a bridge
    rims = sum(_inside(_ellipse(x - shift - sx * ex, y - ey, 0.3 * a, 0.2 * a).abs() - 0.02 * a, w) for sx in (-1, 1))
    bridge = _inside(_box(x - shift, y - ey + 0.05 * a, ex - 0.3 * a, 0.015 * a), w)
    img = _paint(img, (rims + bridge).clamp(max=1) * _sc(p, "glasses"), _col(p, "frame"))

    person = (face_mask + cap + _inside(_ellipse(x, y - 2.25 * b, 2.3 * a, 1.05 * b), w)).clamp(max=1)
    if "backlight" in p:   # a backlit room: the wall outshines the person
        img = img * (1 + (_sc(p, "backlight") - 1).clamp(min=0) * (1 - person))
    neck = _inside(_box(x, y - 1.2 * b, 0.42 * a, 0.6 * b), w)
    return img * light, {"face": face_mask, "person": (person + long_hair + neck).clamp(max=1)}


def _grad(z, w):
    """d/dy, d/dx of z [n,1,H,W] with per-image pixel size w [n,1,1,1] (central differences)."""
    zp = F.pad(z, (1, 1, 1, 1), mode="replicate")
    dzdx = (zp[:, :, 1:-1, 2:] - zp[:, :, 1:-1, :-2]) / (2 * w)
    dzdy = (zp[:, :, 2:, 1:-1] - zp[:, :, :-2, 1:-1]) / (2 * w)
    return dzdy, dzdx


def _halftone(img, xq, yq, freq, cue, w):
    """Ink dots of a four-angle screen at `freq` dots per medium unit, mixed in by `cue`."""
    out = []
    for c, angle in enumerate((0.26, 1.31, 0.0)):    # C, M, Y screen angles (15, 75, 0 degrees)
        xr = xq * math.cos(angle) + yq * math.sin(angle)
        yr = -xq * math.sin(angle) + yq * math.cos(angle)
        screen = 0.5 + 0.25 * (torch.cos(2 * math.pi * freq * xr) + torch.cos(2 * math.pi * freq * yr))
        ink = torch.sigmoid(((1 - img[:, c:c + 1]) - screen) / w)
        out.append(1 - ink)
    dots = torch.cat(out, 1)
    return img + cue * (dots - img)


def _spoof(p, q, size):
    """Spoofs: the photo scene `p` reproduced on the attack medium of `q`, placed in the room.
    Returns (image, soft masks of the REGIONS but "other"): the printed face, the medium's edge (margin
    or bezel and a band inside its outline), the holding hand and the room around."""
    n = q["kind"].shape[0]
    u, v = _grid(size)
    px = 2.0 / size
    photo, photo_masks = _render(p, size)
    room, _ = _render(q, size, face=False)
    kind = _sc(q, "kind")
    is_print, is_replay = (kind != 1).float(), (kind == 1).float()

    # frame -> medium coordinates (medium spans [-1, 1])
    s, t = _sc(q, "scale"), _sc(q, "tilt")
    du, dv = u - _sc(q, "offset_x"), v - _sc(q, "offset_y")
    xq = (du * torch.cos(t) + dv * torch.sin(t)) / s
    yq = (-du * torch.sin(t) + dv * torch.cos(t)) / s
    bend = _sc(q, "bend")
    # a sheet bent around a vertical axis: x on the sheet is arcsin-compressed towards its sides
    sin_b = torch.sin(bend).clamp(min=1e-4)
    arg = (xq * sin_b).clamp(-0.999, 0.999)
    xs = torch.where(bend > 1e-3, torch.asin(arg) / bend.clamp(min=1e-3), xq)
    ys = yq * (1 + 0.15 * torch.sin(bend) * xs ** 2)
    sheet_light = torch.where(bend > 1e-3, torch.cos(xs * bend) + 0.4 * _sc(q, "side") * torch.sin(xs * bend),
                              torch.ones_like(xs))
    grid = torch.cat([xs.expand(n, 1, size, size), ys.expand(n, 1, size, size)], 1).permute(0, 2, 3, 1)
    content = F.grid_sample(photo, grid, mode="bilinear", padding_mode="border", align_corners=False)
    raw = content

    # the medium's colour: gamut, contrast, tint; print adds halftone dots, replay a moire
    gray = content.mean(1, keepdim=True)
    content = gray + _sc(q, "gamut") * (content - gray)
    content = (_sc(q, "lift") + _sc(q, "contrast") * content.clamp(0, 1)) * _col(q, "tint")
    w = px / s
    dotted = _halftone(content.clamp(0, 1), xs, ys, _sc(q, "frequency") / 2 * s, _sc(q, "cue"), 1.5 * w)
    ang, curve = _sc(q, "moire_angle"), _sc(q, "moire_curve")
    phase = 2 * math.pi * (_sc(q, "frequency") / 2 * (u * torch.cos(ang) + v * torch.sin(ang)) + 0.5 * curve * (u ** 2 + v ** 2))
    shifts = torch.tensor([0.0, 2.1, 4.2]).view(1, 3, 1, 1)
    moire = content * (1 + _sc(q, "cue") * torch.cos(phase + shifts))
    medium = is_print * dotted + is_replay * moire

    # cut photos: the attacker's own eyes show through holes around the printed eyes
    xf, yf = _face_coords(xs, ys, p)
    a, b, shift, ex, ey = _features(p)
    holes = sum(_inside(_ellipse(xf - shift - sx * ex, yf - ey, 0.25 * a, 0.14 * a), w) for sx in (-1, 1))
    holes = holes * (kind == 2).float()
    rim = sum(_inside(_ellipse(xf - shift - sx * ex, yf - ey, 0.25 * a, 0.14 * a).abs() - 0.012, w) for sx in (-1, 1))
    medium = _paint(medium, holes, raw * 0.85)
    medium = _paint(medium, rim * (kind == 2).float(), torch.full((1, 3, 1, 1), 0.12))

    light = _sc(q, "level") * (1 + _sc(q, "gradient") * (u * _sc(q, "grad_x") + v * _sc(q, "grad_y")) * 0.5)
    glare = _sc(q, "glare") * torch.exp(-((xq - _sc(q, "glare_x")) ** 2 + (yq - _sc(q, "glare_y")) ** 2) / (2 * _sc(q, "glare_r") ** 2))
    lit = medium * light * sheet_light + glare

    # paper margin or screen bezel, then the medium, over the room
    border = _sc(q, "border")
    picture = _inside(_box(xq, yq, 1.0, 1.0), w)
    outer = _inside(_box(xq, yq, 1.0 + border, 1.0 + border * 1.3), w)
    frame_colour = is_print * _col(q, "tint") * 0.92 + is_replay * torch.tensor([0.06, 0.06, 0.07]).view(1, 3, 1, 1)
    img = _paint(room, outer, frame_colour * light * torch.where(is_print > 0, sheet_light, 1.0) + 0.3 * glare)
    img = _paint(img, picture, lit)
    # a thumb and finger holding the sheet at its lower edge
    fx = xq - _sc(q, "finger_x")
    fingers = sum(_inside(_ellipse(fx - dx, yq - 1.0 - border, 0.09, 0.22), w) for dx in (0.0, 0.19))
    fingers = fingers.clamp(max=1) * _sc(q, "fingers") * is_print
    img = _paint(img, fingers, _col(q, "finger_skin") * light * (0.85 + 0.15 * torch.sin(3 * fx)))

    band = EDGE_BAND * SUPERSAMPLE * px / s     # the band inside the outline, in medium units
    edge = (outer - _inside(_box(xq, yq, 1.0 - band, 1.0 - band), w)).clamp(min=0) * (1 - fingers)
    face = F.grid_sample(photo_masks["face"], grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    face = face * picture * (1 - fingers) * (1 - edge)
    return img, {"face": face, "edge": edge, "hand": fingers, "background": (1 - outer) * (1 - fingers)}


def _blur(x, sigma):
    """Gaussian blur with a per-image sigma (pixels), one grouped convolution per axis."""
    n, c, h, w = x.shape
    radius = max(1, int(math.ceil(3 * float(sigma.max()))))
    t = torch.arange(-radius, radius + 1, dtype=torch.float32).view(1, -1)
    k = torch.exp(-0.5 * (t / sigma.view(-1, 1).clamp(min=0.05)) ** 2)
    k = (k / k.sum(1, keepdim=True)).repeat_interleave(c, 0)       # [n*c, 2r+1]
    x = x.reshape(1, n * c, h, w)
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="replicate"), k.view(n * c, 1, 1, -1), groups=n * c)
    x = F.conv2d(F.pad(x, (0, 0, radius, radius), mode="replicate"), k.view(n * c, 1, -1, 1), groups=n * c)
    return x.view(n, c, h, w)


def _capture(scene, cam, size, g):
    """The domain camera: exposure and white balance, optics, sensor resolution, noise, gamma,
    8-bit quantization and JPEG. scene: linear RGB at SUPERSAMPLE*size; returns uint8."""
    n = scene.shape[0]
    warmth = cam["warmth"].view(n, 1, 1, 1)
    balance = torch.cat([1 + warmth, torch.ones_like(warmth), 1 - warmth], 1)
    x = scene * cam["exposure"].view(n, 1, 1, 1) * balance
    x = _blur(x, cam["blur"] * SUPERSAMPLE)
    x = F.avg_pool2d(x, SUPERSAMPLE)
    for r in cam["resolution"].unique().tolist():
        if r < 1:
            sel = (cam["resolution"] == r).nonzero().flatten()
            low = F.interpolate(x[sel], size=max(4, round(size * r)), mode="area")
            x[sel] = F.interpolate(low, size=size, mode="bilinear", align_corners=False)
    noise = torch.randn(x.shape, generator=g) * cam["noise"].view(n, 1, 1, 1)
    x = x + noise * torch.sqrt(x.clamp(min=0) + 0.05) / math.sqrt(0.55)
    x = x.clamp(0, 1) ** (1 / cam["gamma"].view(n, 1, 1, 1))
    pixels = (x * 255).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()
    out = np.empty_like(pixels)
    for i in range(n):
        buf = io.BytesIO()
        Image.fromarray(pixels[i]).save(buf, format="JPEG", quality=int(cam["jpeg"][i]))
        out[i] = np.asarray(Image.open(buf).convert("RGB"))
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()


# ----------------------------------------------------------------------------- generation

def client_ids(domain: str, split: str) -> torch.Tensor:
    """The client ids of a domain's split: unique across domains, disjoint between splits."""
    n_train, n_test = DOMAINS[domain].clients
    first = "IOCM".index(domain) * 1000 + (0 if split == "train" else 500)
    return torch.arange(first, first + (n_train if split == "train" else n_test), dtype=torch.int64)


def generate(domain: str, split: str, image_size: int = 64, samples: int | None = None, seed: int = 0) -> DomainData:
    """Render one domain's split, uncached. Images alternate live/spoof and cycle through the
    clients, then are shuffled; the same arguments give byte-identical tensors."""
    return _generate(domain, split, image_size, samples, seed)[0]


def _generate(domain, split, image_size, samples, seed):
    """`generate`, plus each image's `Annotations` (attack kind and region map)."""
    spec = DOMAINS[domain]
    n = DEFAULT_SAMPLES[split] if samples is None else samples
    key = (VERSION, seed, domain, split, image_size, n)
    ids = client_ids(domain, split)
    people = _identities(_generator(*key[:4], "identities"), len(ids))
    order = torch.randperm(n, generator=_generator(*key, "order"))
    label = (order % 2 == 0).float()
    client = (order // 2) % len(ids)
    g = _generator(*key, "images")
    p = {k: t[client] for k, t in people.items()}
    p.update(_rooms(g, n, spec))
    p.update(_poses(g, n))
    p.update(_lights(g, n, spec.lighting))
    photo = {k: t[client] for k, t in people.items()}
    photo.update({k: t.clone() for k, t in _rooms(g, n, spec).items()})
    photo.update(_poses(g, n, frontal=True))
    photo.update(_lights(g, n, spec.photo_lighting))
    attack = dict(p)
    attack.update(_attacks(g, n, spec))
    # the attacker frames the photo so that, on the medium, the face has a live face's size and place
    photo["scale"] = photo["scale"] / attack["scale"]
    photo["cx"] = (photo["cx"] - attack["offset_x"]) / attack["scale"]
    photo["cy"] = (photo["cy"] - attack["offset_y"]) / attack["scale"]
    cam = _cameras(g, n, spec)

    big = image_size * SUPERSAMPLE
    images, depth, region_maps = [], [], []
    for start in range(0, n, CHUNK):
        sl = slice(start, min(n, start + CHUNK))
        live = label[sl] > 0
        pc = {k: t[sl] for k, t in p.items()}
        on, off = live.nonzero().flatten() + start, (~live).nonzero().flatten() + start
        scene = torch.empty(len(live), 3, big, big)
        regions = torch.zeros(len(live), len(REGIONS) - 1, big, big)    # soft shares; "other" is the rest
        scene[on - start], live_masks = _render({k: t[on] for k, t in p.items()}, big)
        regions[on - start, 0:1] = live_masks["face"]
        regions[on - start, 3:4] = 1 - live_masks["person"]
        scene[off - start], spoof_masks = _spoof({k: t[off] for k, t in photo.items()}, {k: t[off] for k, t in attack.items()}, big)
        regions[off - start] = torch.cat([spoof_masks[r] for r in REGIONS[:-1]], 1)
        images.append(_capture(scene, {k: t[sl] for k, t in cam.items()}, image_size, _generator(*key, "noise", start)))
        shares = F.avg_pool2d(regions, SUPERSAMPLE).clamp(0, 1)
        shares = torch.cat([shares, (1 - shares.sum(1, keepdim=True)).clamp(min=0)], 1)
        region_maps.append(shares.argmax(1).to(torch.uint8))
        u, v = _grid(DEPTH_SIZE)
        x, y = _face_coords(u, v, pc)
        z = (_relief(x, y, pc) / 0.9).clamp(0, 1) * live.view(-1, 1, 1, 1)
        depth.append((z[:, 0] * 255).round().to(torch.uint8))
    kinds = torch.where(label > 0, -1, attack["kind"].long())
    return DomainData(torch.cat(images), label, torch.cat(depth), ids[client]), Annotations(kinds, torch.cat(region_maps))


# ----------------------------------------------------------------------------- cache

def cache_dir(path: str | os.PathLike | None = None) -> Path:
    """The cache directory: `path`, else $FASLAND_CACHE/synth, else ~/.cache/fasland/synth."""
    if path is not None:
        return Path(path)
    root = os.environ.get("FASLAND_CACHE")
    return Path(root) / "synth" if root else Path.home() / ".cache" / "fasland" / "synth"


def cache_key(domain: str, split: str, image_size: int, samples: int | None, seed: int) -> str:
    """A name for these arguments, the domain's specification and this file's source."""
    n = DEFAULT_SAMPLES[split] if samples is None else samples
    source = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()   # any change to the renderer
    spec = repr((VERSION, source, asdict(DOMAINS[domain]), split, image_size, n, seed))
    return f"synth_{domain}_{split}_{image_size}px_{n}_s{seed}_{hashlib.sha256(spec.encode()).hexdigest()[:12]}"


def load(domain: str, split: str, image_size: int = 64, samples: int | None = None, seed: int = 0,
         cache: str | os.PathLike | None = None) -> DomainData:
    """`generate`, read from the cache when present, else generated and written atomically."""
    return _cached(domain, split, image_size, samples, seed, cache, "")


def load_annotations(domain: str, split: str, image_size: int = 64, samples: int | None = None, seed: int = 0,
                     cache: str | os.PathLike | None = None) -> Annotations:
    """The `Annotations` of the images `load` returns for the same arguments (cached beside them)."""
    return _cached(domain, split, image_size, samples, seed, cache, ".annotations")


def _cached(domain, split, image_size, samples, seed, cache, suffix):
    """One of the two cache files of these arguments (images: suffix "", annotations: ".annotations");
    a missing, truncated or foreign file is regenerated, both files at once."""
    kind = Annotations if suffix else DomainData
    base = cache_dir(cache) / cache_key(domain, split, image_size, samples, seed)
    path = base.with_name(base.name + suffix + ".pt")
    if path.exists():
        try:
            return kind(**torch.load(path, weights_only=True))
        except Exception:
            pass    # a truncated or foreign file: regenerate over it
    from training.checkpoint import atomic_save
    from training.errors import FaslandError

    data, notes = _generate(domain, split, image_size, samples, seed)
    for part, p in ((data, base.with_name(base.name + ".pt")), (notes, base.with_name(base.name + ".annotations.pt"))):
        try:
            atomic_save(part._asdict(), p)
        except FaslandError as e:   # a full or read-only disk: the cache is only a speed-up
            print(f"fasland: {e}; continuing without the SynthFAS cache", file=sys.stderr)
    return notes if suffix else data


def write_synth(out_dir, image_size: int = 64, samples: int | None = None, seed: int = 0) -> list[Path]:
    """Write every domain/split of SynthFAS into `out_dir` (the cache layout) and
    `contact_sheet.png`; return the paths written."""
    out = Path(out_dir)
    paths = []
    for domain in DOMAINS:
        for split in ("train", "test"):
            n = None if samples is None else samples if split == "train" else max(2, samples // 2)
            load(domain, split, image_size, n, seed, cache=out)
            paths.append(out / (cache_key(domain, split, image_size, n, seed) + ".pt"))
    paths.append(contact_sheet(out / "contact_sheet.png", image_size, seed))
    return paths


def contact_sheet(path, image_size: int = 64, seed: int = 0, per_class: int = 6) -> Path:
    """A PNG grid, one row per domain: `per_class` live then `per_class` spoof test images,
    each titled with its label (and attack kind for spoofs)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = 2 * per_class
    fig, axes = plt.subplots(len(DOMAINS), cols, figsize=(1.2 * cols, 1.35 * len(DOMAINS)))
    for row, domain in enumerate(DOMAINS):
        data, (kinds, _) = _generate(domain, "test", image_size, 8 * per_class, seed)
        live = (data.labels == 1).nonzero().flatten()[:per_class]
        spoof = (data.labels == 0).nonzero().flatten()[:per_class]
        for col, i in enumerate(torch.cat([live, spoof]).tolist()):
            ax = axes[row, col]
            ax.imshow(data.images[i].permute(1, 2, 0).numpy())
            ax.set_xticks([]), ax.set_yticks([])
            ax.set_title("live" if kinds[i] < 0 else KINDS[kinds[i]], fontsize=7,
                         color="green" if data.labels[i] == 1 else "red")
            if col == 0:
                ax.set_ylabel(f"{domain}", fontsize=11, rotation=0, labelpad=12)
    fig.suptitle(f"SynthFAS {image_size}px, seed {seed}: live | spoof per domain (I, O, C, M)", fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
