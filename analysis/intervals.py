"""Uncertainty of the headline numbers, and when two methods' numbers cannot be told apart.

- HTER and AUC: client-level bootstrap (`training.metrics.client_intervals`): frames of one client
  (video, identity) are not independent, so clients are resampled with replacement, all their frames kept.
- λ_max and trace: `fasland hessian --sample-batches B` measures each of B disjoint subsets of the probe alone;
  `subset_interval` is the spread of those values (what one subset's worth of samples gives), and
  `batch_means_interval` the 95% interval of the estimate on the whole probe: value ± t_{B−1}·s/√B (batch
  means), centred on that estimate, as the report's tables and within-noise reading use.
- Conflict cosines: the probe's samples of each domain split into B subsets of clients, one gradient g_ib per
  subset; the domain's gradient is their size-weighted mean, so every bootstrap replicate (subsets drawn with
  replacement within each domain) is an exact weighted sum, and its cosines follow from the (kB × kB) Gram
  matrix of the subset gradients alone: `gram_cosine_replicates`. The cost is one more pass of per-domain
  gradients at θ (k of the k + (k + 1)k gradients `fasland conflicts` takes), and no more gradient memory
  than kB flat gradients; the trajectory's checkpoints get no interval.
- `within_noise(a, b)`: the two intervals overlap (a conservative test: overlap of 95% intervals).
"""
import numpy as np

from training.errors import FaslandError
from training.metrics import percentile_interval

__all__ = ["percentile_interval", "subset_interval", "batch_means_interval", "within_noise", "gram_cosine_replicates", "cosine_intervals",
           "client_subsets", "conflict_interval"]


def subset_interval(values, level: float = 0.95) -> dict:
    """Mean, standard deviation and the central `level` percentile interval of per-subset values."""
    v = np.asarray([x for x in values if x is not None], dtype=np.float64)
    if v.size == 0:
        raise FaslandError("no per-subset values to take an interval over; measure with --sample-batches 2 or more")
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if v.size > 1 else 0.0, "n": int(v.size),
            "interval": list(percentile_interval(v, level))}


def batch_means_interval(value: float, values, level: float = 0.95) -> list[float] | None:
    """value ± t_{B−1,(1+level)/2} · s/√B, s the standard deviation (ddof 1) of the B per-subset estimates `values`:
    the interval of `value`, the estimate on all B disjoint subsets together. Each subset holds 1/B of the samples,
    so that estimate's standard error is about s/√B; for a mean over the subsets (the trace, whose subsets share
    their probe vectors) it is the t interval exactly. None with fewer than two subset values."""
    from scipy.stats import t

    v = np.asarray([x for x in values if x is not None], dtype=np.float64)
    if value is None or v.size < 2:
        return None
    half = float(t.ppf((1 + level) / 2, v.size - 1) * v.std(ddof=1) / np.sqrt(v.size))
    return [value - half, value + half]


def within_noise(a, b) -> bool:
    """True when intervals a = (low, high) and b overlap: the difference of the two numbers is not resolved.
    A missing interval (None or NaN ends) cannot resolve anything either."""
    if a is None or b is None or not np.isfinite(np.asarray([*a, *b], dtype=np.float64)).all():
        return True
    return max(a[0], b[0]) <= min(a[1], b[1])


def gram_cosine_replicates(gram, sizes, n_boot: int = 1000, seed: int = 0) -> np.ndarray:
    """(n_boot × k × k) cosine matrices of bootstrap replicates of the per-domain gradients.

    gram: (kB × kB) inner products of subset gradients g_ib (row i·B + b), sizes: (k × B) samples per subset.
    A replicate draws B subsets with replacement in each domain (numpy default_rng(seed)); its gradient
    G*_i = Σ_b n_ib g_ib / Σ_b n_ib over the drawn b, so ⟨G*_i, G*_j⟩ = w_iᵀ gram w_j with w the drawn weights."""
    gram, sizes = np.asarray(gram, dtype=np.float64), np.asarray(sizes, dtype=np.float64)
    k, B = sizes.shape
    if gram.shape != (k * B, k * B):
        raise FaslandError(f"the Gram matrix is {gram.shape}, not ({k * B}, {k * B}) for {k} domains × {B} subsets")
    import torch

    from training.algorithms.base import cosine_matrix

    rng = np.random.default_rng(seed)
    out = np.empty((n_boot, k, k))
    W = np.zeros((k, k * B))
    for r in range(n_boot):
        for i in range(k):
            w = np.bincount(rng.integers(0, B, B), minlength=B) * sizes[i]
            W[i, i * B:(i + 1) * B] = w / w.sum()
        out[r] = cosine_matrix(torch.from_numpy(W @ gram @ W.T)).numpy()
    return out


def cosine_intervals(gram, sizes, n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> dict:
    """Percentile intervals of the k × k cosines, of the conflict score and of the mean off-diagonal cosine
    over the replicates of `gram_cosine_replicates`."""
    import torch

    from analysis.conflicts import conflict_score

    reps = gram_cosine_replicates(gram, sizes, n_boot, seed)
    k = reps.shape[1]
    i, j = np.triu_indices(k, 1)
    lo, hi = np.percentile(reps, [50 * (1 - level), 50 * (1 + level)], axis=0)
    return {"level": level, "n_boot": n_boot, "subsets": int(np.asarray(sizes).shape[1]),
            "cosines_low": lo.tolist(), "cosines_high": hi.tolist(),
            "conflict": list(percentile_interval([conflict_score(torch.from_numpy(c)) for c in reps], level)),
            "mean_cosine": list(percentile_interval(reps[:, i, j].mean(1), level))}


def client_subsets(clients, subsets: int) -> list[np.ndarray]:
    """Sample indices split into `subsets` groups of whole clients: the r-th smallest client id goes to group
    r mod subsets (a client's frames stay together)."""
    clients = np.asarray(clients).ravel()
    ids = np.unique(clients)
    if subsets < 2 or len(ids) < subsets:
        raise FaslandError(f"{subsets} client subsets need at least {max(subsets, 2)} clients per domain (found "
                           f"{len(ids)}); pass 2 ≤ subsets ≤ the clients of the smallest domain")
    rank = np.searchsorted(ids, clients)
    return [np.flatnonzero(rank % subsets == b) for b in range(subsets)]


def conflict_interval(model, probe, subsets: int = 4, n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> dict:
    """`cosine_intervals` of the source domains' gradients at θ, each domain's probe samples split into
    `subsets` groups of clients (`client_subsets`), one eval-mode gradient per group (`loss_gradient`)."""
    import torch

    from analysis.conflicts import loss_gradient
    from training.algorithms.base import gram_matrix

    if not getattr(probe, "clients", None):
        raise FaslandError("the probe holds no client ids; build it with load_probe (or pass clients=) to take intervals")
    grads, sizes = [], []
    for d in probe.sources:
        (x, y), row = probe.domains[d], []
        for idx in client_subsets(probe.clients[d].cpu().numpy(), subsets):
            idx_t = torch.as_tensor(idx, device=x.device)
            xs, ys = x[idx_t], y[idx_t]
            bs = probe.batch_size
            grads.append(loss_gradient(model, probe.loss_fn, [(probe.inputs(xs[a:a + bs]), ys[a:a + bs]) for a in range(0, len(xs), bs)]))
            row.append(len(idx))
        sizes.append(row)
    return cosine_intervals(gram_matrix(torch.stack(grads)).cpu().numpy(), sizes, n_boot, seed, level)
