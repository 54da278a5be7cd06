"""Kill at any moment, for `fasland study`: a tiny study is SIGKILLed (its whole process tree) while it
trains, while it fills a surface and while it writes hessian.json; every file left behind is readable
and agrees with an uninterrupted study, and the rerun finishes with exactly that study's results. A
rerun of the finished study changes none of them."""
import json
import random
import signal
import time

import numpy as np
import pytest
import yaml

from reliability_fixtures import (TINY_TRAIN, assert_readable, assert_same_weights, cli, datasets, kill_tree,
                                  stale_temporaries, start, wait_for)
from test_reliability_kill import hessian_numbers

METHODS = ("gacfas",)   # one method: its ascent points exercise every conflicts section
# 2 epochs: checkpoints/epoch_000..002 are the three a trajectory PCA needs
TINY_STUDY = {"data": {"image_size": 32}, "train": {**TINY_TRAIN["train"], "epochs": 2}}
SIZES = "x1d=-1:1:3,x2d=-1:1:3,interpolation=0:1:3,pca_points=2,max_samples=4,top_k=1,max_iter=2,trace_samples=2"


def study_args(config, out) -> list:
    return ["study", "--protocol", "ICM2O", "--methods", ",".join(METHODS), "--config", config, "--sizes", SIZES,
            "--threads", "1", "--out", out]


def mtime(path) -> float:
    """0 while the file does not exist (or is being replaced)."""
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def surfaces(folder) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*.h5"))


def same_arrays(got: dict, want: dict, done=None) -> bool:
    """Each array of `got` equals `want`'s; the per-point ones only where `done` (the points a file holds)."""
    def part(a):
        a = np.asarray(a)
        return a[done] if done is not None and a.shape == done.shape else a

    def same(a, b):    # NaN equals NaN in numeric arrays; strings (attention.h5's attack kinds) compare as they are
        return np.array_equal(a, b, equal_nan=a.dtype.kind in "fc")

    return all(same(part(got[k]), part(want[k])) for k in got)


def surface_data(path) -> dict:
    """Every dataset but `dir_file` (the direction file's path, which names the study folder)."""
    return {k: v for k, v in datasets(path).items() if k != "dir_file"}


def conflict_numbers(path) -> dict:
    r = json.loads(path.read_text())
    return {"summary": r.get("summary"),
            "trajectory": [(e["checkpoint"], json.dumps(e["summary"])) for e in r.get("trajectory", [])]}


def table(path) -> list[str]:
    return [l for l in path.read_text().splitlines() if l.startswith("|")]


def assert_left_behind_agrees(study, reference) -> None:
    """What a killed study left: readable, and each finished piece equal to the uninterrupted study's."""
    for name in assert_readable(study):
        path, ref = study / name, reference / name
        if name.endswith(".pt") and not name.endswith("resume.pt"):
            assert_same_weights(path, ref)
        elif name.endswith(".h5"):
            got, want = surface_data(path), surface_data(ref)
            done = got.pop("done").astype(bool) if "done" in got else None     # direction files are whole
            assert got.keys() <= want.keys() and same_arrays(got, want, done), name
        elif name.endswith("hessian.json"):
            got, want = hessian_numbers(path), hessian_numbers(ref)
            assert all(got["sections"][s] == want["sections"][s] for s in got["sections"]), name
            assert all(v == want["per_domain"][d] for d, v in (got["per_domain"] or {}).items()), name
        elif name.endswith("conflicts.json"):
            got, want = conflict_numbers(path), conflict_numbers(ref)
            assert got["summary"] in (None, want["summary"]) and set(got["trajectory"]) <= set(want["trajectory"]), name


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    path = tmp_path_factory.mktemp("study_config") / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY_STUDY))
    return path


def test_study_killed_three_times_then_rerun_equals_uninterrupted(config, tmp_path):
    reference = tmp_path / "reference"
    began = time.monotonic()
    p = start(study_args(config, reference))
    out, err = p.communicate(timeout=900)
    assert p.returncode == 0, (out + err)[-3000:]
    first_run = time.monotonic() - began

    study = tmp_path / "study"
    rng = random.Random(8)
    moments = (("gacfas/checkpoints/epoch_000.pt", rng.uniform(0.0, 2.0)),   # while GAC-FAS trains
               ("gacfas/.surface_2d.h5.journal", rng.uniform(0.0, 0.5)),    # while a surface is being filled
               ("gacfas/hessian.json", rng.uniform(0.0, 0.2)))              # between two sections of hessian.json
    for name, delay in moments:
        started, p = time.time(), start(study_args(config, study))
        try:
            assert wait_for(lambda: mtime(study / name) > started, p, timeout=600), p.communicate()[1][-3000:]
            time.sleep(delay)
        finally:
            kill_tree(p)
        assert p.returncode == -signal.SIGKILL, f"the study finished before the kill after {name}"
        assert_left_behind_agrees(study, reference)
    assert len(hessian_numbers(study / "gacfas" / "hessian.json")["sections"]) < 6   # the last kill came between sections

    r = cli(study_args(config, study))
    assert r.code == 0, r.err[-3000:]
    assert stale_temporaries(study) == []
    for m in METHODS:
        assert_same_weights(study / m / "checkpoint.pt", reference / m / "checkpoint.pt")
        assert hessian_numbers(study / m / "hessian.json") == hessian_numbers(reference / m / "hessian.json")
        assert conflict_numbers(study / m / "conflicts.json") == conflict_numbers(reference / m / "conflicts.json")
    assert surfaces(study) == surfaces(reference)
    for name in surfaces(reference):
        got, want = surface_data(study / name), surface_data(reference / name)
        assert got.keys() == want.keys() and same_arrays(got, want), name
    assert table(study / "report.md") == table(reference / "report.md")

    results = [p for p in study.rglob("*") if p.suffix in (".pt", ".h5")]
    before = {p: p.stat().st_mtime_ns for p in results}
    analyses = {p: p.read_text() for p in study.glob("*/*.json")}
    began = time.monotonic()
    r = cli(study_args(config, study))
    rerun = time.monotonic() - began
    assert r.code == 0, r.err[-3000:]
    assert {p: p.stat().st_mtime_ns for p in results} == before
    assert {p: p.read_text() for p in analyses} == analyses     # hessian, conflicts: every part reused
    assert rerun < 0.3 * first_run, f"rerunning the finished study took {rerun:.0f} s, the study itself {first_run:.0f} s"


def test_sizes_override_the_preset_and_bad_items_are_one_sentence(tmp_path):
    from analysis.study import SETTINGS, parse_sizes

    s = parse_sizes("x2d=-1:1:5, max_samples=8,tol=1e-2", SETTINGS["demo"])
    assert s == {**SETTINGS["demo"], "x2d": "-1:1:5", "max_samples": 8, "tol": 0.01}
    for item, words in (("foo=1", ["'foo'", "use one of", "max_iter"]), ("max_iter=abc", ["max_iter=abc", "whole number"]),
                        ("tol=small", ["tol=small", "number"]), ("x1d=-1:1", ["x1d=-1:1", "MIN:MAX:N"])):
        r = cli(["study", "--sizes", item, "--out", tmp_path / "st"])
        assert r.code != 0 and len(r.error_lines()) == 1, r.err
        assert all(w in r.error_lines()[0] for w in words), r.err
    assert not (tmp_path / "st").exists()
