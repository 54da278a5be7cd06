"""VTK XML for ParaView: the surface as a structured grid (PREFIX.vts) and as polydata (PREFIX.vtp), the
training path as a polyline (PREFIX_trajectory.vtp), and a pvpython scene (PREFIX_scene.py) opening them.

Points are (x_i, y_j, zscale · h_ij) with h the height of the --surf-name array (see Surface.height);
VTK orders points x-fastest, so point k = i + j·nx. Every surface array is a point array holding the h5
values (NaN where not done); `valid` is 1 where the height is finite. Invalid points are hidden in the grid
(vtkGhostType = HIDDENPOINT), left out of the polydata's cells, and sit at the top of the height range so
they never stretch the bounds.
"""
import os
from pathlib import Path

import numpy as np
from vtkmodules.util.numpy_support import numpy_to_vtk, numpy_to_vtkIdTypeArray
from vtkmodules.vtkCommonCore import vtkPoints, vtkStringArray
from vtkmodules.vtkCommonDataModel import vtkCellArray, vtkDataSetAttributes, vtkPolyData, vtkStructuredGrid
from vtkmodules.vtkIOXML import vtkXMLPolyDataWriter, vtkXMLStructuredGridWriter

from landscape.exports.surface_file import Surface, height_along
from training.checkpoint import atomic_write
from training.errors import FaslandError


def flat(a: np.ndarray) -> np.ndarray:
    """Grid array (nx[, ny]) in VTK point order (x fastest)."""
    return np.asarray(a).ravel(order="F")


def auto_zscale(surface: Surface, h: np.ndarray) -> float:
    """The scale making the height range half the grid's larger side: neither a flat sheet nor a spike."""
    lo, hi = np.nanmin(h), np.nanmax(h)
    side = max(np.ptp(surface.x), np.ptp(surface.y) if surface.y is not None else 0.0)
    return float(0.5 * side / (hi - lo)) if hi > lo and side > 0 else 1.0


def grid_points(surface: Surface, z: np.ndarray) -> np.ndarray:
    """(N, 3) points in VTK order; 1-D surfaces lie in the x-z plane."""
    if surface.ndim == 1:
        return np.column_stack([surface.x, np.zeros_like(surface.x), z])
    X, Y = np.meshgrid(surface.x, surface.y, indexing="ij")
    return np.column_stack([flat(X), flat(Y), flat(z)])


def _vtk_points(xyz: np.ndarray) -> vtkPoints:
    pts = vtkPoints()
    pts.SetData(numpy_to_vtk(np.ascontiguousarray(xyz, dtype=np.float64), deep=True))
    return pts


def _named(a: np.ndarray, name: str):
    arr = numpy_to_vtk(np.ascontiguousarray(a), deep=True)
    arr.SetName(name)
    return arr


def _add_arrays(data, surface: Surface, h: np.ndarray, valid: np.ndarray, info: dict) -> None:
    pd = data.GetPointData()
    for name, a in surface.arrays.items():
        pd.AddArray(_named(flat(a), name))
    pd.AddArray(_named(flat(h), "height"))
    pd.AddArray(_named(flat(valid).astype(np.uint8), "valid"))
    pd.SetActiveScalars("height")
    fd = data.GetFieldData()
    for key, value in {**{f"attr_{k}": v for k, v in surface.attrs.items()}, **info}.items():
        s = vtkStringArray()
        s.SetName(str(key))
        s.InsertNextValue(str(value))
        fd.AddArray(s)


def structured_grid(surface: Surface, h: np.ndarray, z: np.ndarray, info: dict) -> vtkStructuredGrid:
    """The whole grid; invalid points hidden through vtkGhostType."""
    valid = np.isfinite(h)
    sg = vtkStructuredGrid()
    sg.SetDimensions(len(surface.x), 1 if surface.y is None else len(surface.y), 1)
    sg.SetPoints(_vtk_points(grid_points(surface, z)))
    _add_arrays(sg, surface, h, valid, info)
    ghost = np.where(flat(valid), 0, vtkDataSetAttributes.HIDDENPOINT).astype(np.uint8)
    sg.GetPointData().AddArray(_named(ghost, vtkDataSetAttributes.GhostArrayName()))
    return sg


def _cells(offsets: np.ndarray, connectivity: np.ndarray) -> vtkCellArray:
    cells = vtkCellArray()
    cells.SetData(numpy_to_vtkIdTypeArray(offsets.astype(np.int64), deep=True),
                  numpy_to_vtkIdTypeArray(connectivity.astype(np.int64), deep=True))
    return cells


def quads(valid: np.ndarray) -> np.ndarray:
    """(M, 4) point ids of the grid cells whose four corners are valid, counter-clockwise."""
    nx, ny = valid.shape
    i, j = np.meshgrid(np.arange(nx - 1), np.arange(ny - 1), indexing="ij")
    p = flat(i + j * nx)
    corners = np.column_stack([p, p + 1, p + 1 + nx, p + nx])
    return corners[flat(valid)[corners].all(axis=1)]


def runs(valid: np.ndarray) -> list[np.ndarray]:
    """Maximal runs of consecutive valid indices with at least two points (the pieces of a broken curve)."""
    idx = np.flatnonzero(valid)
    pieces = np.split(idx, np.flatnonzero(np.diff(idx) > 1) + 1) if idx.size else []
    return [r for r in pieces if len(r) >= 2]


def surface_polydata(surface: Surface, h: np.ndarray, z: np.ndarray, info: dict) -> vtkPolyData:
    """Quads over the valid cells (2-D) or polylines over the valid runs (1-D)."""
    valid = np.isfinite(h)
    poly = vtkPolyData()
    poly.SetPoints(_vtk_points(grid_points(surface, z)))
    if surface.ndim == 2:
        q = quads(valid)
        poly.SetPolys(_cells(np.arange(len(q) + 1) * 4, q.ravel()))
    else:
        pieces = runs(valid)
        sizes = np.array([len(r) for r in pieces], dtype=np.int64)
        poly.SetLines(_cells(np.concatenate([[0], np.cumsum(sizes)]),
                             np.concatenate(pieces) if pieces else np.zeros(0, np.int64)))
    _add_arrays(poly, surface, h, valid, info)
    return poly


def trajectory_polydata(surface: Surface, h: np.ndarray, zscale: float) -> vtkPolyData:
    """The projected path as one polyline lying just above the surface, one point per checkpoint."""
    t = surface.trajectory
    ty = np.zeros_like(t.x) if t.y is None else t.y
    ht = height_along(surface, h, t.x, t.y)
    lift = 0.01 * (np.nanmax(h) - np.nanmin(h))
    if surface.ndim == 1:
        xyz = np.column_stack([t.x, np.zeros_like(t.x), zscale * (ht + lift)])
    else:
        xyz = np.column_stack([t.x, ty, zscale * (ht + lift)])
    poly = vtkPolyData()
    poly.SetPoints(_vtk_points(xyz))
    n = len(t.x)
    poly.SetLines(_cells(np.array([0, n]), np.arange(n)))
    poly.SetVerts(_cells(np.arange(n + 1), np.arange(n)))
    poly.GetPointData().AddArray(_named(np.asarray(t.epochs, dtype=np.float64), "epoch"))
    poly.GetPointData().AddArray(_named(ht, "height"))
    if t.explained_variance_ratio is not None:
        poly.GetFieldData().AddArray(_named(np.asarray(t.explained_variance_ratio, dtype=np.float64), "explained_variance_ratio"))
    return poly


def write_xml(data, path) -> Path:
    """Binary, zlib-compressed VTK XML, written to a temporary file and renamed."""
    writer = vtkXMLStructuredGridWriter() if isinstance(data, vtkStructuredGrid) else vtkXMLPolyDataWriter()
    writer.SetInputData(data)
    writer.SetDataModeToBinary()
    writer.SetCompressorTypeToZLib()

    def write(tmp):
        writer.SetFileName(str(tmp))
        if not writer.Write():
            raise OSError("VTK could not write the file")

    return atomic_write(Path(path), write)


def export_vtk(surface: Surface, prefix, surf_name: str = "train_loss", log: bool = False,
               zmax: float | None = None, zscale: float | None = None) -> dict:
    """Write PREFIX.vts, PREFIX.vtp, PREFIX_trajectory.vtp (if the file has a path) and PREFIX_scene.py.
    Returns {kind: path}."""
    from landscape.exports.paraview_scene import write_scene

    h = surface.height(surf_name, log=log, zmax=zmax)
    if not np.isfinite(h).any():
        raise FaslandError(f"surface '{surface.path}' has no finite '{surf_name}' value yet; run 'fasland surface' "
                           "to compute its points, or pick another --surf-name")
    zscale = auto_zscale(surface, h) if zscale is None else float(zscale)
    if not np.isfinite(zscale) or zscale <= 0:
        raise FaslandError(f"--zscale {zscale} must be a positive number")
    z = zscale * np.where(np.isfinite(h), h, np.nanmax(h))
    info = {"surf_name": surf_name, "log": log, "zmax": zmax, "zscale": zscale, "source": os.path.basename(surface.path)}
    prefix = Path(str(prefix).removesuffix(".vts").removesuffix(".vtp"))
    out = {"grid": write_xml(structured_grid(surface, h, z, info), f"{prefix}.vts"),
           "surface": write_xml(surface_polydata(surface, h, z, info), f"{prefix}.vtp")}
    if surface.trajectory is not None and len(surface.trajectory.x):
        out["trajectory"] = write_xml(trajectory_polydata(surface, h, zscale), f"{prefix}_trajectory.vtp")
    out["scene"] = write_scene(prefix, out, surface, surf_name, log, h, zscale)
    return out
