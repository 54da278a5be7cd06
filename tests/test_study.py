"""The study's own numbers: surface width from a 1-D curve, read back from the file."""
import h5py
import numpy as np
import pytest

from analysis.study import axis_around, surface_width


def curve(path, a, loss):
    with h5py.File(path, "w") as f:
        f["xcoordinates"], f["train_loss"] = a, loss


def test_width_of_a_parabola_is_its_closed_form(tmp_path):
    a = np.linspace(-1, 1, 401)
    curve(tmp_path / "c.h5", a, 0.3 + 2.0 * a ** 2)
    width, open_ended = surface_width(tmp_path / "c.h5", 0.1)
    assert width == pytest.approx(2 * np.sqrt(0.1 / 2.0), abs=1e-4) and not open_ended


def test_flat_curve_is_a_lower_bound_and_nan_stops_the_interval(tmp_path):
    a = np.linspace(-1, 1, 21)
    curve(tmp_path / "flat.h5", a, np.full_like(a, 0.5))
    assert surface_width(tmp_path / "flat.h5", 0.1) == (pytest.approx(2.0), True)
    loss = np.full_like(a, 0.5)
    loss[15:] = np.nan                        # diverged beyond a = 0.5
    curve(tmp_path / "nan.h5", a, loss)
    assert surface_width(tmp_path / "nan.h5", 0.1) == (pytest.approx(1.0 + a[14]), True)   # still open at a = −1


def test_pca_axis_covers_the_path_with_margin():
    lo, hi, n = axis_around(np.array([-2.0, 0.0, 6.0]), 9).split(":")
    assert float(lo) == pytest.approx(-4.0) and float(hi) == pytest.approx(8.0) and n == "9"


def test_attention_section_averages_the_sources_and_marks_unknown_regions(tmp_path):
    """A SynthFAS run (every region known) beside a real-data one (only the face): the sources' cells are the
    mean of the source domains, an unknown region is '–', and a protocol without held-out kinds has no AUC table."""
    import json

    from analysis.study import attention_section

    def domain(face, edge_hand, background, area):
        return {"all": {"face": face, "edge_hand": edge_hand, "background": background}, "area": {"face": area}}

    runs = {"synth": {"A": domain(0.5, 0.1, 0.2, 0.3), "B": domain(0.7, 0.3, 0.0, 0.5), "T": domain(0.25, 0.5, 0.125, 0.375)},
            "real": {"A": domain(0.6, None, None, 0.3), "B": domain(0.8, None, None, 0.3), "T": domain(0.9, None, None, 0.3)}}
    for name, fractions in runs.items():
        (tmp_path / name / "attention").mkdir(parents=True)
        (tmp_path / name / "attention" / "attention.json").write_text(json.dumps({"target": "T", "fractions": fractions}))
        (tmp_path / name / "metrics.json").write_text(json.dumps({"final": {"target": {"auc": 0.9}}}))
    md = attention_section([("S", tmp_path / "synth"), ("R", tmp_path / "real")], "attention.png")
    rows = {l.split(" | ")[0][2:]: l.strip(" |").split(" | ")[1:] for l in md.splitlines() if l.startswith("| ")}
    assert rows["S"] == ["0.250", "0.500", "0.125", "0.375", "0.600", "0.200", "0.100", "0.400"]
    assert rows["R"] == ["0.900", "–", "–", "0.300", "0.700", "–", "–", "0.300"]
    assert "](views/attention.png)" in md and "AUC per held-out" not in md


def test_size_switches_choose_what_the_hessian_and_conflicts_steps_compute(tmp_path, monkeypatch):
    """The study's sizes decide the commands' work: λ_min and per-block λ_max on or off, block traces, the sample
    growth curve and the ascent points along the trajectory (the commands themselves are tested elsewhere)."""
    import analysis.commands as commands
    from analysis.study import SETTINGS, Study, parse_sizes

    calls = {}
    monkeypatch.setattr(commands, "hessian", lambda ckpt, out, **kw: calls.setdefault("hessian", kw))
    monkeypatch.setattr(commands, "hessian_summary", lambda r, out: "")
    monkeypatch.setattr(commands, "conflicts", lambda ckpt, out, **kw: calls.setdefault("conflicts", kw))
    monkeypatch.setattr(commands, "conflicts_summary", lambda r, out: "")
    options = {"data": None, "config": None, "device": "cpu", "threads": 1, "figures": None, "keep_checkpoints": None}
    for spec, want in ((None, dict(bottom_k=1, per_block=True, per_block_trace=False, sample_growth=False, at="theta")),
                       ("bottom_k=0,per_block=0", dict(bottom_k=0, per_block=False, per_block_trace=False, sample_growth=False, at="theta")),
                       ("block_trace=1,sample_growth=1,trajectory_ascent=1",
                        dict(bottom_k=1, per_block=True, per_block_trace=True, sample_growth=True, at="both"))):
        calls.clear()
        st = Study("ICM2O", ["erm"], "demo", parse_sizes(spec, SETTINGS["demo"]), tmp_path, options)
        st.sharpness("erm")
        st.conflicts("erm")
        h, c = calls["hessian"], calls["conflicts"]
        assert {k: h[k] for k in ("bottom_k", "per_block", "per_block_trace", "sample_growth")} == \
               {k: want[k] for k in ("bottom_k", "per_block", "per_block_trace", "sample_growth")}
        assert c["trajectory_at"] == want["at"] and c["at"] == "both"
