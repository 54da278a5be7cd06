"""The surface engine on a tiny conv net and a Probe over random tensors, checked against independent
evaluations of freshly built models; then `fasland surface` end to end on a SynthFAS checkpoint."""
import copy

import h5py
import numpy as np
import pytest
import torch
from torch import nn

from landscape.directions import Directions, interpolation_direction, random_direction
from landscape.store import grid_view, read_store
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
    origin = {k: grid_view(v, 3, 3)[1, 1] for k, v in s.arrays.items()}
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
            assert grid_view(s.arrays[k], 4, 3)[iy, ix] == pytest.approx(v, rel=1e-4, abs=1e-5), (k, ix, iy)


def test_points_are_written_in_place():
    net = tiny_net()
    plane = Plane(net, plane_dirs(net))
    ptrs = [p.data_ptr() for p in net.parameters()]
    plane.move_to(0.3, -0.2)
    assert [p.data_ptr() for p in net.parameters()] == ptrs
    assert not torch.equal(next(net.parameters()), next(tiny_net().parameters()))
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
    amp = compute_surface(copy.deepcopy(net), probe, dirs, [-0.5, 0.5], progress=False, autocast=True)
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
