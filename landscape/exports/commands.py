"""`fasland export {vtk,html,png}` as Python functions: each takes file paths and plain options, writes its
output and returns what it wrote. Heavy imports (vtk, plotly, matplotlib) happen inside them."""


def _labels(labels, n: int):
    """Names for n inputs: a list, or 'A,B,…' as --labels takes them."""
    from landscape.exports.sources import parse_labels

    return parse_labels(labels, n) if labels is None or isinstance(labels, str) else parse_labels(",".join(labels), n)


def export_vtk(surface, out, surf_name: str = "train_loss", log: bool = False, zmax: float | None = None,
               zscale: float | None = None, screenshot=None, size=(1280, 960)) -> dict:
    """SURF.h5 → OUT.vts (structured grid), OUT.vtp (surface, or polyline for 1-D), OUT_trajectory.vtp (the
    training path, if stored) and OUT_scene.py; with `screenshot` also a pvbatch rendering to that PNG.
    Returns {kind: path} (kinds grid, surface, trajectory, scene, screenshot)."""
    from landscape.exports.surface_file import read_surface
    from landscape.exports.vtk_files import export_vtk as write_vtk

    files = write_vtk(read_surface(surface), out, surf_name, log, zmax, zscale)
    if screenshot:
        from landscape.exports.paraview_scene import render

        files["screenshot"] = render(files["scene"], screenshot, tuple(size))
    return files


def export_html(inputs, out, surf_name: str = "train_loss", log: bool = False, zmax: float | None = None,
                labels=None, title: str | None = None):
    """One self-contained page (plotly.js embedded) from SURF.h5 files and result JSON files shown by their
    registered views (HESSIAN.json and CONFLICTS.json once analysis.views is imported); returns its path."""
    from landscape.exports.html_page import export_html as write_page

    return write_page([str(p) for p in inputs], out, surf_name, log, zmax, _labels(labels, len(inputs)), title)


def export_png(surfaces, out, surf_name: str = "train_loss", log: bool = False, zmax: float | None = None,
               labels=None, levels=None, dpi: int = 200):
    """Paper figures (png/pdf/svg by the extension): contours over 3D surfaces for 2-D grids, every domain's
    curves for 1-D; several surfaces side by side with shared levels ('MIN:MAX:STEP' or a sequence).
    Returns the figure's path."""
    import numpy as np

    from landscape.exports.figures import export_png as write_figure, parse_levels

    levels = parse_levels(levels) if levels is None or isinstance(levels, str) else np.asarray(levels, dtype=float)
    return write_figure([str(p) for p in surfaces], out, surf_name, log, zmax, _labels(labels, len(surfaces)), levels, dpi)
