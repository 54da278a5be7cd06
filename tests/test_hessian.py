"""analysis.hessian against independent computations on a small float64 network with BatchNorm in eval
mode: the dense Hessian (torch.autograd.functional.hessian + numpy.linalg.eigvalsh), central finite
differences of gradients, a quadratic with a known spectrum, and one rank against two under mpiexec."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from analysis import hessian as hs

VENV_BIN = Path(sys.executable).parent


def bce(z, y):
    return F.binary_cross_entropy_with_logits(z, y)


class Tiny(nn.Module):
    """conv → BatchNorm → tanh → pool → linear → tanh → linear: 203 parameters, one logit per image."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)
        self.fc1 = nn.Linear(12, 8)
        self.fc2 = nn.Linear(8, 1)

    def forward(self, x):
        h = F.adaptive_avg_pool2d(torch.tanh(self.bn(self.conv(x))), 2).flatten(1)
        return self.fc2(torch.tanh(self.fc1(h))).squeeze(1)


def tiny_setup(seed: int = 0):
    """The net in eval mode with non-trivial BatchNorm running statistics, and three batches of unequal size."""
    torch.manual_seed(seed)
    model = Tiny().double()
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(16, 3, 6, 6, dtype=torch.float64) * 2 + 0.5)
    model.eval()
    data = [(torch.randn(n, 3, 6, 6, dtype=torch.float64), (torch.rand(n) > 0.5).double()) for n in (9, 6, 4)]
    return model, data


def union_loss(model, data):
    """The mean loss over all samples at once, as a function of the flat parameter vector (eval mode)."""
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    buffers = dict(model.named_buffers())
    x, y = torch.cat([x for x, _ in data]), torch.cat([y for _, y in data])

    def loss(flat):
        pieces = flat.split([s.numel() for s in shapes])
        return bce(functional_call(model, {**buffers, **{n: t.view(s) for n, t, s in zip(names, pieces, shapes)}}, (x,)), y)

    return loss, torch.cat([p.detach().reshape(-1) for p in model.parameters()])


@pytest.fixture(scope="module")
def tiny():
    model, data = tiny_setup()
    loss, theta = union_loss(model, data)
    dense = torch.autograd.functional.hessian(loss, theta).numpy()
    return model, data, dense, np.linalg.eigvalsh(dense)[::-1]


def rel(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return np.max(np.abs(a - b)) / np.max(np.abs(b))


@pytest.mark.parametrize("hvp, keep_graph", [("double_backward", False), ("double_backward", True), ("forward_over_reverse", None)])
def test_hvp_matches_central_differences_and_the_dense_hessian(tiny, hvp, keep_graph):
    model, data, dense, _ = tiny
    H = hs.Hessian(model, bce, data, hvp, keep_graph=keep_graph)
    assert H.keep_graph == bool(keep_graph)
    v = H.random(torch.Generator().manual_seed(3))[:H.dim]
    v /= v.norm()
    loss, theta = union_loss(model, data)

    def grad_at(t):
        th = (theta + t * v).requires_grad_(True)
        return torch.autograd.grad(loss(th), th)[0]

    eps = 1e-5
    fd = (grad_at(eps) - grad_at(-eps)) / (2 * eps)
    w = H.new()
    w[:H.dim] = v
    hv = H(w)
    assert rel(hv[:H.dim], fd) < 1e-7
    assert torch.all(hv[H.dim:] == 0)
    # and the dense Hessian on a few more vectors (every column: test_trace_exact_and_hutchinson)
    g = torch.Generator().manual_seed(4)
    for _ in range(3):
        u = H.random(g)
        assert rel(H(u)[:H.dim], dense @ u[:H.dim].numpy()) < 1e-10


def test_gradient_is_the_union_loss_gradient(tiny):
    model, data, _, _ = tiny
    loss, theta = union_loss(model, data)
    th = theta.clone().requires_grad_(True)
    expected = torch.autograd.grad(loss(th), th)[0]
    for keep in (False, True):
        assert rel(hs.Hessian(model, bce, data, keep_graph=keep).gradient()[:th.numel()], expected) < 1e-12
    assert abs(hs.Hessian(model, bce, data).loss() - loss(theta).item()) < 1e-12


@pytest.mark.parametrize("start", ["gradient", "random"])
def test_lanczos_top_k_equals_the_dense_spectrum(tiny, start):
    model, data, _, eig = tiny
    got = hs.hessian_eigenvalues(model, bce, data, top_k=4, tol=1e-6, seed=1, start=start)
    assert got == sorted(got, reverse=True)
    assert rel(got, eig[:4]) < 1e-4
    # the default tolerance keeps λ_max within it
    assert abs(hs.hessian_eigenvalues(model, bce, data)[0] - eig[0]) / eig[0] < 1e-4


@pytest.mark.parametrize("gradient", ["orthogonal", "eigenvector"])
def test_lanczos_finds_lambda_max_when_the_gradient_misses_its_eigenvector(tiny, gradient):
    """The start ĝ + r̂ keeps the top eigenvector u₁ in reach whatever the gradient is: a term ⟨c, θ⟩ added
    to the loss moves the gradient (not the Hessian) to g − (u₁ᵀg)u₁, or to ‖g‖u₂ — from ĝ alone the
    Krylov space is then {u₂}, invariant, and Lanczos would stop at λ₂."""
    model, data, dense, eig = tiny
    U = np.linalg.eigh(dense)[1]
    u1, u2 = U[:, -1], U[:, -2]
    g = hs.Hessian(model, bce, data).gradient()[:len(u1)].numpy()
    target = g - (u1 @ g) * u1 if gradient == "orthogonal" else np.linalg.norm(g) * u2
    c = torch.from_numpy(target - g)
    params = list(model.parameters())

    def loss_fn(z, y):
        return bce(z, y) + torch.cat([p.reshape(-1) for p in params]) @ c

    H = hs.Hessian(model, loss_fn, data)
    assert rel(H.gradient()[:H.dim], target) < 1e-12 and abs(target @ u1) < 1e-12 * np.linalg.norm(target)
    for seed in range(3):
        for tol in (1e-4, 1e-6):
            got = hs.hessian_eigenvalues(model, loss_fn, data, tol=tol, seed=seed)[0]
            assert abs(got - eig[0]) / eig[0] < 1e-4, (seed, tol, got, eig[:2])
    if gradient == "eigenvector":  # the safeguard is what finds λ₁: the gradient alone gives λ₂
        alpha, beta = hs.lanczos(H, H.gradient(), 100, hs._top_converged(1, 1e-4))
        assert len(alpha) == 1 and abs(alpha[0] - eig[1]) / eig[1] < 1e-10


def test_power_iteration_equals_the_dense_largest_magnitude(tiny):
    model, data, _, eig = tiny
    largest = eig[np.argmax(np.abs(eig))]
    got = hs.hessian_eigenvalues(model, bce, data, top_k=1, tol=1e-10, method="power", max_iter=2000)
    assert abs(got[0] - largest) / abs(largest) < 1e-4


class Quadratic(nn.Module):
    """Every sample's logit is ½ θᵀAθ, so with the loss z.mean() the Hessian is A exactly."""

    def __init__(self, A):
        super().__init__()
        self.theta = nn.Parameter(torch.randn(len(A), dtype=torch.float64))
        self.register_buffer("A", A)

    def forward(self, x):
        return (0.5 * self.theta @ self.A @ self.theta).expand(len(x))


def test_power_deflation_and_lanczos_on_a_known_spectrum():
    torch.manual_seed(0)
    spectrum = torch.tensor([5.0, 3.0, 2.0, 1.0, 0.5, 0.25, -0.2, -0.1] + [0.01] * 12, dtype=torch.float64)
    Q, _ = torch.linalg.qr(torch.randn(len(spectrum), len(spectrum), dtype=torch.float64))
    model = Quadratic(Q @ torch.diag(spectrum) @ Q.T)
    data = [(torch.zeros(4, 1), torch.zeros(4))]
    mean = lambda z, y: z.mean()  # noqa: E731
    for method in ("power", "lanczos"):
        got = hs.hessian_eigenvalues(model, mean, data, top_k=3, tol=1e-12, method=method, max_iter=500)
        assert rel(got, [5.0, 3.0, 2.0]) < 1e-6, method
    assert abs(hs.hessian_trace(model, mean, data, method="exact").mean - spectrum.sum().item()) < 1e-10


def test_trace_exact_and_hutchinson(tiny):
    model, data, dense, _ = tiny
    exact = hs.hessian_trace(model, bce, data, method="exact")
    assert abs(exact.mean - np.trace(dense)) < 1e-10 * np.abs(dense).sum()
    assert rel(hs.Hessian(model, bce, data, keep_graph=True).dense(), dense) < 1e-10
    t = hs.hessian_trace(model, bce, data, n_samples=200, tol=0.0, seed=5, method="hutchinson")
    # every sample is vᵀHv of the seeded Rademacher vectors, the stderr the sample's
    H = hs.Hessian(model, bce, data)
    g = torch.Generator().manual_seed(5)
    vs = [H.random(g, "rademacher")[:H.dim].numpy() for _ in range(200)]
    assert rel(t.samples, [v @ dense @ v for v in vs]) < 1e-10
    assert all(set(np.unique(v)) == {-1.0, 1.0} for v in vs[:3])
    assert abs(t.stderr - np.std(t.samples, ddof=1) / np.sqrt(200)) < 1e-12
    assert abs(t.mean - np.trace(dense)) < 4 * t.stderr
    early = hs.hessian_trace(model, bce, data, n_samples=200, tol=0.5, seed=5, method="hutchinson")
    assert 10 <= len(early.samples) < 200 and early.stderr <= 0.5 * abs(early.mean)


def test_slq_density_quadrature_moments_and_normalization(tiny):
    model, data, dense, eig = tiny
    dim = len(dense)
    d = hs.hessian_density(model, bce, data, n_iter=8, n_runs=20, seed=2, grid_size=4000)
    assert np.allclose([sum(w) for w in d.weights], 1.0, atol=1e-12)
    assert abs(np.trapezoid(d.density, d.grid) - 1) < 1e-6
    # each run's quadrature Σ τ_j θ_j^p equals vᵀHᵖv / vᵀv exactly for p < 2·n_iter
    H = hs.Hessian(model, bce, data)
    g = torch.Generator().manual_seed(2)
    runs = np.array([[np.sum(np.array(w) * np.array(n) ** p) for p in (1, 2, 3)] for n, w in zip(d.nodes, d.weights)])
    for r in range(20):
        v = H.random(g, "rademacher")[:dim].numpy()
        expected = [v @ np.linalg.matrix_power(dense, p) @ v / (v @ v) for p in (1, 2, 3)]
        assert rel(runs[r], expected) < 1e-8
    # over the runs the moments estimate the dense spectrum's (tr Hᵖ / dim)
    for p in (1, 2):
        se = runs[:, p - 1].std(ddof=1) / np.sqrt(len(runs))
        assert abs(runs[:, p - 1].mean() - np.mean(eig ** p)) < 4 * se
    # the broadened density has the quadrature's mean and its second moment plus σ²
    m1 = np.trapezoid(d.grid * d.density, d.grid)
    m2 = np.trapezoid(d.grid ** 2 * d.density, d.grid)
    assert abs(m1 - runs[:, 0].mean()) < 1e-6 * np.abs(eig).max()
    assert abs(m2 - runs[:, 1].mean() - d.sigma ** 2) < 1e-6 * eig.max() ** 2
    # a full-length run finds every eigenvalue
    full = hs.hessian_density(model, bce, data, n_iter=dim, n_runs=1, seed=0)
    nodes = np.array(full.nodes[0])
    assert max(np.min(np.abs(nodes - e)) for e in eig) < 1e-8 * np.abs(eig).max()


MPI_SCRIPT = """
import json, sys
sys.path.insert(0, {tests!r})
import torch
from test_hessian import tiny_setup, bce
from analysis import hessian as hs
from analysis.mpi_reduce import shard, world
torch.set_num_threads(1)
w = world()
model, data = tiny_setup()
mine = shard(data, w.rank, w.size)
out = {{"ranks": w.size, "rank_samples": sum(len(y) for _, y in mine),
        "eig": hs.hessian_eigenvalues(model, bce, mine, top_k=3, tol=1e-8, world=w),
        "power": hs.hessian_eigenvalues(model, bce, mine, top_k=1, tol=1e-6, method="power", world=w),
        "trace": list(hs.hessian_trace(model, bce, mine, n_samples=12, tol=0.0, world=w))[:2],
        "nodes": hs.hessian_density(model, bce, mine, n_iter=10, n_runs=2, world=w).nodes}}
if w.rank == 0:
    print(json.dumps(out))
"""


def test_two_mpi_ranks_equal_one(tmp_path):
    model, data = tiny_setup()
    one = {"eig": hs.hessian_eigenvalues(model, bce, data, top_k=3, tol=1e-8),
           "power": hs.hessian_eigenvalues(model, bce, data, top_k=1, tol=1e-6, method="power"),
           "trace": list(hs.hessian_trace(model, bce, data, n_samples=12, tol=0.0))[:2],
           "nodes": hs.hessian_density(model, bce, data, n_iter=10, n_runs=2).nodes}
    script = tmp_path / "mpi_hessian.py"
    script.write_text(MPI_SCRIPT.format(tests=str(Path(__file__).parent)))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("FASLAND_MPI", None)
    proc = subprocess.run([str(VENV_BIN / "mpiexec"), "-n", "2", sys.executable, str(script)],
                          capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    two = json.loads(proc.stdout.strip().splitlines()[-1])
    assert two["ranks"] == 2 and two["rank_samples"] < sum(len(y) for _, y in data)
    for key in ("eig", "power", "trace"):
        assert rel(two[key], one[key]) < 1e-9, key
    assert rel(np.concatenate(two["nodes"]), np.concatenate(one["nodes"])) < 1e-9


def test_shard_splits_every_batch_evenly():
    from analysis.mpi_reduce import shard

    data = [(torch.arange(7), torch.arange(7)), (torch.arange(1), 10 + torch.arange(1))]
    parts = [shard(data, r, 3) for r in range(3)]
    assert [sum(len(y) for _, y in p) for p in parts] == [2, 2, 4]
    assert sorted(int(v) for p in parts for _, y in p for v in y) == list(range(7)) + [10]


def test_bad_arguments_are_one_sentence(tiny):
    from training.errors import FaslandError

    model, data, _, _ = tiny
    with pytest.raises(FaslandError, match="top-k"):
        hs.hessian_eigenvalues(model, bce, data, top_k=0)
    with pytest.raises(FaslandError, match="lanczos or power"):
        hs.hessian_eigenvalues(model, bce, data, method="arnoldi")
    with pytest.raises(FaslandError, match="Hessian-vector product"):
        hs.Hessian(model, bce, data, hvp="finite")
    with pytest.raises(FaslandError, match="no samples"):
        hs.Hessian(model, bce, [])


def test_cli_hessian_end_to_end_and_resume(tmp_path, monkeypatch, capsys):
    from fasland.cli import main
    from test_conflicts import make_run, small_probe, small_world
    from training.checkpoint import file_hash, load_model

    small_world(monkeypatch)
    make_run(tmp_path / "run", epochs=(1,))
    ckpt, out = tmp_path / "run" / "checkpoint.pt", tmp_path / "hessian.json"
    argv = ["hessian", "--checkpoint", str(ckpt), "--top-k", "2", "--trace", "--trace-method", "hutchinson", "--trace-samples", "4", "--density",
            "--density-iter", "5", "--per-domain", "--threads", "1", "--out", str(out)]
    assert main(argv) == 0
    assert "λ_max O (target)" in capsys.readouterr().out
    r = json.loads(out.read_text())
    assert r["provenance"]["checkpoint_sha256"] == file_hash(ckpt) and r["provenance"]["data"]["protocol"] == "ICM2O"
    assert set(r["provenance"]["versions"]) >= {"torch", "numpy", "scipy", "fasland"}
    assert set(r["per_domain"]) == {"I", "C", "M", "O"} and r["per_domain"]["O"]["role"] == "target"
    assert len(r["density"]["grid"]) == len(r["density"]["density"]) and len(r["density"]["nodes"][0]) == 5
    assert abs(np.trapezoid(r["density"]["density"], r["density"]["grid"]) - 1) < 1e-6
    assert r["trace"]["n_samples"] == 4 and len(r["trace"]["samples"]) == 4
    # the same numbers as the Python API on the same probe
    model, _ = load_model(ckpt)
    probe = small_probe(None)
    api = hs.hessian_eigenvalues(model, probe.loss_fn, [(x.contiguous(), y) for x, y in probe.batches("train")], top_k=2)
    assert rel(r["eigenvalues"], api) < 1e-4
    dense = hs.Hessian(model, probe.loss_fn, probe.batches("train")).dense().double().numpy()
    assert rel(r["eigenvalues"], np.linalg.eigvalsh((dense + dense.T) / 2)[::-1][:2]) < 1e-3   # float32 model
    assert r["eigenvalues"][0] >= r["eigenvalues"][1]

    # a rerun computes nothing; a new --top-k recomputes only the eigenvalues
    calls = []
    top = hs.top_eigenvalues
    monkeypatch.setattr(hs, "top_eigenvalues", lambda *a, **k: calls.append(a[1]) or top(*a, **k))
    assert main(argv) == 0 and calls == []
    assert json.loads(out.read_text())["eigenvalues"] == r["eigenvalues"]
    argv[argv.index("--top-k") + 1] = "1"
    assert main(argv) == 0 and calls == [1]
    again = json.loads(out.read_text())
    assert again["trace"] == r["trace"] and again["per_domain"] == r["per_domain"]
    assert abs(again["eigenvalues"][0] - r["eigenvalues"][0]) < 1e-4 * r["eigenvalues"][0]
