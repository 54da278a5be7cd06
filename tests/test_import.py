"""fasland import: each source layout, saved as its codebase saves it, becomes a fasland checkpoint whose
model gives the source model's outputs; surface, hessian and conflicts run on it; two-class heads get
cross-entropy and the live score; nothing in a pickle runs."""
import json
import os

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from sklearn.metrics import roc_auc_score, roc_curve

import import_fixtures as fx
from reliability_fixtures import cli
from training.checkpoint import load_checkpoint, load_model
from training.errors import FaslandError
from training.imports import import_checkpoint, read_foreign
from training.probe import load_probe

SIZE = 32
MEAN, STD = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def images(n=6, seed=1):
    """uint8 images and the ImageNet-normalized floats both codebases feed their models."""
    x = torch.randint(0, 256, (n, 3, SIZE, SIZE), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)
    return x, (x.float() / 255 - MEAN) / STD


def gacfas(tmp, classes):
    src = fx.settle(fx.GacfasResnet18(classes), SIZE)
    return src, fx.save_gacfas(tmp / "gacfas.pth", src, image_size=SIZE), [], lambda m, x: m(x).squeeze(1) if classes == 1 else m(x)


def safas(tmp, normfc, scale):
    src = fx.settle(fx.SafasResnet18(normed=normfc, use_bias=True), SIZE)
    path = fx.save_safas(tmp / "safas.pth", src, image_size=SIZE, normfc=normfc, scale=str(scale))
    s = None if scale is None else float(scale)
    return src, path, [], lambda m, x: torch.logit(m(x, s).squeeze(1).double()).float()


def torchvision_resnet(tmp, classes, wrap=False):
    src = fx.settle(torchvision.models.resnet18(weights=None, num_classes=classes), SIZE)
    state = (torch.nn.DataParallel(src) if wrap else src).state_dict()
    torch.save({"state_dict": state} if wrap else state, tmp / "tv.pt")
    return src, tmp / "tv.pt", ["--protocol", "OCM2I"], lambda m, x: m(x).squeeze(1) if classes == 1 else m(x)


def mobilenet(tmp):
    torch.manual_seed(3)
    src = fx.settle(fx.mobilenet_v2(), SIZE)
    torch.save({"model": src.state_dict()}, tmp / "mnv2.pt")
    return src, tmp / "mnv2.pt", ["--protocol", "OCI2M", "--model", "import_fixtures:mobilenet_v2"], lambda m, x: m(x)


CASES = {
    "gacfas": ("gacfas", lambda t: gacfas(t, 1)),
    "gacfas-2class": ("gacfas", lambda t: gacfas(t, 2)),
    "safas": ("safas", lambda t: safas(t, False, 1)),
    "safas-normed-learned-scale": ("safas", lambda t: safas(t, True, None)),
    "torchvision-1": ("torchvision", lambda t: torchvision_resnet(t, 1)),
    "torchvision-2": ("torchvision", lambda t: torchvision_resnet(t, 2)),
    "torchvision-dataparallel": ("torchvision", lambda t: torchvision_resnet(t, 2, wrap=True)),
    "module-mobilenet_v2": ("module", mobilenet),
}


@pytest.fixture(scope="module", params=list(CASES))
def imported(request, tmp_path_factory):
    tmp = tmp_path_factory.mktemp(request.param)
    fmt, make = CASES[request.param]
    src, path, extra, source_output = make(tmp)
    out = tmp / "ckpt.pt"
    r = cli(["import", "--format", fmt, "--checkpoint", path, "--image-size", str(SIZE), *extra, "--out", out])
    assert r.code == 0, r.err[-3000:]
    return request.param, src, out, source_output, tmp


def test_logits_equal_the_source_models(imported):
    name, src, out, source_output, _ = imported
    model, ckpt = load_model(out)
    assert set(ckpt["config"]) >= {"protocol", "data", "loss"} and ckpt["config"]["data"]["image_size"] == SIZE
    assert len(ckpt["provenance"]["source_sha256"]) == 64 and ckpt["provenance"]["format"] == CASES[name][0]
    x8, x = images()
    probe = load_probe(ckpt["config"], max_samples=4)
    with torch.no_grad():
        ours, theirs = model(probe.inputs(x8)), source_output(src, x)
    assert ours.shape == theirs.shape
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6 if "safas" not in name else 1e-5)
    if "safas" in name:     # the source gives probabilities: σ(z) equals them to 1e-6
        torch.testing.assert_close(torch.sigmoid(ours), torch.sigmoid(theirs), rtol=0, atol=1e-6)


# every layout the issue names (the variants above differ only in their heads, checked by the logits test)
COMMAND_CASES = ["gacfas", "safas", "torchvision-1", "torchvision-dataparallel", "module-mobilenet_v2"]


@pytest.mark.parametrize("imported", COMMAND_CASES, indirect=True)
def test_surface_hessian_conflicts_run(imported):
    name, _, out, _, tmp = imported
    small = ["--max-samples", "4", "--batch-size", "8", "--threads", "1"]
    r = cli(["surface", "--checkpoint", out, "--x", "-0.5:0:2", *small, "--out", tmp / "s.h5"])
    assert r.code == 0, r.err[-3000:]
    with h5py.File(tmp / "s.h5", "r") as f:
        assert np.isfinite(f["train_loss"][:]).all() and f["done"][:].all()
        centre = float(f["train_loss"][1])
    model, ckpt = load_model(out)
    assert centre == pytest.approx(load_probe(ckpt["config"], max_samples=4)(model)["train_loss"], rel=1e-5)
    r = cli(["hessian", "--checkpoint", out, "--max-iter", "2", "--tol", "0.5", *small, "--out", tmp / "h.json"])
    assert r.code == 0, r.err[-3000:]
    assert np.isfinite(json.loads((tmp / "h.json").read_text())["eigenvalues"]).all()
    r = cli(["conflicts", "--checkpoint", out, "--at", "theta", "--interval-subsets", "0", *small, "--out", tmp / "c.json"])
    assert r.code == 0, r.err[-3000:]
    c = np.asarray(json.loads((tmp / "c.json").read_text())["theta"]["cosines"])
    assert c.shape == (3, 3) and np.allclose(np.diag(c), 1, atol=1e-5)


@pytest.mark.parametrize("live_index", [1, 0])
def test_two_class_probe_loss_and_hter_are_cross_entropy_and_the_roc(tmp_path, live_index):
    src = fx.settle(torchvision.models.resnet18(weights=None, num_classes=2), SIZE)
    torch.save(src.state_dict(), tmp_path / "tv2.pt")
    ckpt = import_checkpoint("torchvision", tmp_path / "tv2.pt", tmp_path / "c.pt", protocol="ICM2O", image_size=SIZE,
                             live_index=live_index)
    assert ckpt["config"]["loss"] == {"kind": "cross_entropy", "live_index": live_index}
    model, ckpt = load_model(tmp_path / "c.pt")
    probe = load_probe(ckpt["config"], max_samples=12)
    m = probe(model)
    for d, (x8, y) in probe.domains.items():
        with torch.no_grad():
            z = src((x8.float() / 255 - MEAN) / STD)
        cls = y.long() if live_index == 1 else 1 - y.long()
        assert m[f"loss_{d}"] == pytest.approx(F.cross_entropy(z, cls).item(), rel=1e-5)
        if d == "O":
            score = F.softmax(z, 1)[:, live_index].numpy()           # P(live): the same ranking as z_live − z_spoof
            fpr, tpr, _ = roc_curve(y.numpy(), score)
            i = np.argmin(np.abs(tpr + fpr - 1))
            assert m["test_hter"] == pytest.approx((fpr[i] + 1 - tpr[i]) / 2, abs=1e-9)
            assert m["test_auc"] == pytest.approx(roc_auc_score(y.numpy(), score), abs=1e-9)


def test_gacfas_settings_come_from_its_pickled_config(tmp_path):
    src = fx.settle(fx.GacfasResnet18(1), SIZE)
    fx.save_gacfas(tmp_path / "g.pth", src, protocol="OMI2C", image_size=SIZE, logit_scale=7)
    c = import_checkpoint("gacfas", tmp_path / "g.pth", tmp_path / "c.pt")["config"]
    assert (c["protocol"], c["data"]["image_size"], c["data"]["normalize"]) == ("OMI2C", SIZE, "imagenet")
    assert c["loss"] == {"kind": "bce", "logit_scale": 7.0} and c["hparams"]["rho"] == 0.1
    c = import_checkpoint("gacfas", tmp_path / "g.pth", tmp_path / "c.pt", protocol="ICM2O", logit_scale=3)["config"]
    assert c["protocol"] == "ICM2O" and c["loss"]["logit_scale"] == 3.0
    ckpt = load_checkpoint(tmp_path / "c.pt")                     # an ordinary fasland checkpoint: weights_only loads it
    assert ckpt["epoch"] == 42 and ckpt["arch"] == {"name": "resnet18", "head": "normed", "outputs": 1}


def test_a_pickled_os_system_runs_nothing(tmp_path):
    marker = tmp_path / "RAN"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"state_dict": torchvision.models.resnet18(num_classes=1).state_dict(), "args": Evil()}, tmp_path / "evil.pth")
    with pytest.raises(FaslandError, match="posix.system"):
        read_foreign(tmp_path / "evil.pth")
    r = cli(["import", "--format", "torchvision", "--checkpoint", tmp_path / "evil.pth", "--protocol", "ICM2O", "--out", tmp_path / "c.pt"])
    assert r.code == 2 and "nothing was run" in r.err
    assert not marker.exists() and not (tmp_path / "c.pt").exists()


def test_preprocessing_is_recorded_and_applied_per_batch(tmp_path):
    from training.data import normalize

    src = fx.settle(fx.SafasResnet18(), SIZE)
    fx.save_safas(tmp_path / "s.pth", src, image_size=SIZE)
    ckpt = torch.load(tmp_path / "s.pth", weights_only=False)
    ckpt["args"].pretrain = "none"                    # SA-FAS then normalizes with mean = std = 0.5
    torch.save(ckpt, tmp_path / "s.pth")
    c = import_checkpoint("safas", tmp_path / "s.pth", tmp_path / "c.pt")["config"]
    assert (c["protocol"], c["data"]["normalize"], c["data"]["image_size"]) == ("ICM2O", "minus-one-one", SIZE)
    probe = load_probe(c, max_samples=4)
    x8, _ = probe.domains["O"]
    assert x8.dtype == torch.uint8
    torch.testing.assert_close(probe.batches("O")[0][0], x8.float() / 127.5 - 1, rtol=0, atol=1e-6)
    assert torch.equal(normalize(x8, "none"), x8.float() / 255)
    with pytest.raises(FaslandError, match="--normalize"):
        import_checkpoint("safas", tmp_path / "s.pth", tmp_path / "c.pt", normalize="zscore")
