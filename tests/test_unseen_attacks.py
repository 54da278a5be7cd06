"""Unseen-attack protocols: what the sources train on and what the target tests, the AUC per held-out
attack kind, and real data (no attack labels) refused."""
import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from training.data import load_domain, synth
from training.data.protocols import PROTOCOLS, UNSEEN_ATTACKS, load_protocol_domain
from training.errors import FaslandError
from training.metrics import auc_by_kind
from training.presets import make_config
from training.probe import load_probe
from training.trainer import SourceBatches

SIZE = 32
TINY = {"data": {"image_size": SIZE}, "train": {"epochs": 1, "steps_per_epoch": 2, "batch_per_domain": 4, "eval_samples": 48}}


@pytest.mark.parametrize("protocol", sorted(UNSEEN_ATTACKS))
def test_sources_hold_no_held_out_kind_and_the_target_only_those(protocol):
    train_kinds, test_kinds = UNSEEN_ATTACKS[protocol]
    sources, target = PROTOCOLS[protocol]
    config = make_config(protocol, "erm", "demo", TINY)
    batches = SourceBatches(config, "cpu")
    dropped = 0
    for name, dom in zip(sources, (draw.dom for draw in batches.draws)):
        full = load_domain("synth", name, "train", SIZE)
        kinds = synth.load_annotations(name, "train", SIZE).kind_names()
        keep = [i for i, k in enumerate(kinds) if k == "live" or k in train_kinds]
        assert torch.equal(dom.images, full.images[keep]) and torch.equal(dom.labels, full.labels[keep])
        assert {kinds[i] for i in keep} <= {"live", *train_kinds}
        dropped += len(kinds) - len(keep)
    assert dropped > 0 or protocol == "PR2CW"       # PR2CW's sources have no cut or warped photo to drop
    probe = load_probe(config, max_samples=None)
    assert set(probe.kinds[target]) == {"live", *test_kinds}
    full = load_domain("synth", target, "test", SIZE)
    kinds = synth.load_annotations(target, "test", SIZE).kind_names()
    held = [i for i, k in enumerate(kinds) if k == "live" or k in test_kinds]
    assert len(held) < len(kinds)
    assert torch.equal(probe.domains[target][1].cpu(), full.labels[held])
    for s in sources:
        assert set(probe.kinds[s]) <= {"live", *train_kinds}


def test_auc_by_kind_is_live_against_each_kind_alone():
    rng = np.random.default_rng(0)
    kinds = np.array(["live"] * 10 + ["cut"] * 6 + ["warped"] * 4)
    labels = (kinds == "live").astype(float)
    scores = rng.normal(size=20) + labels
    got = auc_by_kind(scores, labels, kinds)
    assert set(got) == {"cut", "warped"}
    for k in got:
        sel = (kinds == "live") | (kinds == k)
        assert got[k] == pytest.approx(roc_auc_score(labels[sel], scores[sel]))


def test_train_reports_the_auc_per_held_out_kind(tmp_path):
    from training.trainer import train

    metrics = train(make_config("P2R", "erm", "demo", TINY), tmp_path / "run", progress=False)
    assert set(metrics["final"]["target"]["auc_by_kind"]) == {"replay"}
    assert metrics["final"]["target"]["auc_by_kind"]["replay"] == pytest.approx(metrics["final"]["target"]["auc"])


def test_real_data_has_no_attack_labels(tmp_path):
    with pytest.raises(FaslandError, match="PR2CW.*no attack labels.*--data synth"):
        load_protocol_domain("PR2CW", str(tmp_path), "I", "train")
