"""analysis.conflicts against explicit per-domain gradients (numpy cosines), the trainers' own ascent
points and update gradients (GAC-FAS in both accumulation modes, SAM and ASAM), and one MPI rank against two;
`fasland conflicts` end to end on a small checkpoint, its trajectory and its resume."""
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

from analysis import conflicts as cf
from training.algorithms import make_algorithm
from training.algorithms.base import bce

VENV_BIN = Path(sys.executable).parent


class WithBN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(16, 1)

    def forward(self, x):
        return self.fc(F.adaptive_avg_pool2d(torch.tanh(self.bn(self.conv(x))), 2).flatten(1)).squeeze(1)


class NoBN(nn.Module):
    """Same output in train and eval mode, so the trainers' train-mode gradients equal the analysis' eval-mode ones."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(16, 1)

    def forward(self, x):
        return self.fc(F.adaptive_avg_pool2d(torch.tanh(self.conv(x)), 2).flatten(1)).squeeze(1)


def domains(seed=0, sizes=((5, 3), (4,), (6, 2))):
    """Three domains, each a list of batches of the given sizes; labels mixed."""
    g = torch.Generator().manual_seed(seed)
    return {name: [(torch.randn(n, 3, 6, 6, generator=g, dtype=torch.float64), (torch.rand(n, generator=g) > 0.5).double())
                   for n in ns] for name, ns in zip("ABC", sizes)}


def flat(tensors):
    return torch.cat([t.reshape(-1) for t in tensors])


def explicit_gradient(model, batches):
    """∇ of the mean BCE over the union of the batches, by one autograd call on the concatenation (eval mode)."""
    model.eval()
    x, y = torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])
    return flat(torch.autograd.grad(bce(model(x), y), list(model.parameters()))).detach()


def np_cosines(G):
    G = np.asarray(G, dtype=np.float64)
    n = np.linalg.norm(G, axis=1)
    return G @ G.T / np.outer(n, n)


def set_flat(model, vector):
    with torch.no_grad():
        for p, t in zip(model.parameters(), vector.split([p.numel() for p in model.parameters()])):
            p.copy_(t.view_as(p))


def test_cosines_norms_and_conflict_equal_numpy():
    torch.manual_seed(0)
    model = WithBN().double()
    model.train()
    with torch.no_grad():
        model(torch.randn(20, 3, 6, 6, dtype=torch.float64) + 1)
    model.eval()
    data = domains()
    G = np.stack([explicit_gradient(model, b).numpy() for b in data.values()])
    C = np_cosines(G)
    got = cf.gradient_cosines(model, bce, data)
    assert got.shape == (3, 3) and got.dtype == torch.float64
    assert np.max(np.abs(got.numpy() - C)) < 1e-12
    # also as a list of single (x, y) batches per domain
    single = [(torch.cat([b[0] for b in bs]), torch.cat([b[1] for b in bs])) for bs in data.values()]
    assert np.max(np.abs(cf.gradient_cosines(model, bce, single).numpy() - C)) < 1e-12
    s = cf.summary(torch.from_numpy(G))
    assert np.allclose(s["norms"], np.linalg.norm(G, axis=1), rtol=1e-12)
    pairs = [C[0, 1], C[0, 2], C[1, 2]]
    assert s["conflict"] == pytest.approx(np.mean(np.maximum(0, -np.array(pairs))), abs=1e-12)
    assert s["mean_cosine"] == pytest.approx(np.mean(pairs), abs=1e-12)
    assert model.training is False


def test_conflict_score_closed_form():
    C = torch.tensor([[1.0, -0.5, 0.2], [-0.5, 1.0, -0.1], [0.2, -0.1, 1.0]], dtype=torch.float64)
    assert cf.conflict_score(C) == pytest.approx((0.5 + 0.0 + 0.1) / 3)
    assert cf.conflict_score(torch.eye(2, dtype=torch.float64)) == 0.0


def trainer_run(model, minibatches, method, hparams):
    """One `gradient` call of the trainer's class: the parameters at every ascent-point forward pass, and the
    update gradient it leaves in .grad."""
    algo = make_algorithm(method, model, num_domains=len(minibatches), hparams=hparams)
    points, forward = [], algo.forward

    def recording(batch, supcon=True):
        if not supcon:
            points.append(flat([p.detach().clone() for p in model.parameters()]))
        return forward(batch, supcon)

    algo.forward = recording
    algo.optimizer.zero_grad(set_to_none=True)
    algo.gradient(algo.batch(minibatches), algo.trainable())
    return points, flat([p.grad for p in model.parameters()]).detach()


@pytest.mark.parametrize("official", [False, True])
def test_gacfas_ascent_points_and_update_equal_the_trainers(official):
    torch.manual_seed(1)
    model = NoBN().double()
    data = domains(1, sizes=((5,), (4,), (6,)))
    minibatches = [b[0] for b in data.values()]
    h = {"rho": 0.07, "eta": 0.01, "alpha": 0.003, "official_accumulation": official}
    theta = flat([p.detach().clone() for p in model.parameters()])
    points, update = trainer_run(model, minibatches, "gacfas", h)
    assert len(points) == 3 and torch.equal(flat([p.detach() for p in model.parameters()]), theta)

    G = cf.domain_gradients(model, bce, data)
    eps = cf.gacfas_ascents(model, G, h["rho"], h["eta"], h["alpha"], official)
    for e, p in zip(eps, points):
        assert torch.allclose(theta + e, p, rtol=0, atol=1e-13)
    # the gradients at those points, as the analysis takes them, rebuild the trainer's update gradient
    P = cf.point_gradients(model, bce, data, eps)
    assert torch.allclose(G.mean(0) + P.mean(1).mean(0), update, rtol=1e-10, atol=1e-14)

    out = cf.conflicts(model, bce, data, at="both", rho=h["rho"], eta=h["eta"], alpha=h["alpha"], official_accumulation=official)
    full = G.mean(0).numpy()
    for name, p in zip("ABC", points):       # explicit: the per-domain gradients at the trainer's θ_i
        set_flat(model, p)
        Gi = np.stack([explicit_gradient(model, b).numpy() for b in data.values()])
        set_flat(model, theta)
        gen = Gi.mean(0)
        assert np.max(np.abs(np.array(out["gacfas"]["points"][name]["cosines"]) - np_cosines(Gi))) < 1e-12
        assert out["gacfas"]["alignment"][name] == pytest.approx(gen @ full, rel=1e-10)
        assert out["gacfas"]["alignment_cosine"][name] == pytest.approx(gen @ full / np.linalg.norm(gen) / np.linalg.norm(full), rel=1e-10)


@pytest.mark.parametrize("adaptive", [False, True])
def test_sam_ascent_point_and_update_equal_the_trainers(adaptive):
    torch.manual_seed(2)
    model = NoBN().double()
    data = domains(2, sizes=((5,), (4,), (6,)))
    minibatches = [b[0] for b in data.values()]
    theta = flat([p.detach().clone() for p in model.parameters()])
    points, update = trainer_run(model, minibatches, "sam", {"rho": 0.05, "adaptive": adaptive})
    G = cf.domain_gradients(model, bce, data)
    eps = cf.sam_ascent(model, G, 0.05, adaptive)
    assert len(points) == 1 and torch.allclose(theta + eps, points[0], rtol=0, atol=1e-13)
    P = cf.point_gradients(model, bce, data, [eps])
    assert torch.allclose(P[0].mean(0), update, rtol=1e-10, atol=1e-14)
    out = cf.conflicts(model, bce, data, at="both", rho=0.05, adaptive=adaptive)
    set_flat(model, points[0])
    G_sam = np.stack([explicit_gradient(model, b).numpy() for b in data.values()])
    set_flat(model, theta)
    assert np.max(np.abs(np.array(out["sam"]["cosines"]) - np_cosines(G_sam))) < 1e-12
    assert out["theta"]["conflict"] == cf.summary(G)["conflict"]
    assert "sam" not in cf.conflicts(model, bce, data, at="theta")


# ---- the command, on a small checkpoint and probe --------------------------------------------------------

CONFIG = {"protocol": "ICM2O", "method": "gacfas", "data": {"root": "synth", "image_size": 8, "seed": 0},
          "model": {"name": "cli-net"}, "hparams": {"rho": 0.1, "eta": 0.0, "alpha": 0.0002}, "train": {}}
ARCH = {"name": "cli-net"}


class CliNet(WithBN):
    """The checkpoints' model in the command tests (stands in for FASNet: the commands take any model)."""

    def __init__(self, arch=None):
        super().__init__()


def small_probe(config, device="cpu", max_samples=None, batch_size=256, data=None, source_split="train", frames_per_video=1):
    """Stands in for training.probe.load_probe: four domains of six random 6×6 images (SynthFAS is not needed here)."""
    from training.probe import Probe
    g = torch.Generator().manual_seed(0)
    doms = {d: (torch.randn(6, 3, 6, 6, generator=g), (torch.arange(6) % 2).float()) for d in "ICMO"}
    return Probe(doms, ("I", "C", "M"), "O", batch_size=batch_size, device=device)


def small_world(monkeypatch):
    """The commands on CliNet checkpoints and the small probe."""
    import training.checkpoint
    import training.probe
    monkeypatch.setattr(training.probe, "load_probe", small_probe)
    monkeypatch.setattr(training.checkpoint, "build_model", CliNet)


def make_run(run: Path, epochs=(1, 2)):
    from training.checkpoint import save_checkpoint

    torch.manual_seed(0)
    model = CliNet()
    model.train()
    with torch.no_grad():          # BatchNorm statistics of the data, as training leaves them
        model(torch.randn(32, 3, 6, 6) + 0.5)
    for e in epochs:
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.1 * torch.randn_like(p))
        save_checkpoint(run / "checkpoints" / f"epoch_{e:03d}.pt", model, ARCH, CONFIG, e, {})
    save_checkpoint(run / "checkpoint.pt", model, ARCH, CONFIG, epochs[-1], {})


WRAPPER = """
import sys
import training.checkpoint
import training.probe
sys.path.insert(0, {tests!r})
from test_conflicts import CliNet, small_probe
training.probe.load_probe = small_probe
training.checkpoint.build_model = CliNet
from fasland.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_cli_trajectory_resume_and_two_mpi_ranks(tmp_path, monkeypatch, capsys):
    from analysis import commands
    from fasland.cli import main

    small_world(monkeypatch)
    run = tmp_path / "run"
    make_run(run)
    out = tmp_path / "conflicts.json"
    argv = ["conflicts", "--checkpoint", str(run / "checkpoint.pt"), "--trajectory", str(run), "--threads", "1", "--out", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "conflict at θ" in printed and "over training" in printed
    r = json.loads(out.read_text())
    assert r["domains"] == ["I", "C", "M"] and r["provenance"]["checkpoint_sha256"]
    assert [e["epoch"] for e in r["trajectory"]] == [1, 2]
    assert {"theta", "sam", "gacfas", "summary"} <= set(r) and r["gacfas"]["rho"] == 0.1
    # the final checkpoint is epoch 2's model: same record
    assert r["trajectory"][1]["theta"]["cosines"] == r["theta"]["cosines"]
    # independent: cosines of the explicit per-domain gradients of the checkpoint on the probe
    from training.checkpoint import load_model
    model, _ = load_model(run / "checkpoint.pt")
    probe = small_probe(CONFIG)
    G = np.stack([explicit_gradient_f32(model, probe, d) for d in "ICM"])
    assert np.max(np.abs(np.array(r["theta"]["cosines"]) - np_cosines(G))) < 1e-5

    # a rerun reuses everything; a new epoch is the only new work
    calls = []
    record = commands._conflict_record
    monkeypatch.setattr(commands, "_conflict_record", lambda *a, **k: calls.append(1) or record(*a, **k))
    assert main(argv) == 0 and calls == []
    assert json.loads(out.read_text())["trajectory"] == r["trajectory"]
    make_run(tmp_path / "more", epochs=(1, 2, 3))
    (tmp_path / "more" / "checkpoints" / "epoch_003.pt").rename(run / "checkpoints" / "epoch_003.pt")
    assert main(argv) == 0 and len(calls) == 1
    assert [e["epoch"] for e in json.loads(out.read_text())["trajectory"]] == [1, 2, 3]

    # --trajectory-at theta: each trajectory checkpoint gets its cosines at θ only, the same as with the ascent points
    lean = tmp_path / "conflicts_theta.json"
    assert main([*argv[:-1], str(lean), "--trajectory-at", "theta"]) == 0
    t = json.loads(lean.read_text())
    assert t["theta"]["cosines"] == r["theta"]["cosines"] and "sam" in t    # the checkpoint itself: every point
    assert [set(e) & {"theta", "sam", "gacfas"} for e in t["trajectory"]] == [{"theta"}] * 3
    assert [e["theta"]["cosines"] for e in t["trajectory"][:2]] == [e["theta"]["cosines"] for e in r["trajectory"]]

    # two ranks (domains of the checkpoint, then one trajectory checkpoint per rank) give the same numbers
    wrapper = tmp_path / "wrapper.py"
    wrapper.write_text(WRAPPER.format(tests=str(Path(__file__).parent)))
    out2 = tmp_path / "conflicts_mpi.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("FASLAND_MPI", None)
    proc = subprocess.run([str(VENV_BIN / "mpiexec"), "-n", "2", sys.executable, str(wrapper), *argv[:-1], str(out2)],
                          capture_output=True, text=True, timeout=180, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    one, two = json.loads(out.read_text()), json.loads(out2.read_text())
    assert two["provenance"]["mpi_ranks"] == 2
    for a, b in [(one, two)] + list(zip(one["trajectory"], two["trajectory"])):
        for key in ("theta", "sam"):
            assert np.allclose(a[key]["cosines"], b[key]["cosines"], rtol=0, atol=1e-6)
        assert np.allclose(list(a["gacfas"]["alignment"].values()), list(b["gacfas"]["alignment"].values()), rtol=1e-5)


def explicit_gradient_f32(model, probe, d):
    x, y = probe.domains[d]
    model.eval()
    return flat(torch.autograd.grad(probe.loss_fn(model(x), y), list(model.parameters()))).detach().double().numpy()


def test_cli_bad_input_is_one_sentence(tmp_path, capsys):
    from fasland.cli import main

    assert main(["conflicts", "--out", str(tmp_path / "c.json")]) == 2
    assert "--checkpoint" in capsys.readouterr().err
    assert main(["conflicts", "--trajectory", str(tmp_path / "nowhere"), "--out", str(tmp_path / "c.json")]) == 2
    assert "not a folder" in capsys.readouterr().err
    assert main(["conflicts", "--checkpoint", str(tmp_path / "missing.pt"), "--out", str(tmp_path / "c.json")]) == 2
    assert "not found" in capsys.readouterr().err
    assert not (tmp_path / "c.json").exists()
    # an existing file that is not a conflicts result is never replaced
    from analysis.commands import check_out
    from training.errors import FaslandError
    notes = tmp_path / "notes.json"
    notes.write_text('{"command": "hessian"}')
    with pytest.raises(FaslandError, match="not a result of 'fasland conflicts'"):
        check_out(notes, "conflicts")
    check_out(notes, "hessian")
    (tmp_path / "file").write_text("x")
    with pytest.raises(FaslandError, match="is a file, not a folder"):
        check_out(tmp_path / "file" / "c.json", "conflicts")
    assert notes.read_text() == '{"command": "hessian"}'
