"""Issue 16, the quiet traps of `fasland train`, through the commands as a user types them: a method that
would train as another, relative paths from another folder, run folders that a failed start or a longer run
must not lock, every mismatch named key by key, the trajectory checkpoints kept, labels as whole words."""
import json

import pytest
import torch
import yaml

from reliability_fixtures import TINY_TRAIN, assert_same_weights, cli, train_args, write_dataset, write_tiny_config


def read_steps(run) -> list[dict]:
    return [json.loads(l) for l in (run / "steps.jsonl").read_text().splitlines()]


def trajectory(run) -> list[str]:
    return sorted(p.name for p in (run / "checkpoints").glob("epoch_*.pt"))


@pytest.fixture
def tiny(tmp_path):
    return write_tiny_config(tmp_path / "tiny.yaml")


# ---- 1. a method that would train as another ---------------------------------------------------------------

def test_sam_whose_epochs_are_all_warming_is_refused_with_the_reason(tiny, tmp_path):
    r = cli(train_args(tiny, tmp_path / "run", "sam") + ["--epochs", "1"])
    assert r.code == 2, r.err[-2000:]
    [sentence] = r.error_lines()
    assert "train.epochs = 1 ≤ train.minimizer_warming = 1" in sentence and "plain ERM" in sentence and "--epochs 2" in sentence
    assert not (tmp_path / "run").exists()


def test_warming_only_when_the_config_asks_for_it_is_said_at_the_start_and_in_the_log(tmp_path):
    config = tmp_path / "warm.yaml"
    config.write_text(yaml.safe_dump({"train": {**TINY_TRAIN["train"], "epochs": 1, "minimizer_warming": 1}}))
    r = cli(train_args(config, tmp_path / "run", "gacfas"))
    assert r.code == 0, r.err[-2000:]
    assert "warning: gacfas never applies its own update" in r.err
    log = (tmp_path / "run" / "train.log").read_text()
    assert "WARNING gacfas never applies its own update" in log and "update rules: epoch 1 erm-warming" in log
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["update_rules"] == ["erm-warming"]
    assert {s["rule"] for s in read_steps(tmp_path / "run")} == {"erm-warming"}


def test_update_rules_of_the_paper_recipe():
    from training.presets import make_config
    from training.trainer import check_update_rules, describe_rules, update_rule

    config = make_config("ICM2O", "gacfas", "paper")
    rules = [update_rule(e, config) for e in range(config["train"]["epochs"])]
    assert describe_rules(rules) == "epochs 1 head-only, 2–10 erm-warming, 11–150 gacfas"
    assert check_update_rules(config) is None
    erm = make_config("ICM2O", "erm", "paper")
    assert {update_rule(e, erm) for e in range(150)} == {"head-only", "erm"}   # ERM's warming is ERM
    with pytest.raises(Exception, match="train.head_only_epochs = 1"):
        check_update_rules(make_config("ICM2O", "erm", "paper", {"train": {"epochs": 1}}))


# ---- 3 and 8. a longer run continues; --keep-checkpoints -----------------------------------------------------

def test_a_larger_epochs_continues_a_finished_run_bit_exactly(tiny, tmp_path):
    """SAM, 3 epochs kept every 2nd, continued to 4, equals 4 epochs from the start: weights, steps, metrics,
    the trajectory kept (epoch_003, the old last one, goes). The LR schedule depends on the epoch only."""
    a, b = tmp_path / "a", tmp_path / "b"
    keep = ["--keep-checkpoints", "2"]
    assert cli(train_args(tiny, a, "sam") + keep + ["--epochs", "3"]).code == 0
    assert trajectory(a) == ["epoch_000.pt", "epoch_002.pt", "epoch_003.pt"]
    r = cli(train_args(tiny, a, "sam") + keep + ["--epochs", "4"])
    assert r.code == 0, r.err[-2000:]
    assert "continued to 4" in (a / "train.log").read_text()
    assert cli(train_args(tiny, b, "sam") + keep + ["--epochs", "4"]).code == 0
    assert_same_weights(a / "checkpoint.pt", b / "checkpoint.pt")
    assert (a / "steps.jsonl").read_text() == (b / "steps.jsonl").read_text()
    ma, mb = (json.loads((d / "metrics.json").read_text()) for d in (a, b))
    assert ma == mb and ma["update_rules"] == ["erm-warming", "sam", "sam", "sam"]
    assert [s["rule"] for s in read_steps(a)][::3] == ma["update_rules"]
    assert trajectory(a) == trajectory(b) == ["epoch_000.pt", "epoch_002.pt", "epoch_004.pt"]
    assert yaml.safe_load((a / "config.yaml").read_text()) == yaml.safe_load((b / "config.yaml").read_text())

    # another --keep-checkpoints on the finished run: nothing retrained, the trajectory thinned
    before = (b / "checkpoint.pt").stat().st_mtime_ns
    assert cli(train_args(tiny, b, "sam") + ["--keep-checkpoints", "4", "--epochs", "4"]).code == 0
    assert (b / "checkpoint.pt").stat().st_mtime_ns == before
    assert trajectory(b) == ["epoch_000.pt", "epoch_004.pt"]
    assert yaml.safe_load((b / "config.yaml").read_text())["train"]["save_every"] == 4

    # a shorter run is not this one
    r = cli(train_args(tiny, b, "sam") + ["--epochs", "2"])
    assert r.code == 2 and "trained for 4 epochs" in r.err and "--epochs 4" in r.err


def test_every_differing_key_is_named_with_both_values(tiny, tmp_path):
    run = tmp_path / "run"
    assert cli(train_args(tiny, run) + ["--epochs", "1"]).code == 0
    r = cli(train_args(tiny, run) + ["--epochs", "1", "--seed", "3", "--image-size", "40"])
    assert r.code == 2
    [sentence] = r.error_lines()
    assert "data.image_size 32 → 40" in sentence and "train.seed 0 → 3" in sentence and "…" not in sentence


def test_a_failed_start_writes_nothing_and_the_fixed_retry_runs(tiny, tmp_path):
    run = tmp_path / "run"
    r = cli(train_args(tiny, run) + ["--data", tmp_path / "nodata"])
    assert r.code == 2 and not run.exists()        # no config.yaml to lock the folder to the bad settings
    write_dataset(tmp_path / "bad", skip=("casia", "test", "spoof"))
    assert cli(train_args(tiny, run) + ["--data", tmp_path / "bad"]).code == 2
    assert not (run / "config.yaml").exists()
    assert cli(train_args(tiny, run) + ["--epochs", "1"]).code == 0


# ---- 2. paths resolved -------------------------------------------------------------------------------------

def test_relative_paths_are_stored_resolved_and_work_from_another_folder(tiny, tmp_path, monkeypatch):
    here, there = tmp_path / "here", tmp_path / "there"
    here.mkdir(), there.mkdir()
    write_dataset(here / "fas")
    monkeypatch.chdir(here)
    r = cli(train_args(tiny, "run") + ["--epochs", "1", "--data", "fas"])
    assert r.code == 0, r.err[-2000:]
    run = here / "run"
    assert yaml.safe_load((run / "config.yaml").read_text())["data"]["root"] == str(here / "fas")
    assert torch.load(run / "checkpoint.pt", weights_only=True)["config"]["data"]["root"] == str(here / "fas")

    monkeypatch.chdir(there)      # the same folders, given absolute: the same run, reused
    before = (run / "checkpoint.pt").stat().st_mtime_ns
    assert cli(train_args(tiny, run) + ["--epochs", "1", "--data", here / "fas"]).code == 0
    assert (run / "checkpoint.pt").stat().st_mtime_ns == before
    surface = ["surface", "--checkpoint", "../here/run/checkpoint.pt", "--x", "-1:1:2", "--max-samples", "2",
               "--threads", "1", "--out", "s.h5"]
    r = cli(surface)
    assert r.code == 0, r.err[-2000:]
    from landscape.store import read_store
    stored = read_store(there / "s.h5").provenance
    assert stored["checkpoint"] == str(run / "checkpoint.pt") and stored["dir_file"] == str(there / "s.dirs.h5")

    (here / "fas").rename(here / "moved")     # the data root is gone: name it and --data DIR, never synth
    r = cli(surface[:-1] + ["s2.h5"])
    assert r.code == 2
    [sentence] = r.error_lines()
    assert str(here / "fas") in sentence and "--data DIR" in sentence and "synth" not in sentence


# ---- 5. BatchNorm mode made visible ------------------------------------------------------------------------

def checkpoint_with(path, sources_hter: float, head_bias: float):
    """A fresh ResNet18 whose head bias pushes every logit to one side (accuracy = the live share, chance)
    and whose run metrics claim the given sources HTER."""
    from reliability_fixtures import ARCH, CONFIG
    from training.checkpoint import save_checkpoint
    from training.model import build_model

    torch.manual_seed(0)
    model = build_model(ARCH)
    with torch.no_grad():
        model.head.bias.fill_(head_bias)
    final = {"target": {"hter": 0.2, "auc": 0.9}, "sources": {"hter": sources_hter, "auc": 0.95}}
    save_checkpoint(path, model, ARCH, CONFIG, 1, {"evaluations": [final], "final": final})
    return path


@pytest.mark.parametrize("sources_hter, warns", [(0.1, True), (0.45, False)])
def test_hessian_warns_when_the_running_statistics_have_not_settled(tmp_path, sources_hter, warns):
    """Eval-mode accuracy at θ at chance (every logit > 0) while the run reports separated sources: warned;
    a run that never separated its sources is not. The result records the probe's BatchNorm mode."""
    ck = checkpoint_with(tmp_path / "c.pt", sources_hter, head_bias=50.0)
    r = cli(["hessian", "--checkpoint", ck, "--max-samples", "4", "--max-iter", "2", "--threads", "1", "--out", tmp_path / "h.json"])
    assert r.code == 0, r.err[-2000:]
    assert ("running statistics have not settled" in r.err) == warns, r.err[-2000:]
    if warns:
        assert "fasland hessian: warning: eval-mode accuracy at θ (live score > 0) is at chance" in r.err and "HTER 10.0%" in r.err
    assert json.loads((tmp_path / "h.json").read_text())["provenance"]["data"]["bn"] == "eval"
    r = cli(["surface", "--checkpoint", ck, "--x", "-1:1:2", "--max-samples", "4", "--threads", "1", "--out", tmp_path / "s.h5"])
    assert r.code == 0 and ("fasland surface: warning:" in r.err) == warns, r.err[-2000:]


class Sign(torch.nn.Module):
    """logit = scale · (x − 0.5) + shift on inputs that are the labels themselves."""

    def __init__(self, scale, shift):
        super().__init__()
        self.scale, self.shift = scale, shift

    def forward(self, x):
        return self.scale * (x[:, 0] - 0.5) + self.shift


@pytest.mark.parametrize("scale, shift, warns", [(0.0, 5.0, True), (0.0, -5.0, True), (10.0, 0.0, False), (10.0, 4.0, False)])
def test_at_chance_means_no_better_than_the_majority_class(scale, shift, warns):
    from training.probe import Probe, unsettled_batchnorm

    y = torch.tensor([1.0, 1.0, 1.0, 0.0])                      # 75% live: always "live" scores 0.75
    probe = Probe({d: (y[:, None].clone(), y) for d in "ICMO"}, "ICM", "O", channels_last=False)
    final = {"final": {"sources": {"hter": 0.05}}}
    assert (unsettled_batchnorm(probe, Sign(scale, shift), final) is not None) == warns
    assert unsettled_batchnorm(probe, Sign(scale, shift), {"final": None}) is None


def test_the_study_passes_keep_checkpoints_to_every_training(tmp_path, monkeypatch):
    import training.commands

    calls = []

    class Stop(Exception):
        pass

    def recorded(protocol, method, out, **kwargs):
        calls.append((method, kwargs.get("keep_checkpoints")))
        raise Stop       # the training itself is tested above

    monkeypatch.setattr(training.commands, "train", recorded)
    with pytest.raises(Stop):
        cli(["study", "--methods", "erm,sam", "--keep-checkpoints", "3", "--out", tmp_path / "st"])
    assert calls == [("erm", 3)]
