"""RFM (training/algorithms/rfm.py) against explicit computations: the second-order meta-gradient from dense
Hessians and mixed Jacobians, the first-order ablation, the aggregated ablation from a hand-built inner step,
and depth learning on SynthFAS and on a face-depth task."""
import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from training.algorithms.rfm import RFM
from training.errors import FaslandError


class TinyNet(nn.Module):
    """stem (conv, BN, tanh) → layer3 (strided conv, tanh) → mean pool → linear head; smooth everywhere."""

    def __init__(self, width=4):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.Tanh())
        self.layer3 = nn.Sequential(nn.Conv2d(width, width, 3, stride=2, padding=1), nn.Tanh())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(width, 1)

    def features(self, x):
        return torch.flatten(self.pool(self.layer3(self.stem(x))), 1)

    def forward(self, x):
        return self.head(self.features(x)).squeeze(1)


HP = {"lr": 1.0, "momentum": 0.0, "weight_decay": 0.0, "logit_scale": 1.7,
      "meta_lr": 0.6, "meta_test_weight": 0.7, "depth_weight": 1.3, "depth_layer": "layer3"}


def make_batches(seed=0, sizes=(4, 5, 3), image=8, depth=6):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(n, 3, image, image, generator=g, dtype=torch.float64),
             (torch.rand(n, generator=g) < 0.5).double(),
             torch.rand(n, depth, depth, generator=g, dtype=torch.float64)) for n in sizes]


def make_algo(hparams, seed=0):
    torch.manual_seed(seed)
    model = TinyNet().double()
    algo = RFM(model, 3, {**HP, **hparams})
    # copies taken before the step: the reference recomputes everything on them
    return algo, copy.deepcopy(model), copy.deepcopy(algo.depth_head)


def step_gradients(algo, batches):
    """Run one update; .grad of (trunk params, head [W, b] flattened, D params) = the meta-gradient (lr 1, plain SGD)."""
    test = algo.meta_test(len(batches))
    logs = algo.update(batches)
    assert logs["meta_test"] == test
    trunk = [p.grad for n, p in algo.model.named_parameters() if not n.startswith("head.")]
    head = torch.cat([algo.model.head.weight.grad.reshape(-1), algo.model.head.bias.grad])
    return test, logs, trunk, head, [p.grad for p in algo.depth_head.parameters()]


def forward(model, depth_head, batches):
    """Reference forward of the concatenated batch: per-domain features f_j and depth losses."""
    x = torch.cat([b[0] for b in batches])
    h = model.layer3(model.stem(x))
    f = torch.flatten(model.pool(h), 1)
    sizes = [len(b[0]) for b in batches]
    depth = depth_head(h, batches[0][2].shape[-2:])
    dep = [((d - b[2]) ** 2).mean() for d, b in zip(depth.split(sizes), batches)]
    return f.split(sizes), dep


def bce(f, y, m, scale):
    """Mean BCE of sigmoid(scale·(f·w + b)) with θ_M = m = [w, b], written out: softplus(z) − y z."""
    z = scale * (f @ m[:-1] + m[-1])
    return (F.softplus(z) - y * z).mean()


def explicit_meta_gradient(model, depth_head, batches, test):
    """The RFM meta-gradient from its chain rule, every second-order block as a dense matrix:
    ∇_M = Σ_i [g_i + w (I − α H_i) v_i],  ∇_F = ∇_F(λ Σ_i Ldep_i + wλ Ldep_T + Σ_i L_i) + w Σ_i [∂_F L_T(m'_i) − α J_iᵀ v_i],
    ∇_D = ∇_D(λ Σ_i Ldep_i + wλ Ldep_T); g_i = ∇_M L_i, m'_i = m − α g_i, v_i = ∇_M L_T(m'_i), H_i = ∇²_M L_i,
    J_i = ∂g_i/∂θ_F. Returns (first-order part, second-order part) for trunk, head and D."""
    alpha, w, lam, s = HP["meta_lr"], HP["meta_test_weight"], HP["depth_weight"], HP["logit_scale"]
    trunk = [p for n, p in model.named_parameters() if not n.startswith("head.")]
    dparams = list(depth_head.parameters())
    m = torch.cat([model.head.weight.reshape(-1), model.head.bias]).detach().requires_grad_()
    fs, dep = forward(model, depth_head, batches)
    ys = [b[1] for b in batches]
    train = [j for j in range(len(batches)) if j != test]

    depth_obj = lam * sum(dep[j] for j in train) + w * lam * dep[test]
    fo_trunk = list(torch.autograd.grad(depth_obj, trunk, retain_graph=True))
    fo_d = list(torch.autograd.grad(depth_obj, dparams, retain_graph=True))
    fo_head, so_head = torch.zeros_like(m), torch.zeros_like(m)
    so_trunk = [torch.zeros_like(p) for p in trunk]
    for i in train:
        li = bce(fs[i], ys[i], m, s)
        gi = torch.autograd.grad(li, m, create_graph=True)[0]
        m_i = (m - alpha * gi).detach()
        v = torch.autograd.grad(bce(fs[test].detach(), ys[test], m_i.requires_grad_(), s), m_i)[0]
        H = torch.autograd.functional.hessian(lambda mm: bce(fs[i].detach(), ys[i], mm, s), m.detach())
        J = torch.stack([torch.cat([g.reshape(-1) for g in torch.autograd.grad(gi[k], trunk, retain_graph=True)])
                         for k in range(len(m))])                      # [|θ_M|, |θ_F|]
        fo_head += gi.detach() + w * v
        so_head += -alpha * w * (H @ v)
        for acc, g in zip(fo_trunk, torch.autograd.grad(li + w * bce(fs[test], ys[test], m_i.detach(), s), trunk, retain_graph=True)):
            acc += g
        for acc, part in zip(so_trunk, (-alpha * w * (J.T @ v)).split([p.numel() for p in trunk])):
            acc += part.reshape(acc.shape)
    return (fo_trunk, fo_head, fo_d), (so_trunk, so_head)


def close(a, b, tol=1e-10):
    return all(torch.allclose(x, y, rtol=tol, atol=tol * (1 + y.abs().max().item())) for x, y in zip(a, b))


def test_meta_gradient_equals_explicit_second_order():
    algo, model, depth_head = make_algo({})
    batches = make_batches()
    test, logs, trunk, head, dgrads = step_gradients(algo, batches)
    (fo_trunk, fo_head, fo_d), (so_trunk, so_head) = explicit_meta_gradient(model, depth_head, batches, test)
    # the second-order blocks are a real part of the gradient here, not rounding noise
    assert so_head.norm() > 1e-3 * fo_head.norm() and sum(t.norm() for t in so_trunk) > 1e-3
    assert close(trunk, [a + b for a, b in zip(fo_trunk, so_trunk)])
    assert close([head], [fo_head + so_head])
    assert close(dgrads, fo_d)
    assert set(logs) >= {"loss", "loss_0", "loss_1", "loss_2", "loss_depth", "loss_meta_test", "meta_test"}
    fs, dep = forward(model, depth_head, batches)
    m = torch.cat([model.head.weight.reshape(-1), model.head.bias])
    cls = [bce(f, b[1], m, HP["logit_scale"]).item() for f, b in zip(fs, batches)]
    assert logs["loss"] == pytest.approx(sum(cls) / 3, rel=1e-12)
    assert [logs[f"loss_{i}"] for i in range(3)] == pytest.approx(cls, rel=1e-12)
    assert logs["loss_depth"] == pytest.approx(sum(d.item() for d in dep) / 3, rel=1e-12)


def test_first_order_drops_exactly_the_second_order_term():
    so_algo, model, depth_head = make_algo({})
    fo_algo, _, _ = make_algo({"first_order": True})
    batches = make_batches(seed=1)
    test, _, so_trunk_g, so_head_g, so_d = step_gradients(so_algo, batches)
    assert fo_algo.meta_test(3) == test
    _, _, fo_trunk_g, fo_head_g, fo_d = step_gradients(fo_algo, batches)
    (fo_trunk, fo_head, fo_dref), (so_trunk, so_head) = explicit_meta_gradient(model, depth_head, batches, test)
    assert close(fo_trunk_g, fo_trunk) and close([fo_head_g], [fo_head]) and close(fo_d, fo_dref)
    assert close([a - b for a, b in zip(so_trunk_g, fo_trunk_g)], so_trunk, tol=1e-9)
    assert close([so_head_g - fo_head_g], [so_head], tol=1e-9)
    assert close(so_d, fo_d)


def test_aggregate_is_one_inner_step_on_the_union_of_meta_train_domains():
    algo, model, depth_head = make_algo({"aggregate": True})
    fine, _, _ = make_algo({})
    batches = make_batches(seed=2)
    test, logs, trunk, head, dgrads = step_gradients(algo, batches)
    _, _, fine_trunk, fine_head, _ = step_gradients(fine, batches)

    alpha, w, lam, s = HP["meta_lr"], HP["meta_test_weight"], HP["depth_weight"], HP["logit_scale"]
    W, b = model.head.weight, model.head.bias
    x = torch.cat([bt[0] for bt in batches])
    h = model.layer3(model.stem(x))
    f = torch.flatten(model.pool(h), 1)
    depth = depth_head(h, (6, 6))
    owner = torch.cat([torch.full((len(bt[0]),), j) for j, bt in enumerate(batches)])
    y, target = torch.cat([bt[1] for bt in batches]), torch.cat([bt[2] for bt in batches])
    U, T = owner != test, owner == test
    logit = lambda feats, W_, b_: s * (feats @ W_.T + b_).squeeze(1)
    l_u = F.binary_cross_entropy_with_logits(logit(f[U], W, b), y[U])
    gW, gb = torch.autograd.grad(l_u, (W, b), create_graph=True)
    W1, b1 = W - alpha * gW, b - alpha * gb                                # the one inner step, on the union
    l_t = F.binary_cross_entropy_with_logits(logit(f[T], W1, b1), y[T])
    objective = l_u + lam * F.mse_loss(depth[U], target[U]) + w * (l_t + lam * F.mse_loss(depth[T], target[T]))
    params = [p for n, p in model.named_parameters() if not n.startswith("head.")]
    ref = torch.autograd.grad(objective, params + [W, b] + list(depth_head.parameters()))
    k = len(params)
    assert close(trunk, ref[:k])
    assert close([head], [torch.cat([ref[k].reshape(-1), ref[k + 1]])])
    assert close(dgrads, ref[k + 2:])
    assert logs["loss_meta_test"] == pytest.approx(l_t.item(), rel=1e-12)
    # with three domains the union is not the fine-grained pair of inner steps
    assert (head - fine_head).norm() > 1e-3 * head.norm()


def test_bad_inputs_are_clear_errors():
    algo, _, _ = make_algo({})
    x, y, d = make_batches()[0]
    with pytest.raises(FaslandError, match="depth"):
        algo.update([(x, y)] * 3)
    with pytest.raises(FaslandError, match="at least two"):
        algo.update([(x, y, d), None, (x[:0], y[:0], d[:0])])
    with pytest.raises(FaslandError, match="depth_layer"):
        RFM(TinyNet(), 3, {"depth_layer": "pool"})
    with pytest.raises(FaslandError, match="unknown"):
        RFM(TinyNet(), 3, {"inner_lr": 0.1})


def test_meta_test_domain_is_reproducible_and_covers_every_domain():
    algo, _, _ = make_algo({})
    draws = []
    for step in range(30):
        algo.step = step
        draws.append(algo.meta_test(3))
    assert set(draws) == {0, 1, 2}
    algo.step = 7
    assert algo.meta_test(3) == draws[7]
    state = algo.extra_state()
    other, _, _ = make_algo({}, seed=5)
    other.load_extra_state(state)
    assert other.step == 7 and all(torch.equal(a, b) for a, b in zip(other.depth_head.state_dict().values(), state["depth_head"].values()))


def test_trainer_switches_warming_head_only_and_gradient_logs():
    batches = make_batches(seed=3)
    algo, model, depth_head = make_algo({})
    algo.warming = algo.log_gradients = True
    logs = algo.update(batches)
    fs, dep = forward(model, depth_head, batches)
    m = torch.cat([model.head.weight.reshape(-1), model.head.bias])
    cls = [bce(f, b[1], m, HP["logit_scale"]) for f, b in zip(fs, batches)]
    params = list(model.parameters())
    ref = torch.autograd.grad((sum(cls) + HP["depth_weight"] * sum(dep)) / 3, params + list(depth_head.parameters()), retain_graph=True)
    assert close([p.grad for p in algo.model.parameters()] + [p.grad for p in algo.depth_head.parameters()], ref)
    g = [torch.cat([t.reshape(-1) for t in torch.autograd.grad(l, params, retain_graph=True)]) for l in cls]
    for i in range(3):
        assert logs[f"gnorm_{i}"] == pytest.approx(g[i].norm().item(), rel=1e-10)
        for j in range(3):
            assert logs[f"cos_{i}_{j}"] == pytest.approx(F.cosine_similarity(g[i], g[j], dim=0).item(), rel=1e-10, abs=1e-12)
    assert "meta_test" not in logs

    full, _, _ = make_algo({})
    head_only, _, _ = make_algo({})
    head_only.head_only = True
    d_before = [p.clone() for p in head_only.depth_head.parameters()]
    _, _, _, full_head, _ = step_gradients(full, batches)
    _, _, trunk, head, dgrads = step_gradients(head_only, batches)
    assert all(t is None for t in trunk) and all(d is None for d in dgrads)
    assert torch.allclose(head, full_head, rtol=1e-12, atol=1e-14)
    assert all(torch.equal(a, b) for a, b in zip(d_before, head_only.depth_head.parameters()))


class SmallNet(nn.Module):
    """A three-stage conv net (stem, layer2, layer3: 32 → 16 → 8 px) with a linear head."""

    def __init__(self, w=16):
        super().__init__()
        block = lambda a, b, s: nn.Sequential(nn.Conv2d(a, b, 3, stride=s, padding=1), nn.BatchNorm2d(b), nn.ReLU())
        self.stem, self.layer2, self.layer3 = block(3, w, 1), block(w, 2 * w, 2), block(2 * w, 4 * w, 2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(4 * w, 1)

    def features(self, x):
        return torch.flatten(self.pool(self.layer3(self.layer2(self.stem(x)))), 1)

    def forward(self, x):
        return self.head(self.features(x)).squeeze(1)


def faces(n, g, size=32):
    """A face-depth task in the spirit of SynthFAS: an ellipsoidal face, jittered in place and shape, on a
    random background. Live: depth = the relief, image shaded by it under a random light; spoof: depth 0,
    image = the same face flattened in contrast with print stripes. → (x normalized, y, depth [n,32,32])."""
    t = (torch.arange(size) + 0.5) / size * 2 - 1
    u, v = t.view(1, 1, size), t.view(1, size, 1)
    cx, cy = [(torch.rand(n, 1, 1, generator=g) - 0.5) * 0.3 for _ in range(2)]
    a, b = 0.45 + 0.15 * torch.rand(n, 1, 1, generator=g), 0.6 + 0.15 * torch.rand(n, 1, 1, generator=g)
    z = (1 - ((u - cx) / a) ** 2 - ((v - cy) / b) ** 2).clamp(min=0).sqrt()
    live = torch.rand(n, generator=g) < 0.5
    light = torch.rand(n, 1, 1, generator=g) * 2 - 1
    shade = (0.6 + 4 * light * torch.diff(z, dim=2, prepend=z[:, :, :1]) + 0.3 * z).clamp(0, 1)
    skin = torch.tensor([0.8, 0.6, 0.5]).view(1, 3, 1, 1) * (0.7 + 0.3 * torch.rand(n, 1, 1, 1, generator=g))
    img = torch.where((z > 0)[:, None], skin * shade[:, None], torch.rand(n, 3, 1, 1, generator=g))
    stripes = 0.15 * torch.sin(u * size * 1.6 + 6 * torch.rand(n, 1, 1, generator=g))
    img = torch.where(live[:, None, None, None], img, (0.8 * img + 0.1 + stripes[:, None]).clamp(0, 1))
    img = img + 0.03 * torch.randn(img.shape, generator=g)
    return (img - 0.5) / 0.25, live.float(), z * live.view(-1, 1, 1)


def test_depth_loss_decreases_on_synthfas():
    from training.data import load_domain, normalize
    domains = [load_domain("synth", d, "train", image_size=32, samples=160) for d in "ICM"]
    torch.manual_seed(0)
    algo = RFM(SmallNet(), 3, {"lr": 0.03, "meta_lr": 0.01, "depth_layer": "layer3"})
    g = torch.Generator().manual_seed(0)

    def batch(d, n=8):
        idx = torch.randint(len(d.labels), (n,), generator=g)
        return normalize(d.images[idx]), d.labels[idx], d.depth[idx]    # depth as stored: uint8 [n,32,32]

    losses = [algo.update([batch(d) for d in domains])["loss_depth"] for _ in range(50)]
    assert all(math.isfinite(l) for l in losses)
    assert sum(losses[-10:]) / 10 < 0.25 * sum(losses[:3]) / 3


def test_depth_is_read_from_the_image():
    torch.manual_seed(0)
    algo = RFM(SmallNet(), 3, {"lr": 0.03, "meta_lr": 0.01, "depth_layer": "layer3"})
    g = torch.Generator().manual_seed(1)
    losses = [algo.update([faces(8, g) for _ in range(3)])["loss_depth"] for _ in range(60)]
    assert sum(losses[-10:]) / 10 < 0.25 * losses[0]
    # on held-out faces D beats the best image-blind answer (the mean training depth map) by far
    x, _, depth = faces(96, torch.Generator().manual_seed(99))
    mean_map = torch.cat([faces(64, torch.Generator().manual_seed(s))[2] for s in range(3)]).mean(0)
    with torch.no_grad():
        pred = algo.forward(x, (32, 32))[1]
    assert F.mse_loss(pred, depth) < 0.5 * F.mse_loss(mean_map.expand_as(depth), depth)


def test_fasnet_keeps_the_plain_classifier_and_d_reads_layer2():
    from training.model import FASNet
    torch.manual_seed(0)
    model = FASNet()
    keys = set(model.state_dict())
    algo = RFM(model, 3, {"lr": 0.01})
    assert algo.depth_head.body[0].in_channels == 128                  # layer2's output
    assert set(model.state_dict()) == keys                               # D lives beside the model, not in it
    assert {id(p) for p in algo.depth_head.parameters()} <= {id(p) for g in algo.optimizer.param_groups for p in g["params"]}
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(4, 3, 32, 32, generator=g), torch.tensor([0.0, 1.0, 0.0, 1.0]),
                torch.randint(0, 256, (4, 32, 32), generator=g, dtype=torch.uint8)) for _ in range(3)]
    before = [p.clone() for p in algo.depth_head.parameters()]
    logs = algo.update(batches)
    assert all(math.isfinite(v) for v in logs.values()) and algo.step == 1
    assert all(not torch.equal(a, b) for a, b in zip(before, algo.depth_head.parameters()))
    with torch.no_grad():
        assert algo.forward(batches[0][0], (32, 32))[1].shape == (4, 32, 32)
