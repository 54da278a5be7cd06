"""FAS metrics as the GAC-FAS evaluation computes them, from scikit-learn's ROC; the client bootstrap computes the
same numbers for all its replicates at once in numpy."""
import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve

from training.errors import FaslandError


def fas_metrics(scores, labels) -> dict:
    """Scores (higher = live) and labels (1 = live, 0 = spoof) → HTER, AUC, TPR@FPR=5%, ACC.

    The threshold is the ROC point where TPR + FPR − 1 is closest to 0 (the equal-error point);
    there HTER = (FPR + FRR) / 2 with FRR = 1 − TPR, and ACC is the accuracy of `score ≥ threshold`.
    """
    scores = np.asarray(scores, dtype=np.float64).ravel()
    labels = np.asarray(labels).ravel().astype(np.int64)
    if scores.shape != labels.shape:
        raise FaslandError(f"scores ({scores.size}) and labels ({labels.size}) differ in length; pass one score per label")
    if len(np.unique(labels)) < 2:
        raise FaslandError("FAS metrics need both live (1) and spoof (0) samples; the evaluation set holds only one class")
    if not np.isfinite(scores).all():
        return {"hter": float("nan"), "auc": float("nan"), "tpr_at_fpr5": float("nan"), "acc": float("nan"), "threshold": float("nan")}
    fpr, tpr, thr = roc_curve(labels, scores, pos_label=1, drop_intermediate=False)
    i = int(np.argmin(np.abs(tpr + fpr - 1.0)))
    threshold = float(thr[i])
    pred = scores >= threshold
    return {
        "hter": float((fpr[i] + 1.0 - tpr[i]) / 2.0),
        "auc": float(roc_auc_score(labels, scores)),
        "tpr_at_fpr5": float(np.interp(0.05, fpr, tpr)),
        "acc": float((pred == (labels == 1)).mean()),
        "threshold": threshold,
    }


def percentile_interval(values, level: float = 0.95) -> tuple[float, float]:
    """The central `level` interval of a sample: its (1 − level)/2 and (1 + level)/2 percentiles (NaNs dropped)."""
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    if v.size == 0:
        return float("nan"), float("nan")
    lo, hi = np.percentile(v, [50 * (1 - level), 50 * (1 + level)])
    return float(lo), float(hi)


def client_draws(labels, clients, n_boot: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(frame_client, counts) of `n_boot` client-level bootstrap replicates: as many clients as there are, drawn
    with replacement (numpy default_rng(seed)), each contributing all its frames; counts[r, c] is how often
    replicate r drew client c (frame_client[f] = c for frame f). A draw that holds one class only is drawn again
    (frames of one client are not independent, so clients are the unit)."""
    labels, clients = np.asarray(labels).ravel(), np.asarray(clients).ravel()
    ids, frame_client = np.unique(clients, return_inverse=True)
    if len(np.unique(labels)) < 2:
        raise FaslandError("a client bootstrap needs both live (1) and spoof (0) samples; the evaluation set holds only one class")
    k = len(ids)
    live = np.bincount(frame_client, weights=labels == 1, minlength=k)
    spoof = np.bincount(frame_client, weights=labels != 1, minlength=k)
    rng = np.random.default_rng(seed)
    counts = np.zeros((n_boot, k), dtype=np.int64)
    made = 0
    while made < n_boot:
        c = np.bincount(rng.integers(0, k, k), minlength=k)
        if c @ live > 0 and c @ spoof > 0:
            counts[made] = c
            made += 1
    return frame_client, counts


def replicate_metrics(scores, labels, frame_client, counts, block: int = 1 << 22) -> tuple[np.ndarray, np.ndarray]:
    """HTER and AUC of every replicate at once, each equal to `fas_metrics` of its frames (frame f weighed by
    w_f = counts[r, frame_client[f]]). Over the distinct scores t_1 > … > t_G (the ROC thresholds),
    TPR(t) = Σ_{live, s ≥ t} w / P and FPR(t) = Σ_{spoof, s ≥ t} w / N; HTER = (FPR + 1 − TPR)/2 at the first point
    (from (0, 0)) minimizing |TPR + FPR − 1|; AUC = Σ_g live_g (spoof below t_g + spoof_g / 2) / (P N), ties
    counted half. A replicate holding a non-finite score gets NaN. `block`: entries per (replicates × G) array."""
    scores, labels = np.asarray(scores, dtype=np.float64).ravel(), np.asarray(labels).ravel()
    finite = np.isfinite(scores)
    values, group = np.unique(np.where(finite, scores, 0.0), return_inverse=True)   # ascending
    k, g = counts.shape[1], len(values)

    def per_group(mask):       # frames of client c in score group g, (k × g)
        m = np.zeros((k, g))
        np.add.at(m, (frame_client[mask], group[mask]), 1.0)
        return m

    live, spoof = per_group((labels == 1) & finite), per_group((labels != 1) & finite)
    bad = counts @ np.bincount(frame_client, weights=~finite, minlength=k) > 0
    hter, auc = np.empty(len(counts)), np.empty(len(counts))
    step = max(1, block // g)
    with np.errstate(invalid="ignore", divide="ignore"):     # 0/0 only in the replicates marked bad
        for a in range(0, len(counts), step):
            w = counts[a:a + step].astype(np.float64)
            pos, neg = w @ live, w @ spoof                          # exact: sums of whole numbers
            tps, fps = np.cumsum(pos[:, ::-1], axis=1), np.cumsum(neg[:, ::-1], axis=1)     # thresholds descending
            p, n = tps[:, -1:], fps[:, -1:]
            zero = np.zeros((len(w), 1))
            tpr, fpr = np.hstack([zero, tps / p]), np.hstack([zero, fps / n])
            i = np.argmin(np.abs(tpr + fpr - 1.0), axis=1)
            r = np.arange(len(w))
            hter[a:a + step] = (fpr[r, i] + 1.0 - tpr[r, i]) / 2.0
            below = np.cumsum(neg, axis=1) - neg
            auc[a:a + step] = (pos * (below + 0.5 * neg)).sum(axis=1) / (p * n)[:, 0]
    hter[bad] = auc[bad] = np.nan
    return hter, auc


def client_intervals(scores, labels, clients, n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> dict:
    """95% (`level`) percentile intervals of HTER and AUC over `n_boot` client-level bootstrap replicates
    (`client_draws`), each replicate's metrics as `fas_metrics` gives them (its own threshold), computed for all
    replicates at once (`replicate_metrics`)."""
    scores, labels = np.asarray(scores, dtype=np.float64).ravel(), np.asarray(labels).ravel()
    if np.asarray(clients).size != scores.size:
        raise FaslandError(f"clients ({np.asarray(clients).size}) and scores ({scores.size}) differ in length; pass one client id per score")
    hter, auc = replicate_metrics(scores, labels, *client_draws(labels, clients, n_boot, seed))
    return {"level": level, "n_boot": n_boot, "clients": int(len(np.unique(clients))),
            "hter": list(percentile_interval(hter, level)), "auc": list(percentile_interval(auc, level))}


def auc_by_kind(scores, labels, kinds) -> dict:
    """{kind: AUC of live against that kind's spoofs alone} for every attack kind among `kinds`
    (one name per sample, 'live' for live ones)."""
    scores, labels = np.asarray(scores, dtype=np.float64).ravel(), np.asarray(labels).ravel()
    kinds = np.asarray(kinds)
    out = {}
    for kind in sorted(set(kinds[labels == 0].tolist())):
        keep = (labels == 1) | (kinds == kind)
        if (labels[keep] == 1).any() and np.isfinite(scores[keep]).all():
            out[kind] = float(roc_auc_score(labels[keep].astype(np.int64), scores[keep]))
    return out
