"""FAS metrics as the GAC-FAS evaluation computes them, from scikit-learn's ROC."""
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


def client_resamples(labels, clients, n_boot: int, seed: int = 0):
    """Index arrays of `n_boot` client-level bootstrap replicates: as many clients as there are, drawn with
    replacement (numpy default_rng(seed)), each contributing all its frames in their order; a draw that holds
    one class only is drawn again (frames of one client are not independent, so clients are the unit)."""
    labels, clients = np.asarray(labels).ravel(), np.asarray(clients).ravel()
    ids = np.unique(clients)
    members = [np.flatnonzero(clients == c) for c in ids]
    rng = np.random.default_rng(seed)
    if len(np.unique(labels)) < 2:
        raise FaslandError("a client bootstrap needs both live (1) and spoof (0) samples; the evaluation set holds only one class")
    made = 0
    while made < n_boot:
        idx = np.concatenate([members[c] for c in rng.integers(0, len(ids), len(ids))])
        if len(np.unique(labels[idx])) == 2:
            made += 1
            yield idx


def client_intervals(scores, labels, clients, n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> dict:
    """95% (`level`) percentile intervals of HTER and AUC over `n_boot` client-level bootstrap replicates
    (`client_resamples`), each replicate's metrics by `fas_metrics` (its own threshold)."""
    scores, labels = np.asarray(scores, dtype=np.float64).ravel(), np.asarray(labels).ravel()
    if np.asarray(clients).size != scores.size:
        raise FaslandError(f"clients ({np.asarray(clients).size}) and scores ({scores.size}) differ in length; pass one client id per score")
    reps = [fas_metrics(scores[i], labels[i]) for i in client_resamples(labels, clients, n_boot, seed)]
    return {"level": level, "n_boot": n_boot, "clients": int(len(np.unique(clients))),
            **{k: list(percentile_interval([r[k] for r in reps], level)) for k in ("hter", "auc")}}


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
