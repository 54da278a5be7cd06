"""fasland study --checkpoints: the analysis half of the study over models the user brings (small CNNs of
two architectures, imported with --format module, of the unseen-attack protocol P2R), with no training; its
attention section and its AUC per held-out attack kind, and a rerun that recomputes no attention map."""
import json

import pytest
import torch

import import_fixtures as fx
from reliability_fixtures import cli
from training.errors import FaslandError
from training.imports import import_checkpoint

TINY = ("x1d=-1:1:3,x2d=-1:1:3,interpolation=0:1:2,max_samples=4,top_k=1,tol=0.5,max_iter=2,trace_samples=2,"
        "attention_samples=8")
PROTOCOL = "P2R"      # unseen attacks: print in the sources I, M; replay in the target O


@pytest.fixture(scope="module")
def brought(tmp_path_factory):
    d = tmp_path_factory.mktemp("brought")
    for name, factory, seed in (("a", "tiny", 0), ("b", "tiny", 1), ("w", "tiny_wide", 2)):
        torch.save(fx.settle(getattr(fx, factory)(), 32, seed).state_dict(), d / f"{name}.pth")
        import_checkpoint("module", d / f"{name}.pth", d / f"{name}.pt", protocol=PROTOCOL, image_size=32,
                          model=f"import_fixtures:{factory}")
    return d


def test_study_of_brought_checkpoints_trains_nothing(brought, tmp_path, monkeypatch):
    import functools

    import training.trainer
    monkeypatch.setattr(training.trainer, "client_intervals", functools.partial(training.trainer.client_intervals, n_boot=50))
    out = tmp_path / "st"
    args = ["study", "--checkpoints", f"mine={brought / 'a.pt'},theirs={brought / 'b.pt'},gacfas={brought / 'w.pt'}",
            "--sizes", TINY, "--threads", "1", "--out", out]
    r = cli(args)
    assert r.code == 0, r.err[-3000:]
    report = (out / "report.md").read_text()
    assert "| mine |" in report and "| theirs |" in report and "| GAC-FAS |" in report
    assert "- update rules: mine: not trained here; theirs: not trained here; GAC-FAS: not trained here\n" in report
    for name in ("mine", "theirs", "gacfas"):
        assert not (out / name / "checkpoint.pt").exists() and not (out / name / "checkpoints").exists()   # nothing trained
        final = json.loads((out / name / "metrics.json").read_text())["final"]
        assert 0 <= final["target"]["hter"] <= 1 and "interval" in final["target"]
        for f in ("surface_1d.h5", "surface_2d.h5", "hessian.json", "conflicts.json"):
            assert (out / name / f).is_file()
    assert (out / "interpolation_mine_theirs.h5").is_file()         # same architecture: interpolated
    assert not (out / "interpolation_mine_gacfas.h5").exists()       # another architecture: not
    assert (out / "views" / "surfaces_2d.png").is_file() and any((out / "views").glob("gacfas_surface_2d*"))
    assert not any((out / "views").glob("*surface_pca*"))            # no trajectory, no PCA plane

    labels = {"mine": "mine", "theirs": "theirs", "gacfas": "GAC-FAS"}
    fractions, auc = report.split("## Attention")[1].split("Target AUC per held-out attack kind")
    rows = {l.split(" | ")[0][2:]: l.strip(" |").split(" | ")[1:] for l in fractions.splitlines()
            if l.startswith("| ") and not l.startswith("| method")}
    kinds = {l.split(" | ")[0][2:]: l.strip(" |").split(" | ")[1:] for l in auc.splitlines() if l.startswith("| ")}
    assert kinds.pop("method") == ["AUC replay"]                     # P2R holds out replay
    for name, label in labels.items():
        a = json.loads((out / name / "attention" / "attention.json").read_text())
        assert a["method"] == "gradcam" and a["samples"] == 8 and a["target"] == "O"
        sources = [a["fractions"][d]["all"] for d in ("I", "M")]
        t = a["fractions"]["O"]
        want = [t["all"]["face"], t["all"]["edge_hand"], t["all"]["background"], t["area"]["face"],
                *(sum(s[k] for s in sources) / 2 for k in ("face", "edge_hand", "background")),
                sum(a["fractions"][d]["area"]["face"] for d in ("I", "M")) / 2]
        assert rows[label] == [f"{v:.3f}" for v in want]
        by_kind = json.loads((out / name / "metrics.json").read_text())["final"]["target"]["auc_by_kind"]
        assert list(by_kind) == ["replay"] and kinds[label] == [f"{100 * by_kind['replay']:.2f}%"]
    assert (out / "views" / "attention.png").stat().st_size > 5000
    assert "views/attention.png" in report and 'src="views/attention.png"' in (out / "report.html").read_text()

    maps = {p: p.stat().st_mtime_ns for p in out.glob("*/attention/*")}
    r = cli(args)                                                      # rerun: every map reused
    assert r.code == 0, r.err[-3000:]
    assert {p: p.stat().st_mtime_ns for p in out.glob("*/attention/*")} == maps and len(maps) == 3 * 5


def test_brought_checkpoints_of_other_protocols_are_refused(brought, tmp_path):
    import_checkpoint("module", brought / "a.pth", tmp_path / "o.pt", protocol="OCM2I", image_size=32, model="import_fixtures:tiny")
    from analysis.study import study
    with pytest.raises(FaslandError, match="different protocols"):
        study(tmp_path / "st", checkpoints=f"a={brought / 'a.pt'},o={tmp_path / 'o.pt'}")
    with pytest.raises(FaslandError, match="distinct NAME"):
        study(tmp_path / "st", checkpoints=f"a={brought / 'a.pt'},a={brought / 'b.pt'}")
    assert not (tmp_path / "st").exists()
