"""Every command is a Python function with plain arguments (no argv): each is called here directly and its
result checked against an independent computation; the entry point imports nothing heavy."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent


def no_argv(monkeypatch):
    """Any use of the command line from inside a command function fails the test."""
    import fasland.cli

    monkeypatch.setattr(fasland.cli, "main", lambda *a, **k: pytest.fail("a command function went through argv"))


def test_surface_function_equals_the_probe_at_theta(tmp_path, monkeypatch):
    from landscape.commands import directions_path, surface
    from landscape.store import read_store
    from test_surface import fasnet_checkpoint, probe_of

    no_argv(monkeypatch)
    ckpt = fasnet_checkpoint(tmp_path / "a.pt", 0)
    store = surface(ckpt, tmp_path / "s.h5", [-0.5, 0.0, 0.5], max_samples=16, threads=1)
    assert store.done.all() and directions_path(tmp_path / "s.h5").is_file()
    at_theta = probe_of(ckpt)
    for name in ("train_loss", "test_loss", "loss_I"):
        assert store.arrays[name][1] == pytest.approx(float(at_theta[name]), rel=1e-5)
    # the same surface as a MIN:MAX:N spec is the same file: resumed, nothing recomputed
    again = surface(ckpt, tmp_path / "s.h5", "-0.5:0.5:3", max_samples=16, threads=1)
    np.testing.assert_array_equal(read_store(tmp_path / "s.h5").arrays["train_loss"], again.arrays["train_loss"])


def test_hessian_function_equals_the_dense_hessian_and_writes_only_when_asked(tmp_path, monkeypatch):
    from analysis import hessian as hs
    from analysis.commands import hessian
    from test_conflicts import make_run, small_probe, small_world
    from training.checkpoint import load_model

    no_argv(monkeypatch)
    small_world(monkeypatch)
    make_run(tmp_path / "run", epochs=(1,))
    ckpt = tmp_path / "run" / "checkpoint.pt"
    r = hessian(ckpt, top_k=2, trace=True, trace_samples=4, threads=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]          # no out: nothing written
    model, _ = load_model(ckpt)
    probe = small_probe(None)
    dense = hs.Hessian(model, probe.loss_fn, probe.batches("train")).dense().double().numpy()
    want = np.linalg.eigvalsh((dense + dense.T) / 2)[::-1][:2]
    assert np.max(np.abs(np.array(r.eigenvalues) - want) / np.abs(want)) < 1e-3
    assert r.trace["n_samples"] == 4
    out = tmp_path / "h.json"
    written = hessian(ckpt, out, top_k=2, threads=1)
    assert json.loads(out.read_text()) == json.loads(json.dumps(written.to_json()))


def test_hessian_command_and_python_api_share_their_defaults():
    import inspect

    from analysis import hessian as hs
    from analysis.commands import hessian

    cmd = inspect.signature(hessian).parameters
    assert cmd["tol"].default == inspect.signature(hs.hessian_eigenvalues).parameters["tol"].default
    assert cmd["max_iter"].default == inspect.signature(hs.hessian_eigenvalues).parameters["max_iter"].default
    assert cmd["trace_samples"].default == inspect.signature(hs.hessian_trace).parameters["n_samples"].default
    assert inspect.signature(hs.hessian_trace).parameters["tol"].default == hs.TRACE_TOL
    assert cmd["density_iter"].default == inspect.signature(hs.hessian_density).parameters["n_iter"].default


def test_conflicts_function_equals_explicit_gradients(tmp_path, monkeypatch):
    from analysis.commands import conflicts
    from test_conflicts import explicit_gradient_f32, make_run, np_cosines, small_probe, small_world
    from training.checkpoint import load_model

    no_argv(monkeypatch)
    small_world(monkeypatch)
    make_run(tmp_path / "run", epochs=(1,))
    r = conflicts(tmp_path / "run" / "checkpoint.pt", at="theta", threads=1)
    model, _ = load_model(tmp_path / "run" / "checkpoint.pt")
    probe = small_probe(None)
    G = np.stack([explicit_gradient_f32(model, probe, d) for d in "ICM"])
    assert r.domains == ["I", "C", "M"] and r.sam is None
    assert np.max(np.abs(np.array(r.theta["cosines"]) - np_cosines(G))) < 1e-5


def test_export_vtk_function_writes_the_surface_heights(tmp_path):
    from export_fixtures import write_surface
    from landscape.exports.commands import export_vtk
    from test_export_vtk import point_arrays, read

    truth = write_surface(tmp_path / "s.h5", nx=5, ny=4)
    files = export_vtk(tmp_path / "s.h5", tmp_path / "v" / "s", zscale=1.0)
    assert set(files) == {"grid", "surface", "trajectory", "scene"} and all(Path(p).is_file() for p in files.values())
    height = point_arrays(read(files["grid"]))["height"]
    np.testing.assert_allclose(height, truth["arrays"]["train_loss"].ravel(order="F"), rtol=1e-6)


def test_study_function_runs_without_argv(tmp_path, monkeypatch):
    from analysis.study import study
    from reliability_fixtures import TINY_TRAIN

    no_argv(monkeypatch)
    sizes = {"x1d": "-1:1:3", "x2d": "-1:1:2", "pca_points": 2, "max_samples": 4, "top_k": 1, "max_iter": 2,
             "trace_samples": 2}
    config = {"data": {"image_size": 32}, "train": {**TINY_TRAIN["train"], "epochs": 2}}
    [report] = study(tmp_path / "st", methods=["erm"], sizes=sizes, config=config, threads=1)
    assert report == tmp_path / "st" / "report.md"
    h = json.loads((tmp_path / "st" / "erm" / "hessian.json").read_text())
    text = report.read_text()
    row = next(l for l in text.splitlines() if l.startswith("| ERM |"))
    assert f"{h['eigenvalues'][0]:.4g}" in row and f"{h['smallest']['lambda_min']:.4g}" in row
    header = next(l for l in text.splitlines() if l.startswith("| method |"))
    assert header.endswith("| λ_min | λ_max ± spread | sharpest block |") and header.count("|") == row.count("|")
    # the header names the data, the preset and every override, the device and threads, the versions
    for words in ("- data: SynthFAS", "- preset: demo", "train.epochs = 2", "train.steps_per_epoch = 3", "pca_points=2",
                  "- device: cpu, 1 torch threads", "- versions: fasland", "torch "):
        assert words in text, words
    # below them, each method's update rule per epoch as its metrics.json records it
    from training.trainer import describe_rules

    rules = json.loads((tmp_path / "st" / "erm" / "metrics.json").read_text())["update_rules"]
    assert rules == ["erm", "erm"]
    line = f"update rules: ERM: {describe_rules(rules)}"
    assert f"- {line}\n" in text and f"<li>{line}</li>" in (tmp_path / "st" / "report.html").read_text()
    # a Hessian computed without λ_min and the per-block λ_max: their columns leave the table
    (tmp_path / "st" / "erm" / "hessian.json").unlink()
    [report] = study(tmp_path / "st", methods=["erm"], sizes={**sizes, "bottom_k": 0, "per_block": 0}, config=config,
                     threads=1)
    h = json.loads((tmp_path / "st" / "erm" / "hessian.json").read_text())
    assert not h.get("smallest") and not h.get("per_block")
    lines = report.read_text().splitlines()
    header, row = next(l for l in lines if l.startswith("| method |")), next(l for l in lines if l.startswith("| ERM |"))
    assert header.endswith("| width at +0.1 | λ_max ± spread |") and header.count("|") == row.count("|")


def test_entry_point_and_parsers_import_nothing_heavy():
    code = ("import sys, fasland.cli; fasland.cli.parser(); "
            "print(sorted(m for m in ('torch', 'h5py', 'numpy', 'scipy', 'yaml', 'analysis.study') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert r.stdout.strip() == "[]"
    found = subprocess.run(["grep", "-rn", "cli([", str(ROOT / "analysis")], capture_output=True, text=True)
    assert found.stdout == ""


@pytest.mark.parametrize("argv, function", [
    (["hessian", "--checkpoint", "c.pt", "--out", "h.json"], "analysis.commands:hessian"),
    (["conflicts", "--out", "c.json"], "analysis.commands:conflicts"),
    (["surface", "--checkpoint", "c.pt", "--x", "0:1:2", "--out", "s.h5"], "landscape.commands:surface"),
    (["study", "--out", "st"], "analysis.study:study"),
    (["train", "--protocol", "ICM2O", "--method", "erm", "--out", "r"], "training.commands:train"),
])
def test_each_flag_defaults_to_its_functions_default(argv, function):
    """One set of defaults: the CLI's is the function's, wherever the flag names a parameter."""
    import importlib
    import inspect

    from fasland.cli import parser

    module, name = function.split(":")
    params = inspect.signature(getattr(importlib.import_module(module), name)).parameters
    args = vars(parser().parse_args(argv))
    given = {a.lstrip("-").replace("-", "_") for a in argv if a.startswith("--")}
    checked = [k for k in args if k in params and k not in given and params[k].default is not inspect.Parameter.empty]
    assert len(checked) >= 4
    for k in checked:
        assert args[k] == params[k].default, k


def test_help_lists_choices_and_defaults_and_keeps_the_old_solver_flag(capsys):
    from fasland.cli import parser

    help_of = {}
    for cmd in ("train", "hessian", "conflicts"):
        with pytest.raises(SystemExit):
            parser().parse_args([cmd, "--help"])
        help_of[cmd] = " ".join(capsys.readouterr().out.split())
    assert "--preset {demo,demo64,paper}" in help_of["train"] and "--method {erm,sam,gacfas,rfm}" in help_of["train"]
    assert "--solver {lanczos,power}" in help_of["hessian"] and "--method" not in help_of["hessian"]
    assert "(default: 100)" in help_of["hessian"] and "(default: both)" in help_of["conflicts"]
    assert parser().parse_args(["hessian", "--checkpoint", "c", "--method", "power", "--out", "h"]).solver == "power"
    from training.algorithms import GACFAS    # ρ, η, α quoted from the one registry, read there without torch

    for flag, what in (("rho", "ascent radius ρ for SAM and GAC-FAS"), ("eta", "GAC-FAS η"), ("alpha", "GAC-FAS α")):
        assert f"--{flag} {flag.upper()} {what} (default: the checkpoint's, else GAC-FAS's {GACFAS.defaults()[flag]})" in help_of["conflicts"]


def test_choice_names_equal_their_registries():
    from training.algorithms import ALGORITHMS
    from training.names import METHODS, PRESETS
    from training.presets import PRESETS as RECIPES

    assert set(METHODS) == set(ALGORITHMS) and set(PRESETS) == set(RECIPES)
