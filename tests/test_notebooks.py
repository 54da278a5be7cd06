"""The notebooks run top to bottom (nbclient, in a kernel of this very interpreter) and report real numbers.

Each notebook ends with one line `RESULTS {json}`; the tests check those numbers, and for the study tour
recompute two of them independently from the files the notebook wrote.
"""
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
KERNEL = "fasland-test-kernel"


@pytest.fixture(scope="module")
def jupyter_path(tmp_path_factory):
    """A kernelspec that starts ipykernel with this interpreter (the venv's python on a fresh clone), in a
    private JUPYTER_PATH: no `ipykernel install` step, and no other python3 kernel on the machine can win."""
    root = tmp_path_factory.mktemp("jupyter")
    spec = root / "kernels" / KERNEL
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "fasland tests", "language": "python"}))
    return root


@pytest.fixture
def scratch(tmp_path):
    """The kernel's TMPDIR: the notebooks' runs (ResNet18 checkpoints, up to 0.8 GB) are deleted after the test."""
    path = tmp_path / "tmp"
    path.mkdir()
    yield path
    shutil.rmtree(path, ignore_errors=True)


def execute(name: str, tmp_path: Path, jupyter_path: Path, monkeypatch) -> tuple[dict, list]:
    """Run notebooks/NAME in tmp_path; a failing cell fails the test with its traceback.
    Returns (the RESULTS json, every output of every cell)."""
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    monkeypatch.setenv("JUPYTER_PATH", str(jupyter_path))
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(jupyter_path / "runtime"))
    monkeypatch.setenv("IPYTHONDIR", str(jupyter_path / "ipython"))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")          # one torch thread, as every test (conftest.py)
    monkeypatch.delenv("FASLAND_STUDY", raising=False)  # the notebooks make their own small runs
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), f"{name} is committed with outputs"
    client = nbclient.NotebookClient(nb, kernel_name=KERNEL, timeout=600, allow_errors=False,
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    lines = [l for o in outputs if o.get("output_type") == "stream" and o.get("name") == "stdout"
             for l in o["text"].splitlines() if l.startswith("RESULTS ")]
    assert len(lines) == 1, f"{name} printed {len(lines)} RESULTS lines"
    return json.loads(lines[0][len("RESULTS "):]), outputs


def images(outputs) -> int:
    return sum("image/png" in o.get("data", {}) for o in outputs)


def check_cosines(C, k: int) -> None:
    C = np.asarray(C, dtype=float)
    assert C.shape == (k, k)
    np.testing.assert_allclose(np.diag(C), 1.0, atol=1e-6)
    np.testing.assert_allclose(C, C.T, atol=1e-9)
    assert np.all(np.abs(C) <= 1 + 1e-9)


def test_study_tour(tmp_path, scratch, jupyter_path, monkeypatch):
    import h5py
    import torch
    import torch.nn.functional as F

    from landscape.commands import data_fingerprint
    from training.checkpoint import load_model
    from training.probe import load_probe

    r, outputs = execute("01_study_tour.ipynb", tmp_path, jupyter_path, monkeypatch)
    assert list(r["methods"]) == ["erm", "gacfas"] and r["sources"] == ["I", "C", "M"] and r["target"] == "O"
    assert images(outputs) >= 4                          # curves, contours, eigenvalues, conflict matrices
    study = Path(r["study"])
    assert study.is_relative_to(scratch)                 # made under the kernel's TMPDIR, so deleted afterwards
    for m, v in r["methods"].items():
        lam = v["eigenvalues"]
        assert len(lam) == 2 and lam[0] >= lam[1] and lam[0] > 0
        assert lam == json.loads((study / m / "hessian.json").read_text())["eigenvalues"]
        check_cosines(v["cosines_theta"], 3)
        assert 0 <= v["conflict_theta"] <= 1 and v["width"] > 0
        # independently: the source loss at θ (centre of the 1-D curve) and the cosines of the per-domain gradients,
        # from the checkpoint and the probe the notebook used (16 images per domain), with plain autograd
        model, ckpt = load_model(study / m / "checkpoint.pt")
        probe = load_probe(ckpt["config"], "cpu", max_samples=16)
        with h5py.File(study / m / "surface_1d.h5", "r") as f:
            if f.attrs["data_sha256"] != data_fingerprint(probe):
                pytest.skip("SynthFAS's renderer changed while the notebook ran (its cache key follows synth.py); rerun")
        model.eval()
        grads, losses = [], []
        for d in ("I", "C", "M"):
            x, y = probe.domains[d]
            loss = F.binary_cross_entropy_with_logits(model(probe.inputs(x)), y)
            losses.append(loss.item())
            grads.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, list(model.parameters()))]).double())
        G = torch.stack(grads)
        C = (G @ G.T) / (G.norm(dim=1)[:, None] * G.norm(dim=1)[None, :])
        np.testing.assert_allclose(np.asarray(v["cosines_theta"]), C.numpy(), atol=1e-4)
        assert v["centre_loss"] == pytest.approx(np.mean(losses), rel=1e-4)


def test_bring_your_own_model(tmp_path, scratch, jupyter_path, monkeypatch):
    r, outputs = execute("02_bring_your_own_model.ipynb", tmp_path, jupyter_path, monkeypatch)
    assert images(outputs) >= 3
    assert r["lambda_max"] > 0 and r["lambda"][0] >= r["lambda"][1]
    assert all(v > 0 for v in r["lambda_domain"].values()) and set(r["lambda_domain"]) == {"I", "C", "M", "O"}
    assert r["rayleigh_d1"] <= r["lambda_max"]
    check_cosines(r["cosines"], 3)
    check_cosines(r["cosines_with_target"], 4)
    np.testing.assert_allclose(np.asarray(r["cosines_with_target"])[:3, :3], r["cosines"], atol=1e-9)
    assert r["imported_max_abs_diff"] <= 1e-6 and r["imported_train_loss"] > 0     # the module route gives the same model
    assert r["surface_centre"] == pytest.approx(r["probe_train_loss"], rel=1e-5)
    assert Path(r["surface_file"]).is_file()


def test_export_paraview_plotly(tmp_path, scratch, jupyter_path, monkeypatch):
    r, outputs = execute("03_export_paraview_plotly.ipynb", tmp_path, jupyter_path, monkeypatch)
    for name in ("surface.vts", "surface.vtp", "surface_trajectory.vtp", "surface_scene.py", "surface.html", "surface.png"):
        assert r["files"].get(name, 0) > 0, f"{name} missing from {r['files']}"
    assert r["vts_dimensions"] == [7, 7, 1]
    assert {"train_loss", "test_loss", "loss_O", "test_hter"} <= set(r["vts_arrays"])
    assert r["trajectory_points"] == 4                  # epoch_000 … epoch_003
    page = Path(r["html"]).read_text(encoding="utf-8")
    assert "Plotly.newPlot" in page or "plotly" in page.lower()
    assert Path(r["png"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert any("<iframe srcdoc=" in o.get("data", {}).get("text/html", "") for o in outputs)
    if shutil.which("pvbatch") and shutil.which("Xvfb"):
        assert r["screenshot"] and Path(r["screenshot"]).read_bytes()[:4] == b"\x89PNG", r["screenshot_reason"]
    else:
        assert r["screenshot"] is None and r["screenshot_reason"]
