"""PREFIX_scene.py: scene_template.py with its SCENE dict filled in (file names relative to the script,
height range, level values, bounds, title), so one pvpython/pvbatch call goes from the files to a view."""
import fcntl
import os
import re
import select
import shutil
import subprocess
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from landscape.exports.surface_file import Surface
from training.checkpoint import atomic_write
from training.errors import FaslandError

TEMPLATE = Path(__file__).with_name("scene_template.py")
COLORMAP = "Viridis (matplotlib)"


def scene_dict(files: dict, surface: Surface, surf_name: str, log: bool, h: np.ndarray, zscale: float) -> dict:
    lo, hi = float(np.nanmin(h)), float(np.nanmax(h))
    xs, ys = [surface.x], [np.zeros(1) if surface.y is None else surface.y]
    if "trajectory" in files:   # the camera frames the path too, when it leaves the grid
        xs.append(surface.trajectory.x)
        ys.append(surface.trajectory.y if surface.trajectory.y is not None else np.zeros(1))
    x0, x1 = float(min(a.min() for a in xs)), float(max(a.max() for a in xs))
    y0, y1 = float(min(a.min() for a in ys)), float(max(a.max() for a in ys))
    what = f"log({surf_name} + 0.1)" if log else surf_name
    return {
        "ndim": surface.ndim,
        "surface": files["surface"].name,
        "grid": files["grid"].name,
        "trajectory": files["trajectory"].name if "trajectory" in files else None,
        "colormap": COLORMAP,
        "range": [lo, hi if hi > lo else lo + 1.0],
        "levels": [float(v) for v in np.linspace(lo, hi, 12)[1:-1]] if hi > lo else [],
        "bounds": [[x0, x1], [y0, y1], [zscale * lo, zscale * hi]],
        "tube_radius": 0.006 * max(x1 - x0, y1 - y0, 1e-9),
        "bar_title": what,
        "title": f"{surface.label}: {what}",
    }


def write_scene(prefix, files: dict, surface: Surface, surf_name: str, log: bool, h: np.ndarray, zscale: float) -> Path:
    """Write PREFIX_scene.py beside the VTK files; returns its path."""
    text = TEMPLATE.read_text()
    marker = "SCENE = {}"
    if marker not in text:
        raise RuntimeError("scene_template.py lost its 'SCENE = {}' line")
    scene = scene_dict(files, surface, surf_name, log, h, zscale)
    text = text.replace(marker, f"SCENE = {scene!r}", 1)
    return atomic_write(Path(f"{prefix}_scene.py"), lambda tmp: tmp.write_text(text))


@contextmanager
def display():
    """A DISPLAY for pvbatch: the user's, else a private Xvfb on a free display number (Xvfb -displayfd)."""
    if os.environ.get("DISPLAY"):
        yield os.environ["DISPLAY"]
        return
    xvfb = shutil.which("Xvfb")
    if xvfb is None:
        raise FaslandError("there is no display and no Xvfb for pvbatch; install xvfb (Debian: apt-get install xvfb xauth) or set DISPLAY")
    r, w = os.pipe()
    proc = subprocess.Popen([xvfb, "-displayfd", str(w), "-screen", "0", "1920x1200x24", "-nolisten", "tcp"],
                            pass_fds=(w,), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.close(w)
    try:
        number, deadline = b"", time.monotonic() + 60
        while not number.endswith(b"\n") and select.select([r], [], [], max(0.0, deadline - time.monotonic()))[0]:
            chunk = os.read(r, 16)
            if not chunk:
                break
            number += chunk
        if not number.strip().isdigit():
            raise FaslandError("Xvfb did not start a virtual display for pvbatch; run the scene yourself under xvfb-run")
        yield f":{number.decode().strip()}"
    finally:
        os.close(r)
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def render(scene, png, size=(1280, 960), timeout: float = 300, attempts: int = 5) -> Path:
    """Run the scene in ParaView's pvbatch (on a private Xvfb when there is no display) and save a screenshot.

    Debian's pvbatch sometimes fails to open its X connection ("bad X server connection") when another
    pvbatch starts at the same moment, even on another display: renders of this machine take turns (a
    file lock), and such a failure is retried on a new Xvfb, after 1, 2, 4, … s (seen three times in a row
    within a second on a loaded machine)."""
    pvbatch = shutil.which("pvbatch")
    if pvbatch is None:
        raise FaslandError("a screenshot needs ParaView's pvbatch on PATH (Debian: apt-get install paraview python3-paraview "
                           "xvfb xauth); the VTK files and the scene script are written, open them in ParaView instead")
    png = Path(png).resolve()
    png.parent.mkdir(parents=True, exist_ok=True)
    cmd = [pvbatch, str(Path(scene).resolve()), "--screenshot", str(png), "--size", str(size[0]), str(size[1])]
    with open(os.path.join(tempfile.gettempdir(), "fasland-pvbatch.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        for attempt in range(attempts):
            if attempt:
                time.sleep(2 ** (attempt - 1))
            with display() as name:
                try:
                    run = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env={**os.environ, "DISPLAY": name})
                except subprocess.TimeoutExpired:
                    raise FaslandError(f"pvbatch did not finish {scene} within {timeout:.0f} s; open the scene in ParaView instead") from None
            if "bad X server connection" not in run.stderr:
                break
    if run.returncode != 0 or not png.is_file():
        text = re.sub(r"\x1b\[[0-9;]*m", "", run.stdout + run.stderr)   # pvbatch colours its log
        lines = [ln for ln in text.splitlines() if "ERR" in ln or "Error" in ln] or ["no output"]
        raise FaslandError(f"pvbatch could not render {scene} ({lines[-1].strip()[:200]}); open the scene in ParaView to see why")
    return png
