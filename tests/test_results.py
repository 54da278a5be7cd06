"""The result schemas (analysis.results): what `fasland hessian` / `conflicts` write round-trips through
HessianResult / ConflictResult; older, unknown and malformed files get one sentence."""
import json

import pytest

from analysis.results import ConflictResult, HessianResult
from export_fixtures import write_conflicts, write_hessian
from training.errors import FaslandError


def test_hessian_result_round_trips_and_keeps_sections_it_does_not_name(tmp_path):
    data = write_hessian(tmp_path / "h.json")
    data["future_section"] = {"values": [9.0, 11.0]}      # a newer writer's section
    r = HessianResult.from_json(json.loads(json.dumps(data)))
    assert r.eigenvalues == data["eigenvalues"] and r.per_domain["I"]["lambda_max"] == 4.0
    assert r.extra == {"future_section": data["future_section"]}
    assert r.to_json() == data and r.to_json()["version"] == HessianResult.VERSION


def test_conflict_result_round_trips_and_lists_its_points(tmp_path):
    data = write_conflicts(tmp_path / "c.json", epochs=2)
    r = ConflictResult.read(tmp_path / "c.json")
    assert r.to_json() == data
    assert list(r.records()) == ["theta", "sam", "ascent I", "ascent C", "ascent M", "generalization"]
    assert list(r.records(r.trajectory[1])) == list(r.records())


def test_the_command_writes_what_its_schema_reads(tmp_path, monkeypatch):
    from analysis.commands import conflicts, hessian
    from test_conflicts import make_run, small_world

    small_world(monkeypatch)
    make_run(tmp_path / "run", epochs=(1,))
    ckpt = tmp_path / "run" / "checkpoint.pt"
    h = hessian(ckpt, tmp_path / "h.json", top_k=1, per_domain=True, threads=1)
    assert HessianResult.read(tmp_path / "h.json") == h
    c = conflicts(ckpt, tmp_path / "c.json", at="theta", trajectory=tmp_path / "run", threads=1)
    assert ConflictResult.read(tmp_path / "c.json") == c and len(c.trajectory) == 1


@pytest.mark.parametrize("data, words", [
    ({"command": "hessian", "eigenvalues": [1.0]}, ["older fasland", "no result version", "rerun 'fasland hessian'"]),
    ({"command": "hessian", "version": 7}, ["version 7", "does not know", "reads version 1"]),
    ({"command": "conflicts", "version": 1}, ["not a result of 'fasland hessian'"]),
    ({"command": "hessian", "version": 1, "eigenvalues": ["big"]}, ["eigenvalues is not a list of numbers"]),
    ({"command": "hessian", "version": 1, "density": {"grid": [0, 1], "density": [1]}}, ["density needs grid and density"]),
])
def test_older_unknown_or_malformed_hessian_files_get_one_sentence(tmp_path, data, words):
    path = tmp_path / "h.json"
    path.write_text(json.dumps(data))
    with pytest.raises(FaslandError) as e:
        HessianResult.read(path)
    msg = str(e.value)
    assert str(path) in msg and "\n" not in msg and all(w in msg for w in words), msg


def test_a_conflict_matrix_of_the_wrong_size_is_refused(tmp_path):
    data = write_conflicts(tmp_path / "c.json", epochs=1)
    data["trajectory"][0]["sam"]["cosines"] = [[1.0]]
    with pytest.raises(FaslandError, match="sam has no 3×3 cosine matrix"):
        ConflictResult.from_json(data, "c.json")
