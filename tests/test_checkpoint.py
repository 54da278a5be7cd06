"""The model and its checkpoint: round trip, safe loading, clear refusals."""
import pytest
import torch
import torchvision

from training.checkpoint import load_checkpoint, load_model, save_checkpoint
from training.errors import FaslandError
from training.model import build_model, load_pretrained

CONFIG = {"protocol": "ICM2O", "method": "erm", "data": {"root": "synth", "image_size": 32, "seed": 0},
          "model": {"name": "resnet18", "head": "normed"}, "hparams": {}, "train": {}}


@pytest.mark.parametrize("head", ["linear", "normed"])
def test_round_trip_rebuilds_the_same_outputs(tmp_path, head):
    torch.manual_seed(0)
    model = build_model({"name": "resnet18", "head": head})
    model.train()
    model(torch.randn(8, 3, 32, 32))          # move BN running statistics off their defaults
    model.eval()
    x = torch.randn(4, 3, 32, 32)
    save_checkpoint(tmp_path / "c.pt", model, {"name": "resnet18", "head": head}, CONFIG, 3, {"final": None})
    raw = torch.load(tmp_path / "c.pt", weights_only=True)
    assert raw["epoch"] == 3 and raw["config"]["protocol"] == "ICM2O"
    again, ckpt = load_model(tmp_path / "c.pt")
    assert torch.equal(model(x), again(x))
    assert model(x).shape == (4,)


def test_normed_head_is_a_cosine():
    model = build_model({"head": "normed"}).eval()
    x = torch.randn(5, 3, 32, 32)
    f = model.features(x)
    w = model.head.weight
    cos = (f @ w.T).squeeze(1) / (f.norm(dim=1) * w.norm())
    assert torch.allclose(model(x), cos, atol=1e-6)
    assert model(x).abs().max() <= 1 + 1e-6


class Evil:
    """Any pickled class: loading it would run code."""


def test_pickled_objects_are_refused(tmp_path):
    torch.save({"model": {}, "arch": Evil(), "config": {}, "epoch": 0, "metrics": {}}, tmp_path / "evil.pt")
    with pytest.raises(FaslandError, match="pickled objects"):
        load_checkpoint(tmp_path / "evil.pt")


def test_truncated_and_foreign_files(tmp_path):
    model = build_model({"head": "linear"})
    save_checkpoint(tmp_path / "c.pt", model, {"name": "resnet18", "head": "linear"}, CONFIG, 1, {})
    data = (tmp_path / "c.pt").read_bytes()
    (tmp_path / "t.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(FaslandError, match="truncated or corrupt"):
        load_checkpoint(tmp_path / "t.pt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "f.pt")
    with pytest.raises(FaslandError, match="not a fasland checkpoint"):
        load_checkpoint(tmp_path / "f.pt")
    with pytest.raises(FaslandError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")


def test_wrong_architecture_and_nan_weights(tmp_path):
    model = build_model({"head": "linear"})
    state = model.state_dict()
    ckpt = {"model": state, "arch": {"name": "resnet18", "head": "normed"}, "config": CONFIG, "epoch": 1, "metrics": {}}
    torch.save(ckpt, tmp_path / "other.pt")
    with pytest.raises(FaslandError, match="does not fit"):
        load_model(tmp_path / "other.pt")
    state = {k: v.clone() for k, v in state.items()}
    state["layer1.0.conv1.weight"][0] = float("nan")
    torch.save({**ckpt, "model": state, "arch": {"name": "resnet18", "head": "linear"}}, tmp_path / "nan.pt")
    with pytest.raises(FaslandError, match="NaN/inf"):
        load_model(tmp_path / "nan.pt")


def test_pretrained_loads_a_local_torchvision_state_dict(tmp_path):
    torch.manual_seed(1)
    r = torchvision.models.resnet18(weights=None)
    torch.save(r.state_dict(), tmp_path / "r18.pt")
    model = build_model({"head": "linear"})
    load_pretrained(model, tmp_path / "r18.pt")
    assert torch.equal(model.layer3[0].conv1.weight, r.layer3[0].conv1.weight)
    with pytest.raises(FaslandError, match="not found"):
        load_pretrained(model, tmp_path / "none.pt")
