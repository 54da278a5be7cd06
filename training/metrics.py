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
