"""Attention maps and where their mass falls: models whose score reads a known corner, region fractions
against direct sums, Grad-CAM / Grad-CAM++ against a hand-written autograd computation, the command."""
import h5py
import json
import pytest
import torch
from torch import nn

from analysis.attention import METHODS, attention_maps, face_ellipse, gradcam_plus_plus, region_fractions
from training.data import synth
from training.data.synth import REGIONS
from training.errors import FaslandError

SIZE = 16


class CornerModel(nn.Module):
    """logit = mean of a fixed positive convolution of the image's (row, col) quadrant corner, 4×4 px:
    nothing outside that corner reaches the score."""

    def __init__(self, corner: tuple[int, int]):
        super().__init__()
        self.mask = torch.zeros(1, 1, SIZE, SIZE)
        r, c = corner
        self.mask[..., r * (SIZE - 4):r * (SIZE - 4) + 4, c * (SIZE - 4):c * (SIZE - 4) + 4] = 1
        self.conv = nn.Conv2d(3, 4, 3, stride=2, padding=1, bias=False)
        nn.init.constant_(self.conv.weight, 1 / 27)
        self.head = nn.Linear(4, 1)
        nn.init.constant_(self.head.weight, 1.0)

    def forward(self, x):
        a = torch.relu(self.conv(x * self.mask))
        return self.head(a.mean((2, 3))).squeeze(1)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("corner", [(0, 0), (1, 1), (0, 1)])
def test_the_map_lies_in_the_corner_the_score_reads(method, corner):
    x = torch.rand(3, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0)) + 0.1
    maps, layer = attention_maps(CornerModel(corner), x, method, steps=8)
    assert maps.shape == (3, SIZE, SIZE) and (maps >= 0).all()
    assert layer == (None if method == "integrated-gradients" else "conv")
    quadrant = torch.zeros(SIZE, SIZE, dtype=torch.bool)
    h = SIZE // 2
    quadrant[corner[0] * h:(corner[0] + 1) * h, corner[1] * h:(corner[1] + 1) * h] = True
    share = maps[:, quadrant].sum(1) / maps.flatten(1).sum(1)
    assert (share >= 0.9).all(), share


def hand_cam(model, layer, x):
    """Grad-CAM and Grad-CAM++ from forward/backward hooks and autograd, written out per channel."""
    store = {}
    layer.register_forward_hook(lambda m, i, o: store.update(a=o))
    score = model(x).sum()
    g = torch.autograd.grad(score, store["a"])[0]
    a = store["a"].detach()
    cam = torch.relu(sum(g[:, k].mean((1, 2))[:, None, None] * a[:, k] for k in range(a.shape[1])))
    pp = torch.zeros_like(cam)
    for n in range(a.shape[0]):
        for k in range(a.shape[1]):
            gk, ak = g[n, k], a[n, k]
            denom = 2 * gk ** 2 + ak.sum() * gk ** 3
            alpha = torch.where(denom != 0, gk ** 2 / torch.where(denom != 0, denom, 1.0), 0.0)
            pp[n] += (alpha * torch.relu(gk)).sum() * ak
    return cam, torch.relu(pp)


def test_gradcam_and_gradcam_plus_plus_match_autograd():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 5, 3, padding=1), nn.ReLU(), nn.Conv2d(5, 6, 3, padding=1), nn.Tanh(),
                          nn.Flatten(), nn.Linear(6 * SIZE * SIZE, 1), nn.Flatten(0))
    x = torch.randn(2, 3, SIZE, SIZE)
    cam, pp = hand_cam(model, model[2], x.clone().requires_grad_(True))
    got, layer = attention_maps(model, x, "gradcam")
    assert layer == "2" and torch.allclose(got, cam, atol=1e-6)
    got, _ = attention_maps(model, x, "gradcam++")
    assert torch.allclose(got, pp, atol=1e-6, rtol=1e-4)


def test_gradcam_plus_plus_of_a_linear_score_is_gradcam_up_to_scale():
    """s = Σ_k v_k Σ_ij A^k_ij: g = v_k constant, so α = 1/(2 + Σ A v_k), a closed form."""
    a = torch.rand(1, 3, 4, 4)
    v = torch.tensor([0.5, 2.0, -1.0]).view(1, 3, 1, 1)
    got = gradcam_plus_plus(a, v.expand_as(a))
    alpha = 1 / (2 + a.sum((2, 3), keepdim=True) * v)
    want = ((alpha * v.clamp(min=0) * 16) * a).sum(1, keepdim=True).clamp(min=0)
    assert torch.allclose(got, want)


def test_region_fractions_are_the_mass_on_each_region():
    data, notes = synth._generate("C", "test", SIZE, 6, seed=0)
    regions = notes.regions
    face = (regions == REGIONS.index("face")).float()
    f = region_fractions(face, regions)
    assert torch.allclose(f[:, 0], torch.ones(6, dtype=torch.float64))     # a map equal to the face mask: all face
    assert torch.allclose(f[:, 1:], torch.zeros(6, 4, dtype=torch.float64))
    maps = torch.rand(6, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    f = region_fractions(maps, regions)
    for n in range(6):
        for r in range(len(REGIONS)):
            want = maps[n][regions[n] == r].sum() / maps[n].sum()
            assert abs(f[n, r].item() - want.item()) < 1e-6
    assert torch.allclose(f.sum(1), torch.ones(6, dtype=torch.float64))
    real = region_fractions(torch.ones(1, SIZE, SIZE), face_ellipse(SIZE)[None], known=("face", "other"))
    assert abs(real[0, 0].item() - face_ellipse(SIZE).eq(0).float().mean().item()) < 1e-6
    assert torch.isnan(real[0, 1:4]).all() and abs(real[0, 0].item() + real[0, 4].item() - 1) < 1e-9


def test_synth_regions_annotate_what_is_drawn():
    """Live images have no medium edge or hand; the face sits in the upper middle; spoofs of a held sheet
    show hands somewhere; the annotations leave the images themselves unchanged."""
    data, notes = synth._generate("I", "train", 32, 48, seed=0)
    assert torch.equal(data.images, synth.generate("I", "train", 32, 48, seed=0).images)
    live = notes.kinds < 0
    assert torch.equal(live, data.labels == 1)
    r = notes.regions
    assert r.dtype == torch.uint8 and r.shape == (48, 32, 32) and int(r.max()) < len(REGIONS)
    edge_hand = torch.isin(r, torch.tensor([1, 2])).flatten(1).any(1)
    assert not edge_hand[live].any() and edge_hand[~live].any()
    assert (r[:, 12:18, 14:18] == 0).float().mean() > 0.9     # the image centre is face
    assert (r[live][:, 0, :] == 3).float().mean() > 0.5           # the top row of a live image is mostly room


def test_a_model_without_convolutions_needs_integrated_gradients():
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * SIZE * SIZE, 1), nn.Flatten(0))
    x = torch.rand(2, 3, SIZE, SIZE)
    for method in ("gradcam", "gradcam++"):
        with pytest.raises(FaslandError, match="no convolutional layer.*integrated-gradients"):
            attention_maps(model, x, method)
    assert attention_maps(model, x, "integrated-gradients", steps=4)[0].shape == (2, SIZE, SIZE)
    with pytest.raises(FaslandError, match="unknown attention method 'lime'"):
        attention_maps(model, x, "lime")


def test_the_command_writes_maps_sheets_and_fractions(tmp_path):
    from reliability_fixtures import cli, make_checkpoint

    ck = make_checkpoint(tmp_path / "c.pt")
    r = cli(["attention", "--checkpoint", ck, "--samples", "4", "--out", tmp_path / "att"])
    assert r.code == 0, r.err[-2000:]
    summary = json.loads((tmp_path / "att" / "attention.json").read_text())
    with h5py.File(tmp_path / "att" / "attention.h5", "r") as f:
        domains = list(f)
        maps, regions = f[summary["target"]]["maps"][()], f[summary["target"]]["regions"][()]
        fractions = f[summary["target"]]["fractions"][()]
    assert set(domains) == set(summary["fractions"]) and len(domains) == 4
    assert maps.shape[0] == 4 and regions.shape == maps.shape
    face = (maps * (regions == 0)).sum((1, 2)) / maps.sum((1, 2))
    assert abs(summary["fractions"][summary["target"]]["all"]["face"] - face.mean()) < 1e-6
    assert abs(fractions[:, 0] - face).max() < 1e-6
    for d in domains:
        assert (tmp_path / "att" / f"sheet_{d}.png").stat().st_size > 5000
    assert "face" in r.out
    assert summary["samples"] == 4 and summary["method"] == "gradcam"
    from analysis.attention import AttentionResult
    back = AttentionResult.read(tmp_path / "att" / "attention.h5")     # what the study's figure reads
    assert back.to_json() == summary


def test_the_default_cam_layer_is_the_last_convolution_with_a_map_to_place():
    """At 32 px ResNet18's layer4 is 1×1 (a constant map): the default is the last 4×4 convolution."""
    from analysis.attention import cam_layer
    from training.model import FASNet

    model = FASNet().eval()
    assert cam_layer(model, torch.zeros(1, 3, 32, 32))[0] == "layer2.1.conv2"
    assert cam_layer(model, torch.zeros(1, 3, 128, 128))[0] == "layer4.1.conv2"
    assert cam_layer(model, torch.zeros(1, 3, 32, 32), "layer3")[0] == "layer3"
