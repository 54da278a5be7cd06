"""Intervals: the client-level bootstrap against an independent numpy resampling, within-noise decisions on
synthetic methods, and the Gram-matrix bootstrap of gradient cosines against explicit weighted means."""
import numpy as np
import pytest
import torch
from torch import nn

from analysis.intervals import (batch_means_interval, client_subsets, conflict_interval, gram_cosine_replicates, subset_interval,
                                within_noise)
from reliability_fixtures import tiny_run  # noqa: F401  (the session fixture)
from test_metrics import brute_force
from training.errors import FaslandError
from training.metrics import client_draws, client_intervals, fas_metrics, replicate_metrics
from training.probe import Probe


def synthetic(separation: float, seed: int, clients: int = 20, frames: int = 10):
    """Scores of `clients` clients with `frames` frames each, half live half spoof per client; an offset and a
    live–spoof separation per client, shared by all its frames (what makes frames of one client dependent)."""
    rng = np.random.default_rng(seed)
    c = np.repeat(np.arange(100, 100 + clients), frames)
    y = np.tile(np.arange(frames) % 2, clients)
    who = c - 100
    s = (separation + rng.normal(0, 1, clients)[who]) * y + rng.normal(0, 1, clients)[who] + rng.normal(0, 0.3, c.size)
    return s, y, c


def numpy_bootstrap(s, y, c, n_boot, seed):
    """The same resampling written independently: draw client positions, gather their frames by mask."""
    rng = np.random.default_rng(seed)
    ids = np.unique(c)
    hters, aucs = [], []
    while len(hters) < n_boot:
        drawn = ids[rng.integers(0, len(ids), len(ids))]
        idx = np.concatenate([np.where(c == k)[0] for k in drawn])
        if y[idx].min() == y[idx].max():
            continue
        ref = brute_force(s[idx], y[idx])
        hters.append(ref["hter"])
        aucs.append(ref["auc"])
    return np.quantile(hters, [0.025, 0.975]), np.quantile(aucs, [0.025, 0.975])


def test_client_bootstrap_equals_independent_numpy_resampling():
    s, y, c = synthetic(1.0, 0, clients=8, frames=6)
    s = np.round(s, 1)   # ties, as real scores have
    got = client_intervals(s, y, c, n_boot=60, seed=3)
    hter, auc = numpy_bootstrap(s, y, c, 60, 3)
    assert got["clients"] == 8 and got["n_boot"] == 60
    np.testing.assert_allclose(got["hter"], hter, atol=1e-12)
    np.testing.assert_allclose(got["auc"], auc, atol=1e-12)


def frame_resamples(labels, clients, n_boot, seed):
    """The replicates as frame index arrays, drawn as the per-replicate bootstrap drew them before it was vectorized."""
    ids = np.unique(clients)
    members = [np.flatnonzero(clients == k) for k in ids]
    rng = np.random.default_rng(seed)
    made = 0
    while made < n_boot:
        idx = np.concatenate([members[k] for k in rng.integers(0, len(ids), len(ids))])
        if len(np.unique(labels[idx])) == 2:
            made += 1
            yield idx


def test_all_replicates_at_once_equal_sklearn_per_replicate():
    """Ties, 1–9 frames per client, one-class clients and a non-finite score: each replicate's HTER equals
    fas_metrics (sklearn's ROC) on its frames bit for bit, its AUC to 1e-12 (NaN where it holds the NaN)."""
    rng = np.random.default_rng(7)
    c = np.repeat(np.arange(30), rng.integers(1, 10, 30))
    y = (rng.random(30) < 0.5)[c].astype(np.int64)
    y[::4] = 1 - y[::4]
    s = np.round(rng.normal(y * 0.8, 1.0), 1)
    s[5] = np.nan
    hter, auc = replicate_metrics(s, y, *client_draws(y, c, 300, seed=2))
    ref = [fas_metrics(s[i], y[i]) for i in frame_resamples(y, c, 300, 2)]
    np.testing.assert_array_equal(hter, [r["hter"] for r in ref])
    np.testing.assert_allclose(auc, [r["auc"] for r in ref], rtol=0, atol=1e-12)
    assert 0 < np.isnan(hter).sum() < 300 and len(np.unique(hter[np.isfinite(hter)])) > 10


def test_client_bootstrap_redraws_one_class_draws():
    """Single-class clients (one video each): every replicate still holds both classes."""
    y = np.array([1, 1, 0, 0, 1, 0])
    c = np.array([0, 0, 1, 1, 2, 3])
    got = client_intervals(np.array([0.9, 0.8, 0.1, 0.2, 0.7, 0.3]), y, c, n_boot=50, seed=0)
    assert got["hter"] == [0.0, 0.0] and got["auc"] == [1.0, 1.0]


def test_clients_are_the_unit_not_frames():
    """Frames sharing a client offset: the client bootstrap is wider than a frame bootstrap would be."""
    s, y, c = synthetic(1.0, 1)
    clientwise = client_intervals(s, y, c, n_boot=300, seed=0)
    framewise = client_intervals(s, y, np.arange(c.size), n_boot=300, seed=0)
    assert np.diff(clientwise["hter"])[0] > 1.3 * np.diff(framewise["hter"])[0]


def test_within_noise_marks_small_differences_and_not_large_ones():
    a = client_intervals(*synthetic(1.0, 2), n_boot=300, seed=0)
    close = client_intervals(*synthetic(1.15, 3), n_boot=300, seed=0)
    far = client_intervals(*synthetic(6.0, 4), n_boot=300, seed=0)
    assert within_noise(a["hter"], close["hter"]) and within_noise(a["auc"], close["auc"])
    assert not within_noise(a["hter"], far["hter"]) and not within_noise(a["auc"], far["auc"])
    assert within_noise((0.1, 0.2), (0.2, 0.3)) and not within_noise((0.1, 0.2), (0.21, 0.3))
    assert within_noise(None, (0.1, 0.2)) and within_noise((float("nan"), 1.0), (0.1, 0.2))


def test_subset_interval():
    r = subset_interval([1.0, 2.0, 3.0, 4.0, None])
    assert r["mean"] == 2.5 and r["n"] == 4 and r["std"] == pytest.approx(np.std([1, 2, 3, 4], ddof=1))
    assert r["interval"] == pytest.approx(list(np.percentile([1, 2, 3, 4], [2.5, 97.5])))
    with pytest.raises(FaslandError, match="sample-batches"):
        subset_interval([])


def test_batch_means_interval_is_the_t_interval_and_covers_the_whole_sample_estimate():
    from scipy import stats

    values = [3.0, 5.0, 4.5]
    lo, hi = batch_means_interval(4.0, values)
    assert [lo, hi] == pytest.approx(list(stats.t.interval(0.95, 2, loc=4.0, scale=stats.sem(values))))
    assert batch_means_interval(4.0, [3.0, None]) is None and batch_means_interval(None, values) is None
    # the mean of N(0, 1) samples dealt into 3 subsets: the interval of the whole sample's mean covers 0 in 95% of draws
    rng = np.random.default_rng(0)
    covered = 0
    for _ in range(4000):
        x = rng.normal(0.0, 1.0, 60)
        a, b = batch_means_interval(x.mean(), [x[i::3].mean() for i in range(3)])
        covered += a <= 0.0 <= b
    assert 0.94 <= covered / 4000 <= 0.96


def test_study_hessian_intervals_are_centred_on_the_whole_probe_values():
    from analysis.hessian import spread
    from analysis.study import hessian_numbers

    h = {"command": "hessian", "version": 1, "eigenvalues": [188.5], "trace": {"mean": 522.3, "stderr": 10.0},
         "sampling": {"subsets": 3, "lambda_max": spread([260.0, 190.0, 250.0]), "trace": spread([500.0, 530.0, 537.0])}}
    ci = hessian_numbers(h)["ci_hessian"]
    assert ci["lambda_max"] == pytest.approx(batch_means_interval(188.5, [260.0, 190.0, 250.0]))
    assert ci["trace"] == pytest.approx(batch_means_interval(522.3, [500.0, 530.0, 537.0]))
    assert ci["lambda_max"][0] < 188.5 < ci["lambda_max"][1]    # the subsets' own range, 190–260, would miss it


def test_gram_replicates_equal_explicit_weighted_means():
    rng = np.random.default_rng(0)
    k, B, dim = 3, 4, 7
    g = rng.normal(size=(k, B, dim)) + np.array([1.0, -0.5, 0.2])[:, None, None]
    sizes = rng.integers(1, 5, (k, B))
    S = g.reshape(k * B, dim)
    reps = gram_cosine_replicates(S @ S.T, sizes, n_boot=5, seed=7)
    draw = np.random.default_rng(7)
    for r in range(5):
        G = []
        for i in range(k):
            picks = draw.integers(0, B, B)
            G.append(sum(sizes[i, b] * g[i, b] for b in picks) / sizes[i, picks].sum())
        G = np.array(G)
        n = np.linalg.norm(G, axis=1)
        np.testing.assert_allclose(reps[r], G @ G.T / np.outer(n, n), atol=1e-12)


def test_client_subsets_keep_clients_whole():
    c = np.array([5, 9, 5, 7, 9, 7, 11, 5])
    groups = client_subsets(c, 2)
    assert sorted(np.concatenate(groups).tolist()) == list(range(len(c)))
    assert [sorted(set(c[g].tolist())) for g in groups] == [[5, 9], [7, 11]]
    with pytest.raises(FaslandError, match="clients"):
        client_subsets(c, 5)


def test_conflict_interval_brackets_the_full_data_cosines():
    """Subsets of whole clients, one gradient each: the interval covers the full-data cosines of
    `gradient_cosines` on this smooth toy problem."""
    from analysis.conflicts import gradient_cosines

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 4), nn.Tanh(), nn.Linear(4, 1), nn.Flatten(0))
    domains, clients = {}, {}
    for n, d in enumerate("ICM"):
        x = torch.randn(24, 3, 2, 2) + 0.3 * n
        domains[d] = (x, (torch.arange(24) % 2).float())
        clients[d] = torch.arange(24) // 3 + 100 * n
    probe = Probe(domains, "ICM", None, batch_size=5, channels_last=False, clients=clients)
    r = conflict_interval(model, probe, subsets=4, n_boot=200, seed=0)
    C = gradient_cosines(model, probe.loss_fn, {d: probe.batches(d) for d in "ICM"}).numpy()
    lo, hi = np.array(r["cosines_low"]), np.array(r["cosines_high"])
    assert r["subsets"] == 4 and (lo <= C + 1e-9).all() and (C <= hi + 1e-9).all()
    assert r["conflict"][0] <= r["conflict"][1] and r["mean_cosine"][0] <= r["mean_cosine"][1]


def test_conflicts_command_writes_the_theta_interval(tiny_run, tmp_path):
    import json

    from reliability_fixtures import cli

    run, _ = tiny_run
    out = tmp_path / "c.json"
    r = cli(["conflicts", "--checkpoint", run / "checkpoint.pt", "--at", "theta", "--max-samples", "16", "--threads", "1",
             "--out", out])
    assert r.code == 0, r.err[-2000:]
    theta = json.loads(out.read_text())["theta"]
    ci = theta["interval"]
    assert ci["subsets"] == 4 and ci["n_boot"] == 1000
    assert (np.array(ci["cosines_low"]) <= np.array(ci["cosines_high"])).all()
    assert 0 <= ci["conflict"][0] <= ci["conflict"][1] <= 1
    r = cli(["conflicts", "--checkpoint", run / "checkpoint.pt", "--at", "theta", "--max-samples", "16", "--threads", "1",
             "--interval-subsets", "0", "--out", tmp_path / "none.json"])
    assert r.code == 0 and "interval" not in json.loads((tmp_path / "none.json").read_text())["theta"]
    r = cli(["conflicts", "--checkpoint", run / "checkpoint.pt", "--interval-subsets", "-1", "--out", tmp_path / "bad.json"])
    assert r.code == 2 and "--interval-subsets" in r.error_lines()[0] and not (tmp_path / "bad.json").exists()
