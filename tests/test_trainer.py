"""The training loop on SynthFAS: run directory, metrics.json, resume equals an uninterrupted run."""
import json

import pytest
import torch

from training.errors import FaslandError
from training.presets import make_config
from training.trainer import train

TINY = {"data": {"image_size": 32}, "train": {"epochs": 2, "steps_per_epoch": 3, "batch_per_domain": 4, "eval_samples": 24}}


def tiny(method="erm", **train_overrides):
    return make_config("ICM2O", method, "demo", {**TINY, "train": {**TINY["train"], **train_overrides}})


def weights(path):
    return torch.load(path, weights_only=True)["model"]


def test_run_directory_and_metrics(tmp_path):
    metrics = train(tiny(), tmp_path / "run", progress=False)
    run = tmp_path / "run"
    for name in ("checkpoint.pt", "metrics.json", "config.yaml", "train.log", "steps.jsonl",
                 "checkpoints/epoch_000.pt", "checkpoints/epoch_001.pt", "checkpoints/epoch_002.pt"):
        assert (run / name).is_file(), name
    on_disk = json.loads((run / "metrics.json").read_text())
    assert on_disk == json.loads(json.dumps(metrics))
    assert [e["epoch"] for e in on_disk["evaluations"]] == [1, 2]
    for e in on_disk["evaluations"]:
        last = e["epoch"] == 2      # the final evaluation also carries client-bootstrap intervals
        assert set(e["target"]) == {"hter", "auc", "tpr_at_fpr5", "acc"} | ({"interval"} if last else set())
        assert set(e["sources"]) == {"hter", "auc"} | ({"interval"} if last else set())
        assert all(0 <= v <= 1 for part in ("target", "sources") for k, v in e[part].items() if k != "interval")
    for part, clients in (("target", 20), ("sources", 15 + 30 + 20)):    # O's test clients; I, C, M's
        ci = on_disk["final"][part]["interval"]
        assert ci["clients"] <= clients and ci["n_boot"] == 1000
        assert all(0 <= lo <= hi <= 1 for lo, hi in (ci["hter"], ci["auc"]))
    assert on_disk["final"] == on_disk["evaluations"][-1]
    ckpt = torch.load(run / "checkpoint.pt", weights_only=True)
    assert ckpt["epoch"] == 2 and ckpt["config"]["method"] == "erm" and ckpt["arch"]["name"] == "resnet18"
    steps = [json.loads(l) for l in (run / "steps.jsonl").read_text().splitlines()]
    assert len(steps) == 6 and "cos_0_1" in steps[0]       # gradient cosines every log_every steps
    assert torch.equal(weights(run / "checkpoint.pt")["head.weight"], weights(run / "checkpoints/epoch_002.pt")["head.weight"])


@pytest.mark.parametrize("method", ["sam", "rfm"])
def test_resume_after_a_crash_equals_an_uninterrupted_run(tmp_path, monkeypatch, method):
    config = tiny(method, augment="paper")
    train(config, tmp_path / "a", progress=False)

    from training.algorithms import ALGORITHMS
    real, calls = ALGORITHMS[method].update, {"n": 0}

    def crash_in_epoch_two(self, minibatches):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return real(self, minibatches)

    monkeypatch.setattr(ALGORITHMS[method], "update", crash_in_epoch_two)
    with pytest.raises(KeyboardInterrupt):
        train(config, tmp_path / "b", progress=False)
    assert not (tmp_path / "b" / "checkpoint.pt").exists()
    monkeypatch.setattr(ALGORITHMS[method], "update", real)
    train(config, tmp_path / "b", progress=False)
    a, b = weights(tmp_path / "a" / "checkpoint.pt"), weights(tmp_path / "b" / "checkpoint.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert (tmp_path / "a" / "steps.jsonl").read_text() == (tmp_path / "b" / "steps.jsonl").read_text()
    # a finished run is not trained again
    if method == "rfm":   # the depth head D resumes too
        da, db = (torch.load(p / "checkpoint.pt", weights_only=True)["algorithm"]["depth_head"] for p in (tmp_path / "a", tmp_path / "b"))
        assert all(torch.equal(da[k], db[k]) for k in da)
    before = (tmp_path / "b" / "checkpoint.pt").stat().st_mtime_ns
    train(config, tmp_path / "b", progress=False)
    assert (tmp_path / "b" / "checkpoint.pt").stat().st_mtime_ns == before


def test_another_config_in_the_same_folder_is_refused(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.yaml").write_text("protocol: OCM2I\n")
    with pytest.raises(FaslandError, match="another configuration"):
        train(tiny(), tmp_path / "run", progress=False)
    assert (tmp_path / "run" / "config.yaml").read_text() == "protocol: OCM2I\n"


def test_a_run_on_older_synthfas_images_is_refused_not_reused(tmp_path):
    from training.data import synth
    from training.trainer import prepare_run_dir, write_run_config
    config = tiny()
    assert config["data"]["synth_version"] == synth.VERSION
    older = json.loads(json.dumps(config))
    older["data"]["synth_version"] = synth.VERSION - 1
    prepare_run_dir(tmp_path / "run", older)
    write_run_config(tmp_path / "run", older)
    with pytest.raises(FaslandError, match=f"data.synth_version {synth.VERSION - 1} → {synth.VERSION}"):
        prepare_run_dir(tmp_path / "run", config)
    assert "synth_version" not in make_config("ICM2O", "erm", "demo", {"data": {"root": str(tmp_path)}})["data"]


@pytest.mark.parametrize("method", ["sam", "gacfas"])
def test_a_run_warm_started_from_erm_equals_one_trained_from_epoch_zero(tmp_path, method):
    """The warming epochs are plain ERM steps: starting from the ERM run's warming.pt gives, bit for bit, the
    weights, step log, evaluations and trajectory of a run that trained them itself."""
    erm = train(tiny("erm", epochs=3, minimizer_warming=2), tmp_path / "erm", progress=False)
    assert (tmp_path / "erm" / "warming.pt").is_file() and erm["evaluations"][1]["epoch"] == 2
    config = tiny(method, epochs=3, minimizer_warming=2)
    scratch = train(config, tmp_path / "scratch", progress=False)
    warm = train(config, tmp_path / "warm", progress=False, warm_from=[tmp_path / "erm"])
    a, b = tmp_path / "scratch", tmp_path / "warm"
    assert "taken from" in (b / "train.log").read_text() and "taken from" not in (a / "train.log").read_text()
    assert json.dumps(warm) == json.dumps(scratch)
    assert (a / "steps.jsonl").read_text() == (b / "steps.jsonl").read_text()
    assert [json.loads(l)["rule"] for l in (b / "steps.jsonl").read_text().splitlines()] == ["erm-warming"] * 6 + [method] * 3
    for name in ("checkpoint.pt", "checkpoints/epoch_000.pt", "checkpoints/epoch_001.pt", "checkpoints/epoch_002.pt",
                 "checkpoints/epoch_003.pt"):
        ca, cb = (torch.load(d / name, weights_only=True) for d in (a, b))
        assert all(torch.equal(ca["model"][k], cb["model"][k]) for k in ca["model"]), name
        assert json.dumps(ca["metrics"]) == json.dumps(cb["metrics"]) and ca["config"] == cb["config"] == config, name
    # the ERM run itself differs after the warming: the method's own epochs did train
    e = weights(tmp_path / "erm" / "checkpoint.pt")
    assert not torch.equal(e["head.weight"], weights(b / "checkpoint.pt")["head.weight"])


def test_warm_start_needs_the_same_configuration_and_an_erm_warming(tmp_path):
    from training.commands import train as train_command
    from training.trainer import find_warming

    train(tiny("erm", epochs=2, minimizer_warming=1), tmp_path / "erm", progress=False)
    state, run, _ = find_warming(tiny("sam", epochs=2, minimizer_warming=1), [tmp_path / "nothing", tmp_path / "erm"])
    assert run == tmp_path / "erm" and state["epoch"] == 1
    other = make_config("ICM2O", "sam", "demo", {**TINY, "train": {**TINY["train"], "minimizer_warming": 1},
                                                 "hparams": {"lr": 0.02}})
    assert find_warming(other, [tmp_path / "erm"])[0] is None
    assert "hparams.lr 0.01 → 0.02" in find_warming(other, [tmp_path / "erm"])[2][0]
    assert find_warming(tiny("rfm", epochs=2, minimizer_warming=1), [tmp_path / "erm"])[0] is None   # RFM warms multi-task
    # a run that keeps the trajectory more densely than the source kept it cannot take the source's
    (tmp_path / "erm" / "checkpoints" / "epoch_001.pt").unlink()
    assert "lacks checkpoints/epoch_001.pt" in find_warming(tiny("sam", epochs=2, minimizer_warming=1), [tmp_path / "erm"])[2][0]
    with pytest.raises(FaslandError, match="--warm-from .* warmed with another configuration .*train.batch_per_domain 4 → 8"):
        train_command("ICM2O", "sam", tmp_path / "sam", config={**TINY, "train": {**TINY["train"], "batch_per_domain": 8,
                                                                                  "minimizer_warming": 1}},
                      warm_from=tmp_path / "erm", threads=1)
    assert not (tmp_path / "sam").exists()
