"""`fasland study --seeds`: a study SIGKILLed during its second seed resumes, reusing the finished seed; the
second seed's model is exactly `fasland train --seed 1`; the top report's means are the seeds' means; the
report's difference table marks overlapping intervals as within noise."""
import json
import re
import time

import pytest
import yaml

from reliability_fixtures import assert_same_weights, cli, kill_tree, start, wait_for, weights
from test_study_kill import SIZES, TINY_STUDY, mtime


def seeds_args(config, out) -> list:
    return ["study", "--protocol", "ICM2O", "--methods", "erm", "--seeds", "0,1", "--config", config, "--sizes", SIZES,
            "--threads", "1", "--out", out]


def test_seeds_study_killed_in_its_second_seed_resumes(tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY_STUDY))
    study = tmp_path / "study"
    started, p = time.time(), start(seeds_args(config, study))
    try:
        assert wait_for(lambda: mtime(study / "seed_1" / "erm" / "checkpoints" / "epoch_000.pt") > started, p, timeout=600), \
            p.communicate()[1][-3000:]
    finally:
        kill_tree(p)
    assert (study / "seed_0" / "report.md").is_file() and not (study / "seed_1" / "report.md").exists()
    assert not (study / "report.md").exists()
    first = {q: q.stat().st_mtime_ns for q in (study / "seed_0").rglob("*") if q.suffix in (".pt", ".h5")}
    analyses = {q: q.read_text() for q in (study / "seed_0").glob("*/*.json")}

    r = cli(seeds_args(config, study))
    assert r.code == 0, r.err[-3000:]
    assert {q: q.stat().st_mtime_ns for q in first} == first          # the finished seed is reused, not redone
    assert {q: q.read_text() for q in analyses} == analyses
    assert not (study / "erm").exists()                               # several seeds: nothing in the single-seed layout

    direct = tmp_path / "direct"
    r = cli(["train", "--protocol", "ICM2O", "--method", "erm", "--config", config, "--threads", "1", "--seed", "1",
             "--out", direct])
    assert r.code == 0, r.err[-2000:]
    assert_same_weights(study / "seed_1" / "erm" / "checkpoint.pt", direct / "checkpoint.pt")
    w0, w1 = weights(study / "seed_0" / "erm" / "checkpoint.pt"), weights(direct / "checkpoint.pt")
    assert any(not w0[k].equal(w1[k]) for k in w0)

    hters = [json.loads((study / f"seed_{s}" / "erm" / "metrics.json").read_text())["final"]["target"]["hter"] for s in (0, 1)]
    report = (study / "report.md").read_text()
    mean_row = next(l for l in report.splitlines() if l.startswith("| ERM |"))
    mean, std = map(float, re.match(r"\| ERM \| ([\d.]+)% ± ([\d.]+)", mean_row).groups())
    assert mean == pytest.approx(100 * sum(hters) / 2, abs=0.006)
    assert std == pytest.approx(100 * abs(hters[0] - hters[1]) / 2 ** 0.5, abs=0.006)
    assert "| 0 | ERM |" in report and "| 1 | ERM |" in report


def test_noise_table_marks_overlap_as_within_noise():
    from analysis.study import HEADLINE, noise_table

    base = {k: None for k, _, _ in HEADLINE}
    a = {**base, "method": "A", "hter": 0.20, "auc": 0.90, "ci": {"hter": [0.15, 0.25], "auc": [0.85, 0.95]}}
    b = {**base, "method": "B", "hter": 0.22, "auc": 0.99, "ci": {"hter": [0.17, 0.27], "auc": [0.98, 1.0]}}
    row = noise_table([a, b]).splitlines()[-1].split(" | ")
    assert row[0] == "| A − B" and row[1] == "-2.00 pp *within noise*" and row[2] == "-9.00 pp resolved"
    assert row[3] == "–"


def test_bad_seeds_are_one_sentence(tmp_path):
    for spec in ("0,x", "1,1", "-1"):
        r = cli(["study", "--seeds", spec, "--out", tmp_path / "st"])
        assert r.code == 2 and len(r.error_lines()) == 1 and "--seeds" in r.error_lines()[0], r.err
    assert not (tmp_path / "st").exists()
