"""PREFIX_scene.py: scene_template.py with its SCENE dict filled in (file names relative to the script,
height range, level values, bounds, title), so one pvpython/pvbatch call goes from the files to a view."""
import os
from pathlib import Path

import numpy as np

from landscape.exports.surface_file import Surface
from training.errors import FaslandError

TEMPLATE = Path(__file__).with_name("scene_template.py")
COLORMAP = "Viridis (matplotlib)"


def scene_dict(files: dict, surface: Surface, surf_name: str, log: bool, h: np.ndarray, zscale: float) -> dict:
    lo, hi = float(np.nanmin(h)), float(np.nanmax(h))
    x0, x1 = float(surface.x.min()), float(surface.x.max())
    y0, y1 = (0.0, 0.0) if surface.y is None else (float(surface.y.min()), float(surface.y.max()))
    what = f"log({surf_name} + 0.1)" if log else surf_name
    return {
        "ndim": surface.ndim,
        "surface": files["surface"].name,
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
    path = Path(f"{prefix}_scene.py")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise FaslandError(f"cannot write '{path}' ({e.strerror}); choose a writable output folder") from None
    return path


def render(scene, png, size=(1280, 960), timeout: float = 300) -> Path:
    """Run the scene in ParaView's pvbatch (under xvfb-run when there is no display) and save a screenshot."""
    import shutil
    import subprocess

    pvbatch = shutil.which("pvbatch")
    if pvbatch is None:
        raise FaslandError("a screenshot needs ParaView's pvbatch on PATH (Debian: apt-get install paraview python3-paraview "
                           "xvfb xauth); the VTK files and the scene script are written, open them in ParaView instead")
    cmd = [pvbatch, str(Path(scene).resolve()), "--screenshot", str(Path(png).resolve()), "--size", str(size[0]), str(size[1])]
    if not os.environ.get("DISPLAY"):
        xvfb = shutil.which("xvfb-run")
        if xvfb is None:
            raise FaslandError("there is no display and no xvfb-run for pvbatch; install xvfb and xauth, or set DISPLAY")
        cmd = [xvfb, "-a"] + cmd
    Path(png).parent.mkdir(parents=True, exist_ok=True)
    try:
        run = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise FaslandError(f"pvbatch did not finish {scene} within {timeout:.0f} s; open the scene in ParaView instead") from None
    if run.returncode != 0 or not Path(png).is_file():
        last = (run.stderr.strip().splitlines() or ["no output"])[-1]
        raise FaslandError(f"pvbatch could not render {scene} ({last}); open the scene in ParaView to see why")
    return Path(png)
