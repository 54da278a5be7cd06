"""The surface engine on a tiny conv net and a Probe over random tensors, checked against independent
evaluations of freshly built models; then `fasland surface` end to end on a SynthFAS checkpoint."""
import copy

import h5py
import numpy as np
import pytest
import torch
from torch import nn

from landscape.directions import Directions, interpolation_direction, random_direction
from landscape.store import read_store
from landscape.surface import Plane, compute_surface, parse_axis
from training.errors import FaslandError
from training.probe import Probe


def tiny_net(seed=0) -> nn.Module:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4),
                        nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 1), nn.Flatten(0))
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5), m.running_var.uniform_(0.5, 2)
    return net.eval()


def tiny_probe() -> Probe:
    g = torch.Generator().manual_seed(1)
    domains = {d: (torch.randn(12, 3, 8, 8, generator=g), torch.tensor([0.0, 1.0] * 6)) for d in "ABT"}
    return Probe(domains, sources=("A", "B"), target="T", batch_size=5)


def plane_dirs(net, dir_type="weights"):
    g = torch.Generator().manual_seed(2)
    return Directions(random_direction(net, generator=g, dir_type=dir_type),
                      random_direction(net, generator=g, dir_type=dir_type), dir_type, {"seed": 2})


def set_by_hand(net, dirs, a, b) -> nn.Module:
    """A freshly built model whose tensors are θ + a·d1 + b·d2, computed in float64."""
    fresh = tiny_net(seed=123)          # other init, overwritten below
    fresh.load_state_dict(net.state_dict())
    tensors = list(fresh.parameters()) if dirs.dir_type == "weights" else list(fresh.state_dict(keep_vars=True).values())
    with torch.no_grad():
        for t, dx, dy in zip(tensors, dirs.x, dirs.y):
            if t.is_floating_point():
                t.copy_((t.double() + a * dx.double() + b * dy.double()).float())
    return fresh


def test_parse_axis():
    np.testing.assert_allclose(parse_axis("-1:1:5"), [-1, -0.5, 0, 0.5, 1])
    assert parse_axis("0.5:0.5:1").tolist() == [0.5]
    for spec, msg in (("1:-1:0", "at least 1"), ("a:b:c", "not a number"), ("0:1:-3", "at least 1"), ("0:1", "MIN:MAX:N"),
                      ("0:1:2.5", "whole number"), ("nan:1:3", "not finite"), ("1:-1:5", "MIN ≥ MAX")):
        with pytest.raises(FaslandError, match=msg) as e:
            parse_axis(spec, "--x")
        assert "--x" in str(e.value) and "\n" not in str(e.value)


def test_origin_is_the_unperturbed_model():
    net, probe = tiny_net(), tiny_probe()
    expected = probe(copy.deepcopy(net))
    s = compute_surface(net, probe, plane_dirs(net), [-1, 0, 1], [-1, 0, 1], progress=False)
    origin = {k: v[1, 1] for k, v in s.arrays.items()}
    assert set(origin) == set(expected) >= {"train_loss", "train_acc", "test_loss", "test_acc", "test_hter", "test_auc",
                                            "loss_A", "acc_A", "loss_B", "acc_B", "loss_T", "acc_T"}
    for k in expected:
        assert origin[k] == pytest.approx(expected[k], rel=1e-6, abs=1e-7), k
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), tiny_net().state_dict().values()))  # θ restored


@pytest.mark.parametrize("dir_type", ["weights", "states"])
def test_grid_points_equal_models_set_by_hand(dir_type):
    net, probe = tiny_net(), tiny_probe()
    dirs = plane_dirs(net, dir_type)
    xs, ys = np.linspace(-1, 0.5, 4), np.linspace(-0.5, 1.0, 3)     # nx ≠ ny: the value order matters
    s = compute_surface(net, probe, dirs, xs, ys, progress=False)
    assert s.done.all()
    for ix, iy in ((3, 0), (0, 2), (2, 1)):
        expected = probe(set_by_hand(net, dirs, xs[ix], ys[iy]))
        for k, v in expected.items():
            assert s.arrays[k][ix, iy] == pytest.approx(v, rel=1e-4, abs=1e-5), (k, ix, iy)


def test_points_are_written_in_place():
    net = tiny_net()
    dirs = plane_dirs(net)
    plane = Plane(net, dirs)
    ptrs = [p.data_ptr() for p in net.parameters()]
    for a, b in ((0.3, -0.2), (-1.0, 0.5), (0.7, 0.5), (0.3, -0.2)):     # rows revisited, as MPI hands them out
        plane.move_to(a, b)
        for p, q in zip(net.parameters(), set_by_hand(tiny_net(), dirs, a, b).parameters()):
            assert torch.allclose(p, q, rtol=1e-6, atol=1e-7)
    assert [p.data_ptr() for p in net.parameters()] == ptrs
    plane.reset()
    assert all(torch.equal(a, b) for a, b in zip(net.parameters(), tiny_net().parameters()))


def test_interpolation_reproduces_both_models():
    a, b, probe = tiny_net(0), tiny_net(1), tiny_probe()
    dirs = Directions(interpolation_direction(a, b, "states"), None, "states")
    s = compute_surface(a, probe, dirs, [0.0, 0.5, 1.0], progress=False)
    for i, model in ((0, tiny_net(0)), (2, tiny_net(1))):
        for k, v in probe(model).items():
            assert s.arrays[k][i] == pytest.approx(v, rel=1e-5, abs=1e-6), (k, i)


def test_non_finite_points_are_stored_and_the_job_goes_on(tmp_path):
    net, probe = tiny_net(), tiny_probe()
    s = compute_surface(net, probe, Directions(random_direction(net)), [0.0, 1e30, 1.0], out_path=tmp_path / "s.h5", progress=False)
    back = read_store(tmp_path / "s.h5")
    assert back.done.all()
    assert not np.isfinite(back.arrays["train_loss"][1]) and np.isfinite(back.arrays["train_loss"][[0, 2]]).all()
    assert s.arrays["train_loss"][0] == pytest.approx(probe(tiny_net())["train_loss"], rel=1e-6)


def test_any_callable_probe_and_a_reference_style_reader(tmp_path):
    """A probe that reads two weights gives f(a, b) = w0 + a + 10 (w1 + b); the reference's plot_2D.py
    pairs train_loss with meshgrid(x, y) and must see exactly that."""
    net = nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        net.weight.copy_(torch.tensor([[0.25, -0.5]]))
    dirs = Directions([torch.tensor([[1.0, 0.0]])], [torch.tensor([[0.0, 1.0]])])
    probe = lambda m: {"train_loss": m.weight[0, 0].item() + 10 * m.weight[0, 1].item()}
    x, y = np.linspace(-1, 1, 3), np.linspace(-2, 2, 3)
    compute_surface(net, probe, dirs, x, y, out_path=tmp_path / "s.h5", progress=False, channels_last=False)
    with h5py.File(tmp_path / "s.h5", "r") as f:
        X, Y = np.meshgrid(f["xcoordinates"][:], f["ycoordinates"][:])
        Z = np.array(f["train_loss"][:])
        assert Z.shape == (3, 3)
        np.testing.assert_allclose(Z, 0.25 + X + 10 * (-0.5 + Y), rtol=1e-6)
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    plt.contour(X, Y, Z)
    plt.close("all")


def test_autocast_stays_close_to_float32():
    net, probe = tiny_net(), tiny_probe()
    dirs = Directions(random_direction(net))
    plain = compute_surface(copy.deepcopy(net), probe, dirs, [-0.5, 0.5], progress=False, autocast=False)
    amp = compute_surface(copy.deepcopy(net), probe, dirs, [-0.5, 0.5], progress=False, autocast="bf16")
    np.testing.assert_allclose(amp.arrays["train_loss"], plain.arrays["train_loss"], rtol=0.05)


class CountingProbe:
    def __init__(self, probe, fail_after=None):
        self.probe, self.calls, self.fail_after = probe, 0, fail_after

    def __call__(self, model):
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise KeyboardInterrupt
        self.calls += 1
        return self.probe(model)


def test_resume_computes_only_missing_points_and_a_finished_job_is_a_no_op(tmp_path):
    net, probe = tiny_net(), tiny_probe()
    dirs = plane_dirs(net)
    xs, ys = np.linspace(-1, 1, 3), np.linspace(-1, 1, 2)
    full = compute_surface(net, probe, dirs, xs, ys, progress=False)
    out, prov = tmp_path / "s.h5", {"checkpoint_sha256": "x"}
    interrupted = CountingProbe(probe, fail_after=4)
    with pytest.raises(KeyboardInterrupt):
        compute_surface(net, interrupted, dirs, xs, ys, out_path=out, provenance=prov, progress=False)
    assert read_store(out).done.sum() == 4
    rest = CountingProbe(probe)
    compute_surface(net, rest, dirs, xs, ys, out_path=out, provenance=prov, progress=False)
    assert rest.calls == 2
    resumed = read_store(out)
    for k, v in full.arrays.items():
        np.testing.assert_allclose(resumed.arrays[k], v, rtol=1e-6)
    before, mtime = out.read_bytes(), out.stat().st_mtime_ns
    again = CountingProbe(probe)
    compute_surface(net, again, dirs, xs, ys, out_path=out, provenance=prov, progress=False)
    assert again.calls == 0 and out.read_bytes() == before and out.stat().st_mtime_ns == mtime
    with pytest.raises(FaslandError, match="another set of directions"):
        compute_surface(net, again, Directions(dirs.x, dirs.y, "weights", {"seed": 3}), xs, ys, out_path=out,
                        provenance=prov, progress=False)
    assert out.read_bytes() == before


# --- `fasland surface` end to end on SynthFAS (image size 32, 16 samples per domain) -------------------

CONFIG = {"protocol": "ICM2O", "method": "erm", "data": {"root": "synth", "image_size": 32, "seed": 0},
          "model": {"name": "resnet18", "head": "linear"}, "hparams": {}, "train": {}}
ARCH = {"name": "resnet18", "head": "linear"}


def fasnet_checkpoint(path, seed, epoch=0):
    from training.checkpoint import save_checkpoint
    from training.model import build_model

    torch.manual_seed(seed)
    model = build_model(ARCH)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1), m.running_var.uniform_(0.8, 1.2)
    save_checkpoint(path, model, ARCH, CONFIG, epoch, {})
    return path


def fasland(*argv) -> int:
    from fasland.cli import main
    return main(["surface", *map(str, argv)])


def probe_of(path):
    from training.checkpoint import load_model
    from training.probe import load_probe

    model, ckpt = load_model(path)
    return load_probe(ckpt["config"], max_samples=16)(model)


@pytest.fixture(scope="module")
def run2d(tmp_path_factory):
    """One 2-D surface made by the CLI: (checkpoint, surface path)."""
    tmp = tmp_path_factory.mktemp("cli")
    ckpt = fasnet_checkpoint(tmp / "a.pt", 0)
    out = tmp / "s.h5"
    assert fasland("--checkpoint", ckpt, "--x", "-1:1:3", "--y", "-0.5:0.5:3", "--max-samples", 16, "--threads", 1,
                   "--plot", "--out", out) == 0
    return ckpt, out


def test_cli_surface_file_holds_every_metric_and_its_provenance(run2d):
    from training.checkpoint import file_hash

    ckpt, out = run2d
    s = read_store(out)
    assert s.done.all() and s.shape == (3, 3)
    assert {"train_loss", "train_acc", "test_loss", "test_acc", "test_hter", "test_auc"} <= set(s.arrays)
    assert {f"{k}_{d}" for k in ("loss", "acc") for d in "ICMO"} <= set(s.arrays)
    assert s.provenance["checkpoint_sha256"] == file_hash(ckpt) and len(s.provenance["data_sha256"]) == 64
    assert '"seed": 0' in s.provenance["directions"] and '"max_samples": 16' in s.provenance["data"]
    assert s.provenance["method"] == "erm" and s.provenance["protocol"] == "ICM2O"
    for k, v in probe_of(ckpt).items():                       # f(0, 0): the checkpoint's own metrics
        assert s.arrays[k][1, 1] == pytest.approx(v, rel=1e-5, abs=1e-6), k
    assert np.isfinite(s.arrays["train_loss"]).all()
    assert out.with_suffix(".png").stat().st_size > 1000
    with h5py.File(out.with_name("s.dirs.h5"), "r") as f:
        assert len(f["xdirection"]) == len(f["ydirection"]) == 62   # FASNet's parameters, reference layout


def test_cli_rerun_is_a_no_op_and_other_directions_are_refused(run2d, capsys):
    ckpt, out = run2d
    before, mtime = out.read_bytes(), out.stat().st_mtime_ns
    args = ["--checkpoint", ckpt, "--x", "-1:1:3", "--y", "-0.5:0.5:3", "--max-samples", 16, "--threads", 1, "--out", out]
    assert fasland(*args) == 0
    assert out.read_bytes() == before and out.stat().st_mtime_ns == mtime
    assert fasland(*args, "--seed", 1) == 2
    assert "another set of directions" in capsys.readouterr().err
    assert out.read_bytes() == before


def test_cli_reuses_a_direction_file_on_another_grid(run2d, tmp_path):
    ckpt, out = run2d
    other = tmp_path / "fine.h5"
    assert fasland("--checkpoint", ckpt, "--x", "0:1:2", "--y", "0:0.5:2", "--dir-file", out.with_name("s.dirs.h5"),
                   "--max-samples", 16, "--threads", 1, "--out", other) == 0
    a, b = read_store(out), read_store(other)
    for k in ("train_loss", "test_auc", "loss_O"):   # x, y = 0, 0.5 are indices 1, 2 of the first grid
        np.testing.assert_allclose(b.arrays[k], a.arrays[k][1:, 1:], rtol=1e-5, atol=1e-6)
    assert not (tmp_path / "fine.dirs.h5").exists()


def test_cli_interpolation_reproduces_both_checkpoints(tmp_path):
    a, b = fasnet_checkpoint(tmp_path / "a.pt", 0), fasnet_checkpoint(tmp_path / "b.pt", 1)
    out = tmp_path / "interp.h5"
    assert fasland("--checkpoint", a, "--model2", b, "--x", "0:1:2", "--max-samples", 16,   # states by default
                   "--threads", 1, "--plot", "--out", out) == 0
    assert out.with_suffix(".png").stat().st_size > 1000
    s = read_store(out)
    for i, path in ((0, a), (1, b)):
        for k, v in probe_of(path).items():
            assert s.arrays[k][i] == pytest.approx(v, rel=1e-4, abs=1e-5), (k, i)


def test_cli_pca_plane_stores_the_projected_trajectory(tmp_path):
    from training.checkpoint import load_model, save_checkpoint

    final = fasnet_checkpoint(tmp_path / "run" / "checkpoint.pt", 0, epoch=3)
    model, _ = load_model(final)
    for e in range(3):
        m, _ = load_model(final)
        with torch.no_grad():
            for i, p in enumerate(m.parameters()):
                p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(100 * e + i)) * 0.01 * (3 - e))
        save_checkpoint(tmp_path / "run" / "checkpoints" / f"epoch_{e:03d}.pt", m, ARCH, CONFIG, e, {})
    out = tmp_path / "pca.h5"
    assert fasland("--checkpoint", final, "--pca", tmp_path / "run", "--x", "-1:1:2", "--y", "-1:1:2", "--max-samples", 16,
                   "--threads", 1, "--plot", "--out", out) == 0
    assert out.with_suffix(".png").stat().st_size > 1000
    with h5py.File(out, "r") as f:
        assert f["proj_xcoord"].shape == (3,) and f["proj_ycoord"].shape == (3,)
        assert f["proj_epochs"][()].tolist() == [0, 1, 2]
        ratio = f["explained_variance_ratio_"][()]
        assert ratio.shape == (2,) and 0 < ratio[1] <= ratio[0] <= 1


@pytest.mark.parametrize("bad, message", [(["--x", "1:-1:0"], "at least 1"), (["--x", "a:b:c"], "not a number"),
                                          (["--x", "-1:1:3", "--y", "0:1:-2"], "--y"),
                                          (["--x", "-1:1:3", "--model3", "m.pt"], "add --y"),
                                          (["--x", "-1:1:3", "--max-samples", "0"], "--max-samples")])
def test_cli_bad_input_is_one_sentence(tmp_path, capsys, bad, message):
    assert fasland("--checkpoint", tmp_path / "none.pt", *bad, "--out", tmp_path / "s.h5") == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and err.count("\n") == 1
    assert not (tmp_path / "s.h5").exists()


def test_cli_two_ranks_equal_one(run2d, tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    ckpt, out = run2d
    mpiexec = Path(sys.executable).with_name("mpiexec")
    fasland_bin = Path(sys.executable).with_name("fasland")
    r = subprocess.run([str(mpiexec), "-n", "2", str(fasland_bin), "surface", "--checkpoint", str(ckpt), "--x", "-1:1:3",
                        "--y", "-0.5:0.5:3", "--max-samples", "16", "--out", str(tmp_path / "m.h5")],
                       capture_output=True, text=True, timeout=300, env=os.environ)
    assert r.returncode == 0, r.stderr[-2000:]
    a, b = read_store(out), read_store(tmp_path / "m.h5")
    assert b.done.all() and set(a.arrays) == set(b.arrays)
    for k in a.arrays:
        np.testing.assert_allclose(b.arrays[k], a.arrays[k], rtol=1e-5, atol=1e-6, err_msg=k)
