"""ERM, SAM and GAC-FAS steps against the formulas: an independent functional re-computation with explicit
torch.autograd.grad calls (float64, 1e-10 relative on the step), and closed forms on a quadratic."""
import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from training.algorithms import hparams, make_algorithm
from training.algorithms.gacfas import gacfas_perturbations, official_domain_gradients
from training.algorithms.sam import sam_perturbation
from training.algorithms.supcon import supcon_loss
from training.errors import FaslandError

DT = torch.float64
H = {"lr": 0.1, "momentum": 0.9, "weight_decay": 1e-3, "head_lr_mult": 10.0, "logit_scale": 2.0}
METHODS = {
    "sam": ("sam", {"rho": 0.3}),
    "asam": ("sam", {"rho": 0.3, "adaptive": True}),
    "gacfas": ("gacfas", {"rho": 0.3, "eta": 0.01, "alpha": 0.05}),
    "gacfas_official": ("gacfas", {"rho": 0.3, "eta": 0.01, "alpha": 0.05, "official_accumulation": True}),
}


class TinyNet(nn.Module):
    """conv → BatchNorm → ReLU → mean pool → linear head: one logit per image."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.head = nn.Linear(4, 1)
        with torch.no_grad():
            self.bn.weight.uniform_(0.5, 1.5)
            self.bn.bias.uniform_(-0.3, 0.3)
            self.bn.running_mean.uniform_(-0.1, 0.1)

    def features(self, x):
        return F.relu(self.bn(self.conv(x))).mean((2, 3))

    def forward(self, x, return_features=False):
        z = self.features(x)
        logit = self.head(z).squeeze(1)
        return (z, logit) if return_features else logit


def tiny_net(seed=0):
    torch.manual_seed(seed)
    return TinyNet().to(DT)


def domain_batches(seed=1, sizes=(5, 4, 6), two_views=False):
    g = torch.Generator().manual_seed(seed)
    out = []
    for n in sizes:
        x = torch.randn(n, 3, 6, 6, generator=g, dtype=DT)
        y = torch.arange(n) % 2
        out.append((x, y.to(DT)) + ((x + 0.1 * torch.randn(n, 3, 6, 6, generator=g, dtype=DT),) if two_views else ()))
    return out


# ---- the formulas, computed independently ----------------------------------------------------------------

def grad(loss, params, retain=False):
    return list(torch.autograd.grad(loss, params, retain_graph=retain, allow_unused=True, materialize_grads=True))


def norm(ts):
    return torch.sqrt(sum((t * t).sum() for t in ts))


def reference_step(model, kind, minibatches, h, num_domains=3, supcon_weight=0.0):
    """(new parameters, buffers after the θ pass, per-domain gradients at θ) of one step from the formulas."""
    names = [n for n, _ in model.named_parameters()]
    theta = [p.detach().clone().requires_grad_() for p in model.parameters()]
    present = [(i, b) for i, b in enumerate(minibatches) if b is not None and len(b[0])]
    views = len(present[0][1]) - 1
    x = torch.cat([b[0] for _, b in present] + ([b[2] for _, b in present] if views == 2 else []))
    sizes = [len(b[0]) for _, b in present]

    def losses(params, buffers):
        z, logits = functional_call(model, {**dict(zip(names, params)), **buffers}, (x,), {"return_features": True})
        logits = logits.reshape(views, -1)
        out, start = [], 0
        for (_, b), n in zip(present, sizes):
            part = logits[:, start:start + n].reshape(-1)
            out.append(F.binary_cross_entropy_with_logits(h["logit_scale"] * part, b[1].to(DT).repeat(views)))
            start += n
        return out, z

    fresh = lambda: {n: b.detach().clone() for n, b in model.named_buffers()}
    bn_after_theta = fresh()
    official = h.get("official_accumulation", False)
    n = num_domains if official else len(present)
    ls, z = losses(theta, bn_after_theta)
    gs = [grad(l / n, theta, retain=True) for l in ls]
    full = [sum(t) for t in zip(*gs)]
    u = [torch.zeros_like(t) for t in theta]
    if supcon_weight:
        classes = torch.cat([2 * i + b[1].long() for i, b in present])
        z1, z2 = z.reshape(2, len(z) // 2, -1)
        u = grad(supcon_weight * naive_supcon(z1, z2, classes), theta, retain=True)

    def loss_at(params):
        return sum(losses(params, fresh())[0]) / n

    if kind == "erm":
        u = [a + b for a, b in zip(u, full)]
    elif kind == "sam":
        th = [t.detach() for t in theta]
        if h.get("adaptive"):
            denom = norm([t.abs() * g for t, g in zip(th, full)]) + 1e-12
            eps = [h["rho"] * t * t * g / denom for t, g in zip(th, full)]
        else:
            eps = [h["rho"] * g / (norm(full) + 1e-12) for g in full]
        at = [(t + e).requires_grad_() for t, e in zip(th, eps)]
        u = [a + b for a, b in zip(u, grad(loss_at(at), at))]
    else:
        present_ids = [i for i, _ in present]
        if official:   # the released bookkeeping for k = 3, written out: g_0, g_1, g_2 − g_0 and 3g_0 + 2g_1 + g_2
            g = {i: gi for i, gi in zip(present_ids, gs)}
            zero = [torch.zeros_like(t) for t in theta]
            g0, g1, g2 = (g.get(i, zero) for i in range(3))
            d = {0: g0, 1: g1, 2: [c - a for c, a in zip(g2, g0)]}
            ds = [d[i] for i in present_ids]
            m = [3 * a + 2 * b + c for a, b, c in zip(g0, g1, g2)]
        else:
            ds, m = gs, full
        th = [t.detach() for t in theta]
        T = [t.abs() + h["eta"] if "weight" in name else torch.ones_like(t) for name, t in zip(names, th)]
        ascent = [torch.zeros_like(t) for t in theta]
        for di in ds:
            denom = norm([ti * gi for ti, gi in zip(T, di)]) + 1e-16
            at = [(t + h["rho"] * ti * ti * gi / denom - h["alpha"] * mi).requires_grad_()
                  for t, ti, gi, mi in zip(th, T, di, m)]
            ascent = [a + b for a, b in zip(ascent, grad(loss_at(at), at))]
        u = [a + f + s / len(ds) for a, f, s in zip(u, full, ascent)]
    new = []
    for name, t, ui in zip(names, theta, u):   # the first SGD step: buf = u + wd θ, θ ← θ − lr · buf
        lr = h["lr"] * (h.get("head_lr_mult", 1.0) if name.startswith("head.") else 1.0)
        new.append(t.detach() - lr * (ui + h["weight_decay"] * t.detach()))
    return new, bn_after_theta, gs


def naive_supcon(z1, z2, classes, tau=0.1, tau_base=0.07):
    """Anchor by anchor: −(τ/τ_b) mean_p log(exp(s_ap) / Σ_{b≠a} exp(s_ab)), positives = same class, p ≠ a."""
    f = F.normalize(torch.cat([z1, z2]), dim=1)
    c = torch.cat([classes, classes]).tolist()
    total = 0
    for a in range(len(f)):
        s = [(f[a] * f[b]).sum() / tau for b in range(len(f))]
        den = sum(torch.exp(s[b]) for b in range(len(f)) if b != a)
        pos = [b for b in range(len(f)) if b != a and c[b] == c[a]]
        total = total + sum(torch.log(torch.exp(s[p]) / den) for p in pos) / len(pos)
    return -(tau / tau_base) * total / len(f)


def assert_step(model, before, expected, rel=1e-10):
    """The step θ' − θ equals the expected one to `rel` relative (per tensor, in max norm)."""
    for (name, p), b, e in zip(model.named_parameters(), before, expected):
        got, want = p.detach() - b, e - b
        err = (got - want).abs().max() / want.abs().max()
        assert err <= rel, f"{name}: relative step error {err:.2e}"


def run(kind_key, minibatches, hp=None, model_seed=0, **switches):
    name, method_h = METHODS.get(kind_key, (kind_key, {}))
    h = {**H, **method_h, **(hp or {})}
    model = tiny_net(model_seed)
    algo = make_algorithm(name, model, 3, h)
    for k, v in switches.items():
        setattr(algo, k, v)
    before = [p.detach().clone() for p in model.parameters()]
    ref = copy.deepcopy(model)
    logs = algo.update(minibatches)
    return model, before, ref, h, logs


# ---- one step equals the formulas --------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["erm", "sam", "asam", "gacfas", "gacfas_official"])
def test_step_equals_formula(kind):
    batches = domain_batches()
    model, before, ref, h, logs = run(kind, batches)
    expected, bn_theta, gs = reference_step(ref, METHODS.get(kind, (kind,))[0], batches, h)
    assert_step(model, before, expected)
    # the BatchNorm running statistics are those of the θ pass alone
    for (name, b), want in zip(model.named_buffers(), bn_theta.values()):
        torch.testing.assert_close(b, want, rtol=1e-13, atol=0, msg=name)
    assert logs["loss_0"] > 0 and set(logs) >= {"loss", "loss_0", "loss_1", "loss_2"}


def test_paper_and_official_accumulation_differ():
    batches = domain_batches()
    paper, before, *_ = run("gacfas", batches)
    official, *_ = run("gacfas_official", batches)
    steps = [torch.cat([(p.detach() - b).reshape(-1) for p, b in zip(m.parameters(), before)]) for m in (paper, official)]
    assert (steps[0] - steps[1]).norm() > 1e-3 * steps[0].norm()


def test_extra_forward_passes_would_move_bn_statistics():
    """Guards the BN test above: a second train-mode pass does change the running statistics."""
    model, x = tiny_net(), torch.cat([b[0] for b in domain_batches()])
    model(x)
    once = model.bn.running_mean.clone()
    model(x * 2)
    assert (model.bn.running_mean - once).abs().max() > 1e-3


def test_gacfas_logs_gradient_norms_and_cosines():
    batches = domain_batches()
    model, before, ref, h, logs = run("gacfas", batches)
    _, _, gs = reference_step(ref, "gacfas", batches, h)
    for i in range(3):
        assert logs[f"gnorm_{i}"] == pytest.approx(3 * norm(gs[i]).item(), rel=1e-10)
        for j in range(3):
            cos = sum((a * b).sum() for a, b in zip(gs[i], gs[j])) / (norm(gs[i]) * norm(gs[j]))
            assert logs[f"cos_{i}_{j}"] == pytest.approx(cos.item(), rel=1e-10, abs=1e-12)
    assert all(np.isfinite(list(logs.values())))


@pytest.mark.parametrize("kind", ["erm", "sam"])
def test_erm_sam_log_gradients_only_when_asked(kind):
    batches = domain_batches()
    quiet = run(kind, batches)
    loud = run(kind, batches, log_gradients=True)
    assert not any(k.startswith(("gnorm", "cos")) for k in quiet[4])
    assert {f"cos_{i}_{j}" for i in range(3) for j in range(3)} | {"gnorm_0", "gnorm_1", "gnorm_2"} <= set(loud[4])
    _, _, gs = reference_step(quiet[2], "erm", batches, quiet[3])
    assert loud[4]["gnorm_1"] == pytest.approx(3 * norm(gs[1]).item(), rel=1e-10)
    assert_step(loud[0], loud[1], list(quiet[0].parameters()), rel=1e-12)   # logging does not change the step


# ---- the perturbation functions ----------------------------------------------------------------------------

def test_official_bookkeeping_for_three_domains():
    g = [[torch.tensor([1.0, 2.0])], [torch.tensor([10.0, 0.0])], [torch.tensor([100.0, -1.0])]]
    ds, a = official_domain_gradients(g)
    assert [d[0].tolist() for d in ds] == [[1, 2], [10, 0], [99, -3]]        # g0, g1, g2 − g0
    assert a[0].tolist() == [3 * 1 + 2 * 10 + 100, 3 * 2 + 0 - 1]             # 3g0 + 2g1 + g2
    ds, a = official_domain_gradients([g[0], None, g[2]])                       # domain 1 absent
    assert ds[1] is None and ds[2][0].tolist() == [99, -3] and a[0].tolist() == [103, 5]


def test_perturbations_match_closed_form():
    named = [("w.weight", torch.tensor([0.5, -2.0])), ("w.bias", torch.tensor([3.0]))]
    g = [[torch.tensor([1.0, 1.0]), torch.tensor([2.0])], [torch.tensor([0.0, 1.0]), torch.tensor([-1.0])]]
    full = [g[0][0] + g[1][0], g[0][1] + g[1][1]]
    eps = gacfas_perturbations(named, g, full, rho=0.1, eta=0.5, alpha=0.01)
    # domain 0: T g = [1·1, 2.5·1, 2] → ‖·‖ = √11.25; ε = 0.1 [1, 6.25, 2]/√11.25 − 0.01 [1, 2, 1]
    want = 0.1 * np.array([1.0, 6.25, 2.0]) / np.sqrt(11.25) - 0.01 * np.array([1.0, 2.0, 1.0])
    np.testing.assert_allclose(torch.cat(eps[0]).numpy(), want, rtol=1e-6)
    e = sam_perturbation([t for _, t in named], g[0], rho=0.2)
    np.testing.assert_allclose(torch.cat(e).numpy(), 0.2 * np.array([1, 1, 2]) / np.sqrt(6), rtol=1e-6)
    e = sam_perturbation([t for _, t in named], g[0], rho=0.2, adaptive=True)
    np.testing.assert_allclose(torch.cat(e).numpy(), 0.2 * np.array([0.25, 4, 18]) / np.sqrt(0.25 + 4 + 36), rtol=1e-6)


# ---- a quadratic, stepped in closed form ---------------------------------------------------------------------

class Linear(nn.Module):
    def __init__(self, w, b):
        super().__init__()
        self.weight = nn.Parameter(torch.tensor(w, dtype=DT))
        self.bias = nn.Parameter(torch.tensor([b], dtype=DT))

    def forward(self, x):
        return x @ self.weight + self.bias


@pytest.mark.parametrize("kind", ["sam", "asam", "gacfas", "gacfas_official"])
def test_quadratic_closed_form(kind):
    """L_i(θ) = ½ mean (x·w + b − y)² over domain i: ∇L_i = A_i θ − c_i with A_i = X̃ᵀX̃/n_i, c_i = X̃ᵀy/n_i."""
    rng = np.random.default_rng(0)
    data = [(rng.normal(size=(n, 2)), rng.normal(size=n)) for n in (3, 5, 4)]
    theta = np.array([0.7, -1.2, 0.4])
    name, mh = METHODS[kind]
    h = {"lr": 0.5, "momentum": 0.0, "weight_decay": 0.0, **mh}
    model = Linear(theta[:2].tolist(), theta[2])
    algo = make_algorithm(name, model, 3, h)
    algo.loss = lambda logits, y: 0.5 * ((logits - y) ** 2).mean()
    algo.update([(torch.tensor(x), torch.tensor(y)) for x, y in data])

    A = [np.c_[x, np.ones(len(x))].T @ np.c_[x, np.ones(len(x))] / len(x) for x, _ in data]
    c = [np.c_[x, np.ones(len(x))].T @ y / len(x) for x, y in data]
    full_at = lambda t: sum(a @ t - ci for a, ci in zip(A, c)) / 3
    g = [(a @ theta - ci) / 3 for a, ci in zip(A, c)]
    G = sum(g)
    if name == "sam":
        s = np.abs(theta) if mh.get("adaptive") else np.ones(3)
        eps = mh["rho"] * s * s * G / (np.linalg.norm(s * G) + 1e-12)
        u = full_at(theta + eps)
    else:
        ds, m = ([g[0], g[1], g[2] - g[0]], 3 * g[0] + 2 * g[1] + g[2]) if mh.get("official_accumulation") else (g, G)
        T = np.array([abs(theta[0]) + mh["eta"], abs(theta[1]) + mh["eta"], 1.0])   # bias: identity
        ascent = [theta + mh["rho"] * T * T * d / (np.linalg.norm(T * d) + 1e-16) - mh["alpha"] * m for d in ds]
        u = G + np.mean([full_at(t) for t in ascent], axis=0)
    got = np.r_[model.weight.detach().numpy(), model.bias.detach().numpy()]
    np.testing.assert_allclose(got - theta, -0.5 * u, rtol=1e-10)


# ---- absent domains, warm-up, head-only, supcon, hparams -------------------------------------------------

@pytest.mark.parametrize("kind", ["erm", "sam", "gacfas", "gacfas_official"])
@pytest.mark.parametrize("absent", ["empty", "none"])
def test_batch_missing_a_domain(kind, absent):
    batches = domain_batches()
    x, y = batches[1]
    batches[1] = (x[:0], y[:0]) if absent == "empty" else None
    model, before, ref, h, logs = run(kind, batches)
    expected, _, _ = reference_step(ref, METHODS.get(kind, (kind,))[0], batches, h)
    assert_step(model, before, expected)
    assert "loss_1" not in logs and "loss_0" in logs and "loss_2" in logs
    assert all(np.isfinite(list(logs.values())))


def test_warmup_switch_from_erm_to_gacfas():
    batches, later = domain_batches(1), domain_batches(2)
    h = {**H, "momentum": 0.0, **METHODS["gacfas"][1]}
    model = tiny_net()
    algo = make_algorithm("gacfas", model, 3, h)
    erm_model = copy.deepcopy(model)
    erm = make_algorithm("erm", erm_model, 3, {k: v for k, v in h.items() if k in hparams("erm")})
    algo.warming = True
    logs = algo.update(batches)
    erm.update(batches)
    assert not any(k.startswith("loss_ascent") for k in logs)
    for p, q in zip(model.parameters(), erm_model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-13, atol=0)
    algo.warming = False
    before, ref = [p.detach().clone() for p in model.parameters()], copy.deepcopy(model)
    logs = algo.update(later)
    assert "loss_ascent_0" in logs
    expected, _, _ = reference_step(ref, "gacfas", later, h)
    assert_step(model, before, expected)
    erm_expected, _, _ = reference_step(ref, "erm", later, h)
    diff = max((e - f).abs().max() for e, f in zip(expected, erm_expected))
    assert diff > 1e-4       # the GAC-FAS step is not the ERM step


@pytest.mark.parametrize("warming", [True, False])
def test_head_only_steps_only_the_head(warming):
    batches = domain_batches()
    model, before, ref, h, _ = run("gacfas", batches, head_only=True, warming=warming)
    for (name, p), b in zip(model.named_parameters(), before):
        if not name.startswith("head."):
            assert torch.equal(p.detach(), b), name
            assert p.grad is None
    if warming:   # ERM on the head: head' = head − lr·mult·(∇_head L + wd·head)
        expected, _, _ = reference_step(ref, "erm", batches, h)
        for (name, p), b, e in zip(model.named_parameters(), before, expected):
            if name.startswith("head."):
                torch.testing.assert_close(p.detach() - b, e - b, rtol=1e-10, atol=0)
    assert any((p.detach() - b).abs().max() > 0 for (n, p), b in zip(model.named_parameters(), before) if n.startswith("head."))


def test_head_only_leaves_backbone_momentum_alone():
    model = tiny_net()
    algo = make_algorithm("erm", model, 3, H)
    algo.head_only = True
    algo.update(domain_batches())
    stepped = {id(p) for p in algo.optimizer.state}
    assert stepped == {id(p) for p in model.head.parameters()}


def test_supcon_matches_anchor_by_anchor():
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(6, 5, generator=g, dtype=DT), torch.randn(6, 5, generator=g, dtype=DT)
    classes = torch.tensor([0, 1, 0, 3, 3, 5])
    torch.testing.assert_close(supcon_loss(z1, z2, classes), naive_supcon(z1, z2, classes), rtol=1e-12, atol=0)


@pytest.mark.parametrize("kind", ["erm", "gacfas"])
def test_two_views_with_supcon(kind):
    batches = domain_batches(two_views=True)
    model, before, ref, h, logs = run(kind, batches, hp={"supcon_weight": 0.2})
    expected, _, _ = reference_step(ref, METHODS.get(kind, (kind,))[0], batches, h, supcon_weight=0.2)
    assert_step(model, before, expected)
    assert logs["loss_supcon"] > 0


def test_labels_long_or_float_give_the_same_step():
    batches = domain_batches()
    as_long = [(x, y.long()) for x, y in batches]
    a, *_ = run("gacfas", batches)
    b, *_ = run("gacfas", as_long)
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)


def test_unknown_or_misplaced_hparams_are_errors():
    with pytest.raises(FaslandError, match="rhoo"):
        make_algorithm("sam", tiny_net(), 3, {"rhoo": 0.1})
    with pytest.raises(FaslandError, match="eta"):
        make_algorithm("sam", tiny_net(), 3, {"eta": 0.1})
    with pytest.raises(FaslandError, match="unknown method"):
        make_algorithm("fish", tiny_net(), 3, {})
    assert hparams("gacfas")["alpha"] == 0.0002 and hparams("gacfas")["rho"] == 0.1


def test_bad_minibatches_are_errors():
    algo = make_algorithm("gacfas", tiny_net(), 3, H)
    batches = domain_batches()
    with pytest.raises(FaslandError, match="3 source domains"):
        algo.update(batches[:2])
    with pytest.raises(FaslandError, match="empty"):
        algo.update([None, None, (batches[0][0][:0], batches[0][1][:0])])
    with pytest.raises(FaslandError, match="two views"):
        make_algorithm("erm", tiny_net(), 3, {"supcon_weight": 0.2}).update(batches)


def test_hparams_are_the_class_defaults_overridden_by_a_config():
    from training.algorithms.sam import SAM
    from training.presets import make_config

    assert hparams("sam") == SAM.defaults() and SAM.defaults()["lr"] == 0.01 and SAM.defaults()["rho"] == 0.05
    sam_config = {"hparams": {"rho": 0.02, "adaptive": True, "lr": 0.5}}
    g = hparams("gacfas", sam_config)        # another method's config lends only the keys GAC-FAS knows
    assert g["rho"] == 0.02 and g["lr"] == 0.5 and g["alpha"] == 0.0002 and "adaptive" not in g
    assert hparams("erm", None) == hparams("erm", {"hparams": None})
    assert make_config("ICM2O", "gacfas", "demo")["hparams"] == hparams("gacfas")   # the demo only uses defaults
    paper = make_config("ICM2O", "sam", "paper", {"hparams": {"rho": 0.1}})["hparams"]
    assert paper["lr"] == 0.005 and paper["rho"] == 0.1 and paper["adaptive"] is False
    with pytest.raises(FaslandError, match="unknown method 'adam'"):
        hparams("adam")


@pytest.mark.parametrize("layout", ["same", "other"])
def test_moved_to_runs_at_theta_plus_eps_and_gives_theta_back_exactly(layout):
    """base.moved_to (SAM, GAC-FAS and conflicts share it): inside, the parameters are θ + ε and a train-mode
    pass may change the BatchNorm statistics; after, every parameter holds the very tensor θ it held before
    (same memory, same bits) and the statistics are back. ε laid out unlike θ (contiguous vs channels_last)
    gets a tensor in θ's layout."""
    from training.algorithms.base import moved_to

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(64, 1))
    net = net.to(memory_format=torch.channels_last)
    params = list(net.parameters())
    theta = [p.detach().clone() for p in params]
    ptrs = [p.data_ptr() for p in params]
    stats = [b.clone() for b in net.buffers()]
    eps = [0.1 * torch.randn_like(p) for p in params]
    if layout == "other":
        eps = [e.contiguous() for e in eps]
    expected = [t + e for t, e in zip(theta, eps)]
    x = torch.randn(5, 3, 6, 6)
    with moved_to(net, params, [e.clone() for e in eps]):
        assert all(torch.equal(p, e) for p, e in zip(params, expected))
        assert all(p.stride() == t.stride() for p, t in zip(params, theta))
        net.train()
        net(x).sum().backward()
        assert not torch.equal(net[1].running_mean, stats[0])
    assert [p.data_ptr() for p in params] == ptrs
    assert all(torch.equal(p, t) for p, t in zip(params, theta))
    assert all(torch.equal(b, s) for b, s in zip(net.buffers(), stats))
    assert all(p.grad is not None for p in params)          # the gradient taken at θ + ε stays
