"""FAS metrics against a brute-force threshold sweep and the Mann–Whitney AUC."""
import numpy as np
import pytest

from training.errors import FaslandError
from training.metrics import fas_metrics


def brute_force(scores, labels):
    """Sweep every distinct score as threshold (descending); pick |TPR + FPR − 1| smallest, first on ties."""
    live, spoof = scores[labels == 1], scores[labels == 0]
    best = None
    for t in np.sort(np.unique(scores))[::-1]:
        tpr, fpr = (live >= t).mean(), (spoof >= t).mean()
        gap = abs(tpr + fpr - 1)
        if best is None or gap < best[0]:
            best = (gap, t, tpr, fpr)
    _, t, tpr, fpr = best
    u = sum((a > b) + 0.5 * (a == b) for a in live for b in spoof)
    return {"hter": (fpr + 1 - tpr) / 2, "auc": u / (len(live) * len(spoof)), "threshold": t,
            "acc": ((scores >= t) == (labels == 1)).mean()}


CASES = {
    "separable": (np.array([0.9, 0.8, 0.7, 0.2, 0.1, 0.05]), np.array([1, 1, 1, 0, 0, 0])),
    "one_error": (np.array([0.9, 0.3, 0.7, 0.6, 0.1, 0.05]), np.array([1, 1, 1, 0, 0, 0])),
    "ties": (np.array([0.5, 0.5, 0.5, 0.5, 0.2, 0.8, 0.2]), np.array([1, 0, 1, 0, 0, 1, 1])),
}


@pytest.mark.parametrize("name", CASES)
def test_hand_made(name):
    s, y = CASES[name]
    m, ref = fas_metrics(s, y), brute_force(s, y)
    for k in ("hter", "auc", "threshold", "acc"):
        assert m[k] == pytest.approx(ref[k], abs=1e-12), k


def test_separable_is_perfect():
    m = fas_metrics(*CASES["separable"])
    assert m["hter"] == 0 and m["auc"] == 1 and m["acc"] == 1 and m["tpr_at_fpr5"] == 1


@pytest.mark.parametrize("seed", range(5))
def test_random_scores(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 200)
    s = np.round(rng.normal(y * 1.0, 1.0), 1)   # rounding makes ties
    m, ref = fas_metrics(s, y), brute_force(s, y)
    from sklearn.metrics import roc_auc_score
    assert m["hter"] == pytest.approx(ref["hter"], abs=1e-12)
    assert m["auc"] == pytest.approx(ref["auc"], abs=1e-12) and m["auc"] == pytest.approx(roc_auc_score(y, s))
    live, spoof = s[y == 1], s[y == 0]
    # TPR at FPR = 5%: between the TPRs of the thresholds bracketing that FPR
    lo = max((live >= t).mean() for t in np.unique(s) if (spoof >= t).mean() <= 0.05)
    assert lo - 1e-12 <= m["tpr_at_fpr5"] <= 1


def test_single_class_is_a_clear_error():
    with pytest.raises(FaslandError, match="both live"):
        fas_metrics([0.1, 0.2], [1, 1])
