"""Directions: filter normalization, ignore-biasbn, interpolation, PCA of a trajectory, the reference file layout."""
import h5py
import numpy as np
import pytest
import torch
from torch import nn

from landscape.directions import (Directions, cosine, interpolation_direction, load_directions, model_tensors,
                                  orthogonalize, pca_directions, random_direction, save_directions,
                                  trajectory_checkpoints)
from training.checkpoint import save_checkpoint
from training.errors import FaslandError


def tiny_net(seed=0) -> nn.Module:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 6, 3, bias=False),
                        nn.BatchNorm2d(6), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 1))
    with torch.no_grad():   # BN statistics away from their defaults, so 'states' directions see real values
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1), m.running_var.uniform_(0.5, 2), m.weight.uniform_(0.5, 1.5)
    return net


def test_filter_normalized_direction_has_each_filters_norm():
    net = tiny_net()
    d = random_direction(net, seed=3, norm="filter", ignore="biasbn")
    params = list(net.parameters())
    assert len(d) == len(params)
    checked = 0
    for di, w in zip(d, params):
        if w.dim() > 1:
            for f in range(w.shape[0]):
                assert di[f].norm().item() == pytest.approx(w[f].norm().item(), rel=1e-5)
                checked += 1
    assert checked == 4 + 6 + 1


def test_ignore_biasbn_zeroes_exactly_the_one_dimensional_tensors():
    net = tiny_net()
    d = random_direction(net, seed=1, norm="filter", ignore="biasbn")
    for di, w in zip(d, net.parameters()):
        if w.dim() <= 1:
            assert torch.count_nonzero(di) == 0
        else:
            assert torch.count_nonzero(di) == di.numel()
    kept = random_direction(net, seed=1, norm="filter", ignore="none")
    for di, w in zip(kept, net.parameters()):
        if w.dim() <= 1:
            assert torch.equal(di, w.detach())   # the reference keeps 1-D entries as θ itself


def test_layer_and_weight_norms_against_the_raw_gaussian():
    net = tiny_net()
    raw = [torch.randn(tuple(w.shape), generator=g) for g in [torch.Generator().manual_seed(5)] for w in net.parameters()]
    layer = random_direction(net, seed=5, norm="layer")
    weight = random_direction(net, seed=5, norm="weight")
    for r, dl, dw, w in zip(raw, layer, weight, net.parameters()):
        if w.dim() > 1:
            assert dl.norm().item() == pytest.approx(w.norm().item(), rel=1e-5)
            assert torch.allclose(dl, r * (w.norm() / r.norm()), rtol=1e-5, atol=0)
            assert torch.allclose(dw, r * w.detach(), rtol=1e-6, atol=0)


def test_seeded_and_shared_generator():
    net = tiny_net()
    a, b = random_direction(net, seed=7), random_direction(net, seed=7)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a[0], random_direction(net, seed=8)[0])
    g = torch.Generator().manual_seed(7)
    x, y = random_direction(net, generator=g), random_direction(net, generator=g)
    assert all(torch.equal(u, v) for u, v in zip(x, a))     # x of a 2-D plane = the 1-D direction of the seed
    assert not torch.equal(x[0], y[0])


def test_states_directions_cover_the_state_dict():
    net = tiny_net()
    d = random_direction(net, seed=0, dir_type="states", ignore="none")
    state = net.state_dict()
    assert len(d) == len(state)
    for di, (name, t) in zip(d, state.items()):
        if not t.is_floating_point():           # num_batches_tracked
            assert torch.count_nonzero(di) == 0
        elif t.dim() <= 1:
            assert torch.equal(di, t)           # running_mean/var kept as θ


def test_interpolation_reaches_the_other_model():
    a, b = tiny_net(0), tiny_net(1)
    for dir_type in ("weights", "states"):
        d = interpolation_direction(a, b, dir_type)
        for ta, tb, di in zip(model_tensors(a, dir_type), model_tensors(b, dir_type), d):
            if ta.is_floating_point():
                assert torch.allclose(ta + di, tb, atol=1e-6)


def test_orthogonalize():
    net = tiny_net()
    g = torch.Generator().manual_seed(0)
    x, y = random_direction(net, generator=g), random_direction(net, generator=g)
    y2 = orthogonalize(x, y)
    assert abs(cosine(x, y2)) < 1e-6
    norm = lambda d: float(torch.cat([t.reshape(-1) for t in d]).norm())
    assert norm(y2) == pytest.approx(norm(y), rel=1e-5)


def test_reference_layout_round_trip(tmp_path):
    net = tiny_net()
    g = torch.Generator().manual_seed(0)
    dirs = Directions(random_direction(net, generator=g), random_direction(net, generator=g), "weights", {"seed": 0})
    path = tmp_path / "dirs.h5"
    save_directions(path, dirs)
    with h5py.File(path, "r") as f:   # read as the reference's h5_util.read_list does
        for group, d in (("xdirection", dirs.x), ("ydirection", dirs.y)):
            assert len(f[group]) == len(list(net.parameters()))
            for i, t in enumerate(d):
                np.testing.assert_array_equal(f[group][str(i)][()], t.numpy())
    back = load_directions(path, net)
    assert back.recipe == {"seed": 0} and back.dir_type == "weights"
    assert all(torch.equal(u, v) for u, v in zip(back.y, dirs.y))
    # a reference-made file has no attributes at all; it loads with the dir type given
    with h5py.File(tmp_path / "ref.h5", "w") as f:
        for i, t in enumerate(dirs.x):
            f.create_dataset(f"xdirection/{i}", data=t.numpy())
    assert load_directions(tmp_path / "ref.h5", net, "weights").y is None


def test_direction_files_that_do_not_fit_are_refused(tmp_path):
    net = tiny_net()
    path = tmp_path / "dirs.h5"
    save_directions(path, Directions(random_direction(net), None, "weights"))
    other = nn.Sequential(nn.Conv2d(3, 5, 3), nn.Linear(5, 1))
    with pytest.raises(FaslandError, match="tensors"):
        load_directions(path, other)
    with pytest.raises(FaslandError, match="--dir-type weights"):
        load_directions(path, net, "states")
    (tmp_path / "junk.h5").write_text("not hdf5")
    with pytest.raises(FaslandError, match="not a readable HDF5"):
        load_directions(tmp_path / "junk.h5", net)
    with pytest.raises(FaslandError, match="not found"):
        load_directions(tmp_path / "missing.h5", net)


def trajectory(tmp_path, net, coeffs, noise=1e-4):
    """Checkpoints θ_e = θ + α_e u + β_e v (+ small noise); returns their paths and the unit u, v."""
    g = torch.Generator().manual_seed(11)
    params = [p.detach() for p in net.parameters()]
    u = [torch.randn(tuple(p.shape), generator=g) * (p.dim() > 1) for p in params]
    v = [torch.randn(tuple(p.shape), generator=g) * (p.dim() > 1) for p in params]
    v = orthogonalize(u, v)
    unit = lambda d: [t / torch.cat([s.reshape(-1) for s in d]).norm() for t in d]
    u, v = unit(u), unit(v)
    paths = []
    for e, (a, b) in enumerate(coeffs):
        m = tiny_net()
        with torch.no_grad():
            for p, p0, du, dv in zip(m.parameters(), params, u, v):
                p.copy_(p0 + a * du + b * dv + noise * torch.randn(tuple(p.shape), generator=g))
        path = tmp_path / "checkpoints" / f"epoch_{e:03d}.pt"
        save_checkpoint(path, m, {"name": "tiny"}, {}, e, {})
        paths.append(path)
    return paths, u, v


def test_pca_of_a_trajectory_finds_its_plane(tmp_path):
    net = tiny_net()
    # uncorrelated coefficients, var(α) ≫ var(β): the principal axes are u, then v
    coeffs = [(-3.0, 1.0), (-2.0, -1.0), (-1.0, 0.0), (0.0, 0.0), (1.0, 0.0), (2.0, -1.0), (3.0, 1.0)]
    paths, u, v = trajectory(tmp_path, net, coeffs)
    assert trajectory_checkpoints(tmp_path) == paths
    dirs = pca_directions(net, tmp_path, "weights", "biasbn")     # the run directory
    assert abs(cosine(dirs.x, u)) > 0.9999 and abs(cosine(dirs.y, v)) > 0.9999
    for d in (dirs.x, dirs.y):
        assert all(torch.count_nonzero(t) == 0 for t, p in zip(d, net.parameters()) if p.dim() <= 1)
    # independent: scikit-learn's exact PCA, in float64, of the matrix of θ_e − θ
    from sklearn.decomposition import PCA
    states = [torch.load(f, weights_only=True)["model"] for f in paths]
    rows = np.stack([torch.cat([(sd[n] - p.detach()).reshape(-1) * (p.dim() > 1) for n, p in net.named_parameters()]).double().numpy()
                     for sd in states])
    ref = PCA(n_components=2, svd_solver="full").fit(rows)
    for name in ("explained_variance_ratio_", "explained_variance_", "singular_values_"):
        np.testing.assert_allclose(dirs.extra[name], getattr(ref, name), rtol=1e-5)
    ours = np.stack([torch.cat([t.reshape(-1) for t in d]).double().numpy() for d in (dirs.x, dirs.y)])
    np.testing.assert_allclose(ours, ref.components_, atol=1e-5)        # same vectors, same signs
    px = torch.cat([t.reshape(-1) for t in dirs.x]).double().numpy()
    py = torch.cat([t.reshape(-1) for t in dirs.y]).double().numpy()
    np.testing.assert_allclose(dirs.extra["proj_xcoord"], rows @ px / np.linalg.norm(px), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(dirs.extra["proj_ycoord"], rows @ py / np.linalg.norm(py), rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(dirs.extra["proj_epochs"], np.arange(len(coeffs)))
    # the projection of the path recovers the coefficients up to the sign of each component
    sx = np.sign(dirs.extra["proj_xcoord"][0]) * np.sign(coeffs[0][0])
    np.testing.assert_allclose(sx * dirs.extra["proj_xcoord"], [a for a, _ in coeffs], atol=2e-3)


def test_pca_needs_a_trajectory(tmp_path):
    with pytest.raises(FaslandError, match="at least 3 checkpoints"):
        trajectory_checkpoints(tmp_path, at_least=3)
    net = tiny_net()
    paths, _, _ = trajectory(tmp_path, net, [(1.0, 0.0), (2.0, 0.0), (3.0, 0.0)], noise=0.0)   # a straight line
    with pytest.raises(FaslandError, match="fewer than 2 independent directions"):
        pca_directions(net, paths)
