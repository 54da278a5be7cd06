"""fasland study --checkpoints: the analysis half of the study over models the user brings (small CNNs of
two architectures, imported with --format module), with no training."""
import json

import pytest
import torch

import import_fixtures as fx
from reliability_fixtures import cli
from training.errors import FaslandError
from training.imports import import_checkpoint

TINY = "x1d=-1:1:3,x2d=-1:1:3,interpolation=0:1:2,max_samples=4,top_k=1,tol=0.5,max_iter=2,trace_samples=2"


@pytest.fixture(scope="module")
def brought(tmp_path_factory):
    d = tmp_path_factory.mktemp("brought")
    for name, factory, seed in (("a", "tiny", 0), ("b", "tiny", 1), ("w", "tiny_wide", 2)):
        torch.save(fx.settle(getattr(fx, factory)(), 32, seed).state_dict(), d / f"{name}.pth")
        import_checkpoint("module", d / f"{name}.pth", d / f"{name}.pt", protocol="ICM2O", image_size=32,
                          model=f"import_fixtures:{factory}")
    return d


def test_study_of_brought_checkpoints_trains_nothing(brought, tmp_path, monkeypatch):
    import functools

    import training.trainer
    monkeypatch.setattr(training.trainer, "client_intervals", functools.partial(training.trainer.client_intervals, n_boot=50))
    out = tmp_path / "st"
    r = cli(["study", "--checkpoints", f"mine={brought / 'a.pt'},theirs={brought / 'b.pt'},gacfas={brought / 'w.pt'}",
             "--sizes", TINY, "--threads", "1", "--out", out])
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


def test_brought_checkpoints_of_other_protocols_are_refused(brought, tmp_path):
    import_checkpoint("module", brought / "a.pth", tmp_path / "o.pt", protocol="OCM2I", image_size=32, model="import_fixtures:tiny")
    from analysis.study import study
    with pytest.raises(FaslandError, match="different protocols"):
        study(tmp_path / "st", checkpoints=f"a={brought / 'a.pt'},o={tmp_path / 'o.pt'}")
    with pytest.raises(FaslandError, match="distinct NAME"):
        study(tmp_path / "st", checkpoints=f"a={brought / 'a.pt'},a={brought / 'b.pt'}")
    assert not (tmp_path / "st").exists()
