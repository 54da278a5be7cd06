"""Issue 18's curvature against independent computations, on the small float64 network with BatchNorm in
eval mode of test_hessian (dense Hessian from torch.autograd.functional.hessian + numpy): the smallest
eigenvalues, per-block sharpness, Hutch++, sampling uncertainty, Hessian eigenvector directions; the
convexity map on a loss whose curvature is known in closed form at every point; BatchNorm recomputed at
moved weights against torch.optim.swa_utils.update_bn; bf16 autocast against float32."""
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from analysis import hessian as hs
from landscape.directions import Directions, load_directions, save_directions
from landscape.surface import AUTOCAST_TOLERANCE, compute_surface, evaluate, recompute_batchnorm
from test_hessian import Tiny, bce, rel, tiny_setup, union_loss
from training.errors import FaslandError


@pytest.fixture(scope="module")
def tiny():
    model, data = tiny_setup()
    loss, theta = union_loss(model, data)
    dense = torch.autograd.functional.hessian(loss, theta).numpy()
    return model, data, dense, np.linalg.eigvalsh(dense)


def offsets(model) -> dict:
    """{parameter name: slice of the flat vector}."""
    out, i = {}, 0
    for n, p in model.named_parameters():
        out[n] = slice(i, i + p.numel())
        i += p.numel()
    return out


# ---- eigenvalues and their health -------------------------------------------------------------------

def test_smallest_eigenvalues_equal_the_dense_spectrum_with_their_health(tiny):
    model, data, _, eig = tiny
    assert eig[0] < 0     # the tiny net's Hessian is indefinite: there is a most negative eigenvalue to find
    got = hs.hessian_eigenvalues(model, bce, data, top_k=3, tol=1e-8, which="smallest", seed=2)
    assert list(got) == sorted(got)
    assert rel(got, eig[:3]) < 1e-4
    assert all(abs(g - e) <= 1e-4 * abs(e) for g, e in zip(got, eig[:3]))
    for h, e in zip(got.health(), eig[:3]):
        assert h["converged"] and h["products"] > 3 and abs(h["value"] - e) <= max(h["error"], 1e-9 * abs(e))
    # the largest with the same health fields, the error bound bounding the true error
    top = hs.hessian_eigenvalues(model, bce, data, top_k=2, tol=1e-6)
    assert all(top.converged) and all(abs(v - e) <= max(err, 1e-12) for v, e, err in zip(top, eig[::-1], top.error))
    # stopped before converging: it says so, and the error bound is larger than asked
    early = hs.hessian_eigenvalues(model, bce, data, top_k=1, tol=1e-10, which="smallest", max_iter=4)
    assert early.converged == [False] and early.products == [4] and early.error[0] > 1e-10 * abs(early[0])


def test_power_iteration_reports_its_health(tiny):
    model, data, _, eig = tiny
    e = hs.hessian_eigenvalues(model, bce, data, top_k=1, tol=1e-10, method="power", max_iter=3)
    assert e.converged == [False] and e.products == [3] and e.error[0] > 0
    with pytest.raises(FaslandError, match="lanczos"):
        hs.hessian_eigenvalues(model, bce, data, which="smallest", method="power")


def test_undetermined_values_are_named():
    assert hs.with_error(-3179.0, 5000.0).startswith("undetermined")
    assert hs.with_error(12.5, 0.3) == "12.5 ± 0.3"
    assert not hs.determined(1.0, float("nan"))


# ---- per-block sharpness ----------------------------------------------------------------------------

def test_block_sharpness_equals_the_dense_diagonal_blocks(tiny):
    model, data, dense, _ = tiny
    where = offsets(model)
    got = hs.block_sharpness(model, bce, data, tol=1e-8, trace_samples=3 * 110, trace_method="hutch++", seed=1)
    assert list(got) == ["conv", "bn", "fc1", "fc2"]      # the top-level children with parameters
    for block, r in got.items():
        idx = np.concatenate([np.arange(s.start, s.stop) for n, s in where.items() if n.split(".")[0] == block])
        D = dense[np.ix_(idx, idx)]
        assert r["parameters"] == len(idx)
        assert abs(r["lambda_max"] - np.linalg.eigvalsh(D)[-1]) <= 1e-6 * abs(np.linalg.eigvalsh(D)).max()
        # 3 × 110 products: the Hutch++ sketch spans each block (≤ 104 parameters), so the trace is exact
        assert abs(r["trace"] - np.trace(D)) <= 1e-7 * np.abs(D).sum() and r["trace_stderr"] < 1e-7 * np.abs(D).sum()
        assert r["health"]["converged"]
    # trace_samples 0: the same λ_max per block, no trace and no trace products
    lean = hs.block_sharpness(model, bce, data, tol=1e-8, trace_samples=0, seed=1)
    assert {b: r["lambda_max"] for b, r in lean.items()} == {b: r["lambda_max"] for b, r in got.items()}
    assert all(r["trace"] is None and r["trace_stderr"] is None and r["health"]["trace_products"] == 0 for r in lean.values())
    custom = hs.block_sharpness(model, bce, data, blocks={"heads": ["fc1.weight", "fc2.weight"]}, tol=1e-8, trace_method="exact")
    idx = np.concatenate([np.arange(where[n].start, where[n].stop) for n in ("fc1.weight", "fc2.weight")])
    assert abs(custom["heads"]["trace"] - np.trace(dense[np.ix_(idx, idx)])) < 1e-10 * np.abs(dense).sum()
    with pytest.raises(FaslandError, match="block 'nope'"):
        hs.block_sharpness(model, bce, data, blocks=["nope"])


@pytest.mark.parametrize("hvp", ["double_backward", "forward_over_reverse"])
def test_block_operator_is_the_dense_block(tiny, hvp):
    model, data, dense, _ = tiny
    where = offsets(model)
    H = hs.Hessian(model, bce, data, hvp, params=["fc2.weight", "conv.bias"])
    idx = np.concatenate([np.arange(where[n].start, where[n].stop) for n in ("conv.bias", "fc2.weight")])  # model order
    assert rel(H.dense().numpy(), dense[np.ix_(idx, idx)]) < 1e-10


# ---- Hutch++ ------------------------------------------------------------------------------------------

def test_hutchpp_is_unbiased_honest_and_below_hutchinson_at_equal_products(tiny):
    model, data, dense, _ = tiny
    one_batch = [(torch.cat([x for x, _ in data]), torch.cat([y for _, y in data]))]   # the same loss, cheaper products
    H = hs.Hessian(model, bce, one_batch, keep_graph=True)
    exact = np.trace(dense)
    products, seeds = 45, 24
    pp = [hs.hutchpp(H, products, tol=0.0, seed=s) for s in range(seeds)]
    hutch = [hs.trace_estimate(H, products, tol=0.0, seed=s) for s in range(seeds)]
    assert all(t.products == products for t in pp + hutch)
    means = np.array([t.mean for t in pp])
    assert abs(means.mean() - exact) < 4 * means.std(ddof=1) / math.sqrt(seeds)
    assert means.std(ddof=1) < 0.9 * np.std([t.mean for t in hutch], ddof=1)
    # the reported standard error is the spread over seeds (given Q the sketched part has no variance)
    reported = math.sqrt(np.mean([t.stderr ** 2 for t in pp]))
    assert 0.6 < reported / means.std(ddof=1) < 1.6
    # the low-rank part is tr(QᵀHQ) of the seeded sketch, recomputed here with numpy
    g = torch.Generator().manual_seed(0)
    S = np.stack([H.random(g)[:H.dim].numpy() for _ in range(products // 3)], 1)
    Q, _ = np.linalg.qr(dense @ S)
    assert abs(pp[0].low_rank - np.trace(Q.T @ dense @ Q)) < 1e-8 * np.abs(dense).sum()


def test_hutchpp_refuses_a_tiny_budget_and_hutchinson_stays_the_default(tiny):
    model, data, _, _ = tiny
    assert hs.hessian_trace(model, bce, data, n_samples=12, tol=0.0).method == "hutchinson"   # see hs.TRACE_METHOD
    with pytest.raises(FaslandError, match="at least 4"):
        hs.hessian_trace(model, bce, data, n_samples=3, method="hutch++")


# ---- sampling uncertainty -----------------------------------------------------------------------------

def test_sampling_uncertainty_on_disjoint_subsets_and_growing_counts():
    model, _ = tiny_setup()
    g = torch.Generator().manual_seed(7)
    data = [(torch.randn(n, 3, 6, 6, generator=g, dtype=torch.float64), (torch.rand(n, generator=g) > 0.5).double()) for n in (10, 6)]
    r = hs.sampling_uncertainty(model, bce, data, n_subsets=4, top_k=2, with_trace=True, tol=1e-8, trace_method="exact",
                                seed=3, growth=False)
    x, y = torch.cat([a for a, _ in data]), torch.cat([b for _, b in data])
    order = torch.randperm(16, generator=torch.Generator().manual_seed(3))
    assert r["samples"] == [4, 4, 4, 4]
    for b in range(4):   # each subset's values are its own dense Hessian's
        idx = order[b::4]
        loss, theta = union_loss(model, [(x[idx], y[idx])])
        D = torch.autograd.functional.hessian(loss, theta).numpy()
        e = np.linalg.eigvalsh(D)[::-1]
        assert abs(r["eigenvalues"][0]["values"][b] - e[0]) < 1e-6 * e[0]
        assert abs(r["eigenvalues"][1]["values"][b] - e[1]) < 1e-6 * abs(e[0])
        assert abs(r["trace"]["values"][b] - np.trace(D)) < 1e-9 * np.abs(D).sum()
    lam = np.array(r["lambda_max"]["values"])
    assert abs(r["lambda_max"]["std"] - lam.std(ddof=1)) < 1e-12
    assert np.allclose(r["lambda_max"]["interval"], np.percentile(lam, [2.5, 97.5])) and r["lambda_max"]["n"] == 4
    # equal subsets: the full sample's trace is the subsets' mean
    full = hs.hessian_trace(model, bce, data, method="exact").mean
    assert abs(r["trace"]["mean"] - full) < 1e-9 * abs(full)
    # growing nested samples, the last one the whole probe
    r = hs.sampling_uncertainty(model, bce, data, n_subsets=2, tol=1e-8, seed=3)
    assert [s["samples"] for s in r["growth"]] == [1, 2, 4, 8, 16] and "trace" not in r
    assert abs(r["growth"][-1]["lambda_max"] - hs.hessian_eigenvalues(model, bce, data, tol=1e-8)[0]) < 1e-6 * r["growth"][-1]["lambda_max"]
    with pytest.raises(FaslandError, match="--sample-batches 17"):
        hs.sampling_uncertainty(model, bce, data, n_subsets=17)


# ---- Hessian eigenvector directions -------------------------------------------------------------------

def test_hessian_directions_are_eigenvectors_and_normalize_like_the_others(tiny, tmp_path):
    model, data, dense, eig = tiny
    raw = hs.hessian_directions(model, bce, data, norm="none", ignore="none", tol=1e-3, seed=0)
    for d, lam in zip((raw.x, raw.y), raw.attrs["eigenvalues"]):
        v = torch.cat([t.reshape(-1) for t in d]).double().numpy()
        assert abs(np.linalg.norm(v) - 1) < 1e-6
        assert np.linalg.norm(dense @ v - lam * v) <= 1e-3 * np.linalg.norm(lam * v)
    assert np.allclose(raw.attrs["eigenvalues"], eig[::-1][:2], rtol=1e-5)
    assert raw.dir_type == "weights" and raw.recipe["kind"] == "hessian"
    # filter-normalized as a random direction is: each filter's norm is θ's, 1-D tensors zeroed
    filt = hs.hessian_directions(model, bce, data, seed=0)
    for d, w in zip(filt.x, model.parameters()):
        if w.dim() <= 1:
            assert not d.any()
        else:
            assert torch.allclose(d.flatten(1).norm(dim=1), w.detach().float().flatten(1).norm(dim=1), rtol=1e-5)
    # the same direction-file layout, the eigenvalues as attributes
    save_directions(tmp_path / "h.dirs.h5", filt)
    back = load_directions(tmp_path / "h.dirs.h5", model, "weights")
    assert all(torch.equal(a, b) for a, b in zip(back.x, filt.x)) and np.allclose(back.attrs["eigenvalues"], filt.attrs["eigenvalues"])


# ---- the convexity map --------------------------------------------------------------------------------

class Quartic(nn.Module):
    """Every sample's logit is f(θ) = Σ_i (a_i θ_i²/2 + c_i θ_i⁴/12), so with the loss z.mean() the Hessian
    at θ is diag(a_i + c_i θ_i²): known in closed form at every point."""

    def __init__(self, a, c, theta):
        super().__init__()
        self.theta = nn.Parameter(torch.tensor(theta, dtype=torch.float64))
        self.register_buffer("a", torch.tensor(a, dtype=torch.float64))
        self.register_buffer("c", torch.tensor(c, dtype=torch.float64))

    def forward(self, x):
        t = self.theta
        return (0.5 * self.a * t ** 2 + self.c * t ** 4 / 12).sum().expand(len(x))


def test_convexity_map_equals_the_closed_form_curvature(tmp_path):
    a, c, theta = [2.0, -1.0, 0.5, 0.25], [3.0, 6.0, 0.0, 1.0], [0.1, 0.0, 0.3, -0.2]
    model = Quartic(a, c, theta)
    data = [(torch.zeros(3, 1), torch.zeros(3))]
    mean = lambda z, y: z.mean()  # noqa: E731
    e1, e2 = torch.tensor([1.0, 0, 0, 0]), torch.tensor([0, 1.0, 0, 0])
    dirs = Directions([e1], [e2], "weights", {"kind": "unit"})
    xs, ys = np.linspace(-1, 1, 5), np.linspace(-0.5, 1, 4)
    calls = []

    def measure(m):
        calls.append(1)
        return hs.curvature(m, mean, data, tol=1e-12, max_iter=10)

    probe = lambda m: {"train_loss": m(torch.zeros(1))[0].item()}  # noqa: E731
    spec = {"curvature": {"tol": 1e-12, "max_iter": 10}}
    store = compute_surface(model, probe, dirs, xs, ys, tmp_path / "s.h5", progress=False, channels_last=False,
                            measure=measure, measure_spec=spec)
    for iy, b in enumerate(ys):
        for ix, x in enumerate(xs):
            t = np.array(theta) + x * np.array([1, 0, 0, 0]) + b * np.array([0, 1, 0, 0])
            curv = np.array(a) + np.array(c) * t ** 2
            assert abs(store.arrays["lambda_max"][ix, iy] - curv.max()) < 1e-12 * abs(curv).max()
            assert abs(store.arrays["lambda_min"][ix, iy] - curv.min()) < 1e-12 * abs(curv).max()
            assert abs(store.arrays["convexity_ratio"][ix, iy] - abs(curv.min() / curv.max())) < 1e-10
    assert store.provenance["evaluation"]["measure"] == spec
    assert torch.equal(model.theta.detach(), torch.tensor(theta, dtype=torch.float64))   # θ restored
    # resumable like every other array: a rerun computes nothing; another curvature setting is refused
    n = len(calls)
    again = compute_surface(model, probe, dirs, xs, ys, tmp_path / "s.h5", progress=False, channels_last=False,
                            measure=measure, measure_spec=spec)
    assert len(calls) == n and np.array_equal(again.arrays["lambda_min"], store.arrays["lambda_min"])
    with pytest.raises(FaslandError, match="evaluation"):
        compute_surface(model, probe, dirs, xs, ys, tmp_path / "s.h5", progress=False, channels_last=False)


def test_convexity_map_exports_to_vtk_html_and_png(tmp_path):
    from landscape.exports.figures import export_png
    from landscape.exports.html_page import export_html
    from landscape.exports.surface_file import read_surface
    from landscape.exports.vtk_files import export_vtk

    model = Quartic([2.0, -1.0], [3.0, 6.0], [0.1, 0.2])
    data = [(torch.zeros(2, 1), torch.zeros(2))]
    dirs = Directions([torch.tensor([1.0, 0])], [torch.tensor([0, 1.0])], "weights", {"kind": "unit"})
    path = tmp_path / "c.h5"
    compute_surface(model, lambda m: {"train_loss": m(torch.zeros(1))[0].item()}, dirs, np.linspace(-1, 1, 4), np.linspace(-1, 1, 3),
                    path, progress=False, channels_last=False, measure=hs.curvature_measure(lambda z, y: z.mean(), data, max_iter=4),
                    measure_spec={"curvature": {}})
    s = read_surface(path)
    assert {"lambda_max", "lambda_min", "convexity_ratio"} <= set(s.arrays)
    files = export_vtk(s, tmp_path / "c", "convexity_ratio")
    text = open(files["surface"] if isinstance(files, dict) and "surface" in files else next(iter(files.values()))).read()
    assert "lambda_min" in text and "convexity_ratio" in text
    html = export_html([path], tmp_path / "c.html", "lambda_max")
    assert "lambda_min" in open(html).read()
    assert export_png([path], tmp_path / "c.png", "convexity_ratio").stat().st_size > 1000


# ---- BatchNorm at moved weights, precision ------------------------------------------------------------

def small_probe(model_dtype=torch.float32):
    from training.probe import Probe

    g = torch.Generator().manual_seed(5)
    domains = {d: (torch.randn(10, 3, 6, 6, generator=g, dtype=model_dtype) * 1.5 + 0.3, torch.tensor([0.0, 1.0] * 5)) for d in "ABT"}
    return Probe(domains, ("A", "B"), "T", batch_size=4)


def test_bn_recompute_equals_update_bn_at_every_point():
    from torch.optim.swa_utils import update_bn

    model, _ = tiny_setup()
    model = model.float()
    probe = small_probe()
    g = torch.Generator().manual_seed(9)
    d = [torch.randn(tuple(p.shape), generator=g) * 0.3 for p in model.parameters()]
    dirs = Directions(d, None, "weights", {"kind": "test"})
    xs = np.linspace(-1, 1, 3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    inputs = [x for x, _ in probe.batches("train")]
    got = compute_surface(model, probe, dirs, xs, progress=False, bn="recompute", bn_inputs=inputs)
    theta = compute_surface(model, probe, dirs, xs, progress=False)
    assert got.provenance["evaluation"]["bn"] == "recompute" and theta.provenance["evaluation"]["bn"] == "theta"
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())     # θ and its statistics restored
    for ix, a in enumerate(xs):
        other, _ = tiny_setup()
        other = other.float()
        other.load_state_dict(before)
        with torch.no_grad():
            for p, dp in zip(other.parameters(), d):
                p.add_(dp, alpha=float(a))
        update_bn(inputs, other)
        expected = probe(other)
        for k in ("train_loss", "test_loss", "loss_A"):
            assert abs(got.arrays[k][ix] - expected[k]) < 1e-6 * max(1.0, abs(expected[k])), (a, k)
    assert np.max(np.abs(got.arrays["train_loss"] - theta.arrays["train_loss"])) > 1e-4   # it changes something


def test_recompute_batchnorm_is_the_average_of_batch_statistics():
    bn = nn.BatchNorm1d(2, momentum=0.3)
    bn.running_mean.fill_(5.0)
    batches = [torch.randn(6, 2), torch.randn(3, 2) + 1]
    recompute_batchnorm(bn.eval(), batches)
    assert torch.allclose(bn.running_mean, torch.stack([b.mean(0) for b in batches]).mean(0), atol=1e-6)
    assert torch.allclose(bn.running_var, torch.stack([b.var(0, unbiased=True) for b in batches]).mean(0), atol=1e-6)
    assert bn.momentum == 0.3 and not bn.training


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_low_precision_stays_within_its_stated_tolerance_of_float32(precision):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1),
                          nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 1), nn.Flatten(0))
    model.train()
    with torch.no_grad():
        model(torch.randn(32, 3, 6, 6) * 1.5 + 0.3)
    model.eval()
    probe = small_probe()
    full, low = evaluate(probe, model), evaluate(probe, model, precision)
    tol = AUTOCAST_TOLERANCE[precision]
    for k in ("train_loss", "test_loss", "loss_A", "loss_B"):
        assert abs(low[k] - full[k]) <= tol * (abs(full[k]) + 0.01), (k, low[k], full[k])
    assert any(low[k] != full[k] for k in full)   # autocast did run in lower precision
    dirs = Directions([torch.zeros(tuple(p.shape)) for p in model.parameters()], None, "weights", {})
    s = compute_surface(model, probe, dirs, [0.0], progress=False, autocast=precision)
    assert s.provenance["evaluation"]["precision"] == precision
    assert compute_surface(model, probe, dirs, [0.0], progress=False).provenance["evaluation"]["precision"] == "float32"
    with pytest.raises(FaslandError, match="--autocast"):
        evaluate(probe, model, "fp8")


# ---- through the commands ---------------------------------------------------------------------------------

def test_hessian_command_bottom_k_per_block_sampling_and_health(tmp_path, monkeypatch, capsys):
    import json

    from fasland.cli import main
    from test_conflicts import make_run, small_probe, small_world
    from training.checkpoint import load_model

    small_world(monkeypatch)
    make_run(tmp_path / "run", epochs=(1,))
    ckpt, out = tmp_path / "run" / "checkpoint.pt", tmp_path / "hessian.json"
    argv = ["hessian", "--checkpoint", str(ckpt), "--top-k", "2", "--bottom-k", "2", "--tol", "1e-3", "--max-iter", "80",
            "--trace", "--trace-method", "hutch++", "--trace-samples", "12", "--per-block", "--sample-batches", "2", "--threads", "1", "--out", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "λ_min" in printed and "block conv" in printed and "λ_max over 2 subsets" in printed and "hutch++" in printed
    r = json.loads(out.read_text())
    model, _ = load_model(ckpt)
    data = [(x.contiguous(), y) for x, y in small_probe(None).batches("train")]
    H = hs.Hessian(model, small_probe(None).loss_fn, data)
    eig = np.linalg.eigvalsh(H.dense().double().numpy())
    # the smallest eigenvalues, λ_min and |λ_min/λ_max| against the dense Hessian (float32 model)
    assert rel(r["smallest"]["eigenvalues"], eig[:2]) < 1e-3 and r["smallest"]["lambda_min"] == r["smallest"]["eigenvalues"][0]
    assert abs(r["smallest"]["convexity_ratio"] - abs(eig[0] / eig[-1])) < 2e-3 * abs(eig[0] / eig[-1])
    # health beside every eigenvalue
    for h in r["eigenvalue_health"] + r["smallest"]["health"]:
        assert set(h) == {"value", "error", "converged", "products"} and h["products"] > 0
    assert r["trace"]["method"] == "hutch++" and r["trace"]["products"] == 12 and r["trace"]["stderr"] >= 0
    assert list(r["per_block"]) == ["conv", "bn", "fc"]
    for block, v in r["per_block"].items():
        Hb = hs.Hessian(model, small_probe(None).loss_fn, data, params=[n for n, _ in model.named_parameters() if n.startswith(block + ".")])
        lam = np.linalg.eigvalsh(Hb.dense().double().numpy())[-1]
        assert abs(v["lambda_max"] - lam) < 1e-3 * abs(lam) and v["health"]["converged"]
    s = r["sampling"]
    assert s["subsets"] == 2 and s["samples"] == [9, 9] and len(s["eigenvalues"]) == 2 and "trace" in s
    assert [g["samples"] for g in s["growth"]] == [1, 2, 4, 8, 16, 18]
    assert abs(s["growth"][-1]["lambda_max"] - eig[-1]) < 1e-3 * eig[-1]
    # a rerun computes nothing
    before = json.loads(out.read_text())["sections"]
    calls = []
    monkeypatch.setattr(hs, "block_sharpness", lambda *a, **k: calls.append(1))
    monkeypatch.setattr(hs, "sampling_uncertainty", lambda *a, **k: calls.append(1))
    assert main(argv) == 0 and calls == [] and json.loads(out.read_text())["sections"] == before


def test_undetermined_trace_is_printed_as_such():
    from analysis.commands import hessian_summary

    from analysis.results import HessianResult

    r = HessianResult.from_json({
        "command": "hessian", "version": HessianResult.VERSION, "checkpoint": "c.pt",
        "provenance": {"data": {"protocol": "ICM2O", "samples": {"I": 4}, "sources": ["I"]}},
        "eigenvalues": [3.0], "eigenvalue_health": [{"value": 3.0, "error": 5.0, "converged": False, "products": 7}],
        "trace": {"mean": -3179.0, "stderr": 4100.0, "method": "hutch++", "products": 50, "n_samples": 50}})
    text = hessian_summary(r, "h.json")
    assert "undetermined (-3179 ± 4.1e+03)" in text
    assert "undetermined (3 ± 5) (not converged after 7 products)" in text


def test_surface_command_hessian_directions_and_convexity_map(tmp_path, monkeypatch):
    import json

    import h5py

    from fasland.cli import main
    from landscape.store import read_store
    from test_conflicts import make_run, small_probe, small_world
    from training.checkpoint import load_model

    small_world(monkeypatch)
    make_run(tmp_path / "run", epochs=(1,))
    ckpt, out = tmp_path / "run" / "checkpoint.pt", tmp_path / "s.h5"
    argv = ["surface", "--checkpoint", str(ckpt), "--x", "-0.5:0.5:3", "--y", "-0.5:0.5:3", "--dir-type", "hessian",
            "--xnorm", "none", "--xignore", "none", "--curvature", "--curvature-iter", "200", "--curvature-tol", "1e-7",
            "--threads", "1", "--out", str(out)]
    assert main(argv) == 0
    model, _ = load_model(ckpt)
    probe = small_probe(None)
    data = [(x.contiguous(), y) for x, y in probe.batches("train")]
    dense = hs.Hessian(model, probe.loss_fn, data).dense().double().numpy()
    eig = np.linalg.eigvalsh((dense + dense.T) / 2)
    with h5py.File(out.with_name("s.dirs.h5"), "r") as f:   # the reference layout, eigenvalues as attributes
        assert json.loads(f.attrs["recipe"])["kind"] == "hessian" and len(f["xdirection"]) == len(list(model.parameters()))
        assert np.allclose(f.attrs["eigenvalues"], eig[::-1][:2], rtol=1e-3)
        v = np.concatenate([f["xdirection"][str(i)][()].ravel() for i in range(len(f["xdirection"]))])
    assert np.linalg.norm(dense @ v - eig[-1] * v) <= 2e-3 * abs(eig[-1]) * np.linalg.norm(v)
    s = read_store(out)
    ev = json.loads(s.provenance["evaluation"])
    assert ev == {"precision": "float32", "bn": "theta",
                  "measure": {"curvature": {"tol": 1e-7, "max_iter": 200, "seed": 0, "data": "sources"}}}
    lam_max, lam_min = s.arrays["lambda_max"], s.arrays["lambda_min"]
    assert abs(lam_max[1, 1] - eig[-1]) < 1e-4 * abs(eig[-1]) and abs(lam_min[1, 1] - eig[0]) < 1e-4 * abs(eig[-1])
    assert np.allclose(s.arrays["convexity_ratio"], np.abs(s.arrays["lambda_min"] / s.arrays["lambda_max"]))
    assert len(np.unique(np.round(s.arrays["lambda_max"], 6))) > 1     # the curvature changes over the plane

    # two MPI ranks split the points and give the same map (the directions are reused from the file)
    from test_conflicts import VENV_BIN, WRAPPER
    wrapper = tmp_path / "wrapper.py"
    wrapper.write_text(WRAPPER.format(tests=str(Path(__file__).parent)))
    out_mpi = tmp_path / "s_mpi.h5"
    i = argv.index("--dir-type")
    argv_mpi = [a if a != str(out) else str(out_mpi) for a in argv[:i] + argv[i + 2:]] + ["--dir-file", str(out.with_name("s.dirs.h5"))]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("FASLAND_MPI", None)
    proc = subprocess.run([str(VENV_BIN / "mpiexec"), "-n", "2", sys.executable, str(wrapper), *argv_mpi],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    m = read_store(out_mpi)
    assert m.done.all()
    for k in ("lambda_max", "lambda_min", "convexity_ratio", "train_loss"):
        np.testing.assert_allclose(m.arrays[k], s.arrays[k], rtol=1e-5, atol=1e-7, err_msg=k)

    # bf16 and recomputed BatchNorm are recorded; a rerun with other evaluation settings is refused
    out2 = tmp_path / "t.h5"
    assert main(["surface", "--checkpoint", str(ckpt), "--x", "-1:1:3", "--bn", "recompute", "--autocast", "bf16",
                 "--threads", "1", "--out", str(out2)]) == 0
    assert json.loads(read_store(out2).provenance["evaluation"]) == {"precision": "bf16", "bn": "recompute", "measure": None}
    assert main(["surface", "--checkpoint", str(ckpt), "--x", "-1:1:3", "--threads", "1", "--out", str(out2)]) == 2
