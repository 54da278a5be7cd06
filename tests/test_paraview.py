"""The exported scene opened by real ParaView (Debian's pvbatch, under xvfb-run): a screenshot that shows
the coloured surface, not an empty view."""
import shutil
import subprocess
import time

import numpy as np
import pytest
from PIL import Image

from fasland.cli import main
from export_fixtures import write_surface

PVBATCH, XVFB = shutil.which("pvbatch"), shutil.which("xvfb-run")
pytestmark = pytest.mark.skipif(not (PVBATCH and XVFB), reason="ParaView's pvbatch or xvfb-run is not installed "
                                "(Debian: apt-get install paraview python3-paraview xvfb xauth; `make sysdeps`)")


def render(scene, png, size=(640, 480)):
    """`xvfb-run -a pvbatch SCENE --screenshot PNG`, as a user types it."""
    cmd = [XVFB, "-a", PVBATCH, str(scene), "--screenshot", str(png), "--size", *map(str, size)]
    for attempt in range(5):
        time.sleep(2 ** attempt - 1)
        run = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd="/")   # cwd: the scene finds its files itself
        if "bad X server connection" not in run.stderr:
            break   # else another xvfb-run -a took the same display number at the same moment (its known race): retry
    assert run.returncode == 0, run.stdout + run.stderr
    assert "Traceback" not in run.stderr, run.stderr
    return np.asarray(Image.open(png).convert("RGB")).astype(int)


def coloured(img) -> np.ndarray:
    """Pixels with a clear hue (the colour-mapped surface, the red path), not white/grey background or text."""
    return (img.max(axis=2) - img.min(axis=2)) > 40


def check_view(img, one_d):
    assert img.std() > 20                                             # not one flat colour
    assert len(np.unique(img.reshape(-1, 3), axis=0)) > 200           # shading and a colour map, not a few flat fills
    hue = coloured(img)
    assert hue.mean() > (0.003 if one_d else 0.08)                    # the surface (or curve) covers the view
    ys, xs = np.nonzero(hue)
    w = img.shape[1]
    assert xs.min() < 0.35 * w and xs.max() > 0.65 * w                # spread across the image: the camera fits it


def test_pvbatch_renders_the_exported_scene_of_a_2d_surface_and_path(tmp_path):
    surf = tmp_path / "surf.h5"
    write_surface(surf, nx=31, ny=25, missing=[(30, 24)])
    shot = tmp_path / "shots" / "view.png"
    assert main(["export", "vtk", str(surf), "--out", str(tmp_path / "out" / "erm"),
                 "--screenshot", str(shot), "--size", "640", "480"]) == 0      # the CLI runs pvbatch on its own Xvfb
    img = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    assert img.shape == (480, 640, 3)
    check_view(img, one_d=False)
    red = (img[..., 0] > 150) & (img[..., 1] < 80) & (img[..., 2] < 80)
    assert red.sum() > 100                                            # the training path tube


def test_pvbatch_renders_the_scene_of_a_1d_curve(tmp_path):
    surf = tmp_path / "line.h5"
    write_surface(surf, nx=31, one_d=True, missing=[(30,)])
    assert main(["export", "vtk", str(surf), "--out", str(tmp_path / "out" / "erm"), "--log"]) == 0
    img = render(tmp_path / "out" / "erm_scene.py", tmp_path / "shot.png", size=(500, 400))
    assert img.shape == (400, 500, 3)
    check_view(img, one_d=True)
