"""`fasland export vtk`: every file read back with VTK's own XML readers and compared with the h5 itself."""
import h5py
import numpy as np
import pytest
from vtkmodules.util.numpy_support import vtk_to_numpy
from vtkmodules.vtkCommonDataModel import vtkDataSetAttributes
from vtkmodules.vtkIOXML import vtkXMLPolyDataReader, vtkXMLStructuredGridReader

from fasland.cli import main
from export_fixtures import write_surface

MISSING = [(8, 6), (3, 2)]     # not done
BLOWUP = [(0, 0)]              # done, train_loss = inf


def read(path):
    reader = vtkXMLPolyDataReader() if str(path).endswith(".vtp") else vtkXMLStructuredGridReader()
    reader.SetFileName(str(path))
    reader.Update()
    return reader.GetOutput()


def dims(grid) -> tuple:
    d = [0, 0, 0]
    grid.GetDimensions(d)
    return tuple(d)


def point_arrays(data) -> dict:
    pd = data.GetPointData()
    return {pd.GetArrayName(i): vtk_to_numpy(pd.GetArray(i)) for i in range(pd.GetNumberOfArrays())}


def h5_metrics(path) -> dict:
    with h5py.File(path, "r") as f:
        skip = {"xcoordinates", "ycoordinates", "done", "dir_file", "explained_variance_ratio_"}
        return {n: f[n][()] for n in f if n not in skip and not n.startswith("proj_")}, f["done"][()], f["xcoordinates"][()], f["ycoordinates"][()] if "ycoordinates" in f else None


@pytest.fixture
def surf2d(tmp_path):
    path = tmp_path / "surf.h5"
    write_surface(path, nx=9, ny=7, missing=MISSING, blowup=BLOWUP)
    return path


def cells(cell_array) -> list[list[int]]:
    offsets = vtk_to_numpy(cell_array.GetOffsetsArray())
    conn = vtk_to_numpy(cell_array.GetConnectivityArray())
    return [conn[a:b].tolist() for a, b in zip(offsets[:-1], offsets[1:])]


def test_structured_grid_holds_every_h5_array_in_vtk_point_order(surf2d, tmp_path):
    assert main(["export", "vtk", str(surf2d), "--out", str(tmp_path / "v" / "s"), "--zscale", "0.5"]) == 0
    grid = read(tmp_path / "v" / "s.vts")
    metrics, done, x, y = h5_metrics(surf2d)
    nx, ny = len(x), len(y)
    assert dims(grid) == (nx, ny, 1)
    arrays = point_arrays(grid)
    assert set(arrays) == set(metrics) | {"height", "valid", "vtkGhostType"}
    done_flat = done.ravel().astype(bool)       # the file's flat order k = iy·nx + ix is VTK's point order
    for name, raw in metrics.items():
        raw = raw.ravel()
        got = arrays[name]
        assert got.shape == (nx * ny,)
        np.testing.assert_array_equal(got[done_flat], raw[done_flat], err_msg=name)
        assert np.isnan(got[~done_flat]).all(), name
    # points: x varies fastest; z = zscale · train_loss where the height is finite
    pts = vtk_to_numpy(grid.GetPoints().GetData())
    k = np.arange(nx * ny)
    np.testing.assert_array_equal(pts[:, 0], x[k % nx])
    np.testing.assert_array_equal(pts[:, 1], y[k // nx])
    loss = metrics["train_loss"].ravel()
    valid = done_flat & np.isfinite(loss)
    assert valid.sum() == nx * ny - len(MISSING) - len(BLOWUP)
    np.testing.assert_allclose(pts[valid, 2], 0.5 * loss[valid], rtol=1e-12)
    assert np.isfinite(pts).all() and pts[~valid, 2].max() <= pts[valid, 2].max()   # hidden points never stretch the bounds
    np.testing.assert_array_equal(arrays["valid"], valid.astype(np.uint8))
    np.testing.assert_array_equal(arrays["vtkGhostType"], np.where(valid, 0, vtkDataSetAttributes.HIDDENPOINT))
    fd = grid.GetFieldData()
    assert fd.GetAbstractArray("surf_name").GetValue(0) == "train_loss"
    assert float(fd.GetAbstractArray("zscale").GetValue(0)) == 0.5


def test_polydata_has_exactly_the_valid_quads_and_log_zmax_heights(surf2d, tmp_path):
    zmax = 1.2
    assert main(["export", "vtk", str(surf2d), "--out", str(tmp_path / "s"), "--surf-name", "test_loss",
                 "--log", "--zmax", str(zmax), "--zscale", "2"]) == 0
    poly = read(tmp_path / "s.vtp")
    metrics, done, x, y = h5_metrics(surf2d)
    nx, ny = len(x), len(y)
    f = metrics["test_loss"].ravel()
    valid = done.ravel().astype(bool) & np.isfinite(f)
    expected = set()
    for ix in range(nx - 1):
        for iy in range(ny - 1):
            corners = [iy * nx + ix, iy * nx + ix + 1, (iy + 1) * nx + ix + 1, (iy + 1) * nx + ix]
            if valid[corners].all():
                expected.add(tuple(sorted(corners)))
    quads = cells(poly.GetPolys())
    assert all(len(q) == 4 for q in quads)
    assert {tuple(sorted(q)) for q in quads} == expected
    assert len(quads) == len(expected) == (nx - 1) * (ny - 1) - 1 - 4   # corner (8, 6) kills 1 cell, (3, 2) kills 4
    pts = vtk_to_numpy(poly.GetPoints().GetData())
    np.testing.assert_allclose(pts[valid, 2], 2 * np.log(np.minimum(f[valid], zmax) + 0.1), rtol=1e-12)
    arrays = point_arrays(poly)
    np.testing.assert_allclose(arrays["height"][valid], np.log(np.minimum(f[valid], zmax) + 0.1), rtol=1e-12)
    np.testing.assert_array_equal(arrays["test_loss"][valid], f[valid])   # point arrays keep the raw values


def test_trajectory_polyline_lies_on_the_surface(tmp_path):
    path = tmp_path / "surf.h5"
    write_surface(path, nx=9, ny=7)
    with h5py.File(path, "a") as f:       # path points on grid nodes, so the height under each is a stored value
        x, y = f["xcoordinates"][()], f["ycoordinates"][()]
        ix, iy = np.array([0, 2, 4, 5, 7]), np.array([1, 3, 3, 4, 6])
        for k in ("proj_xcoord", "proj_ycoord", "proj_epochs"):
            del f[k]
        f["proj_xcoord"], f["proj_ycoord"], f["proj_epochs"] = x[ix], y[iy], np.array([0, 5, 10, 15, 20])
        loss = f["train_loss"][()].ravel()
    assert main(["export", "vtk", str(path), "--out", str(tmp_path / "s"), "--zscale", "1"]) == 0
    traj = read(tmp_path / "s_trajectory.vtp")
    pts = vtk_to_numpy(traj.GetPoints().GetData())
    np.testing.assert_allclose(pts[:, 0], x[ix])
    np.testing.assert_allclose(pts[:, 1], y[iy])
    under = loss[iy * len(x) + ix]
    lift = 0.01 * (np.nanmax(loss) - np.nanmin(loss))
    np.testing.assert_allclose(pts[:, 2], under + lift, rtol=1e-9)
    np.testing.assert_array_equal(point_arrays(traj)["epoch"], [0, 5, 10, 15, 20])
    assert cells(traj.GetLines()) == [[0, 1, 2, 3, 4]]
    ev = vtk_to_numpy(traj.GetFieldData().GetArray("explained_variance_ratio"))
    np.testing.assert_allclose(ev, [0.71, 0.18])


def test_one_d_surface_exports_polylines_broken_at_missing_points(tmp_path):
    path = tmp_path / "line.h5"
    truth = write_surface(path, nx=15, one_d=True, missing=[(6,)])
    assert main(["export", "vtk", str(path), "--out", str(tmp_path / "l"), "--zscale", "1"]) == 0
    poly = read(tmp_path / "l.vtp")
    assert cells(poly.GetLines()) == [list(range(0, 6)), list(range(7, 15))]
    assert poly.GetNumberOfPolys() == 0
    pts = vtk_to_numpy(poly.GetPoints().GetData())
    ok = truth["done"]
    np.testing.assert_array_equal(pts[:, 0], truth["x"])
    np.testing.assert_array_equal(pts[:, 1], 0.0)
    np.testing.assert_allclose(pts[ok, 2], truth["arrays"]["train_loss"][ok])
    grid = read(tmp_path / "l.vts")
    assert dims(grid) == (15, 1, 1)
    np.testing.assert_array_equal(point_arrays(grid)["acc_M"][ok], truth["arrays"]["acc_M"][ok])
    assert not (tmp_path / "l_trajectory.vtp").exists()
    assert (tmp_path / "l_scene.py").exists()


def test_files_are_binary_and_zlib_compressed(surf2d, tmp_path):
    main(["export", "vtk", str(surf2d), "--out", str(tmp_path / "s")])
    for name in ("s.vts", "s.vtp", "s_trajectory.vtp"):
        head = (tmp_path / name).read_bytes()[:600]
        assert b'compressor="vtkZLibDataCompressor"' in head, name
        assert b'format="ascii"' not in (tmp_path / name).read_bytes(), name


def test_default_zscale_makes_the_height_span_half_the_grid(surf2d, tmp_path):
    main(["export", "vtk", str(surf2d), "--out", str(tmp_path / "s")])
    pts = vtk_to_numpy(read(tmp_path / "s.vts").GetPoints().GetData())
    valid = point_arrays(read(tmp_path / "s.vts"))["valid"].astype(bool)
    assert np.ptp(pts[valid, 2]) == pytest.approx(0.5 * 2.0)   # x spans [-1, 1]


def test_scene_script_is_plain_python_naming_the_files(surf2d, tmp_path):
    import ast

    main(["export", "vtk", str(surf2d), "--out", str(tmp_path / "s")])
    text = (tmp_path / "s_scene.py").read_text()
    tree = ast.parse(text)
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))
                for a in (n.names if isinstance(n, ast.Import) else [ast.alias(n.module or "")])}
    assert imported <= {"argparse", "math", "os", "sys", "paraview"}   # Debian's pvbatch runs the system python
    scene = next(ast.literal_eval(n.value) for n in tree.body if isinstance(n, ast.Assign) and n.targets[0].id == "SCENE")
    assert scene["surface"] == "s.vtp" and scene["trajectory"] == "s_trajectory.vtp"
    with h5py.File(surf2d) as f:
        loss = f["train_loss"][()]
    assert scene["range"] == [pytest.approx(np.nanmin(loss[np.isfinite(loss)])), pytest.approx(np.nanmax(loss[np.isfinite(loss)]))]


@pytest.mark.parametrize("make, args, words", [
    (None, [], ["not found"]),
    ("text", [], ["not an HDF5 file"]),
    ("foreign", [], ["not a loss-surface file", "xcoordinates/train_loss"]),
    ("ok", ["--surf-name", "val_loss"], ["no array 'val_loss'", "train_loss, train_acc, test_loss", "loss_I", "acc_M"]),
    ("ok", ["--zscale", "-1"], ["--zscale"]),
    ("empty", [], ["no finite 'train_loss'"]),
])
def test_bad_input_is_one_clear_sentence(tmp_path, capsys, make, args, words):
    path = tmp_path / "in.h5"
    if make == "text":
        path.write_text("hello")
    elif make == "foreign":
        with h5py.File(path, "w") as f:
            f["weights"] = np.zeros(3)
    elif make == "ok":
        write_surface(path)
    elif make == "empty":
        write_surface(path, nx=3, ny=2, missing=[(i, j) for i in range(3) for j in range(2)])
    assert main(["export", "vtk", str(path), "--out", str(tmp_path / "o")] + args) == 2
    err = capsys.readouterr().err
    assert err.startswith("fasland export: error: ") and err.count("\n") == 1 and "Traceback" not in err
    for w in words:
        assert w in err
    assert not list(tmp_path.glob("o*"))


def test_files_of_the_real_store_keep_their_orientation(tmp_path):
    """Written by landscape.store on a non-square grid with f = 10·x + y: every export must put f(x, y) at (x, y)."""
    from landscape.exports.surface_file import read_surface
    from landscape.store import SurfaceStore

    x, y = np.linspace(-1, 1, 5), np.linspace(-0.5, 0.5, 3)
    path = tmp_path / "store.h5"
    store = SurfaceStore(path, x, y, {"checkpoint": "runs/x/sam/checkpoint.pt"},
                         {"proj_xcoord": np.array([0.5, 0.0]), "proj_ycoord": np.array([0.5, 0.0]), "proj_epochs": np.array([1, 2])})
    for iy in range(3):
        for ix in range(5):
            if (ix, iy) != (4, 2):
                store.record(iy * 5 + ix, {"train_loss": 10 * x[ix] + y[iy], "train_acc": 0.5, "loss_I": x[ix] - 3 * y[iy]})
    store.save()
    s = read_surface(path)
    X, Y = np.meshgrid(x, y, indexing="ij")
    expected = 10 * X + Y
    expected[4, 2] = np.nan
    np.testing.assert_array_equal(s.arrays["train_loss"], expected)
    assert s.label == "sam" and s.trajectory.epochs.tolist() == [1, 2]
    main(["export", "vtk", str(path), "--out", str(tmp_path / "s"), "--zscale", "1"])
    grid = read(tmp_path / "s.vts")
    pts = vtk_to_numpy(grid.GetPoints().GetData())
    ok = point_arrays(grid)["valid"].astype(bool)
    assert ok.sum() == 14
    np.testing.assert_allclose(pts[ok, 2], 10 * pts[ok, 0] + pts[ok, 1])
    np.testing.assert_allclose(point_arrays(grid)["loss_I"][ok], pts[ok, 0] - 3 * pts[ok, 1])


def test_reference_files_without_done_mask_hide_their_unfilled_points(tmp_path):
    """plot_surface.py of Li et al. writes no `done` mask and fills points not computed yet with -1."""
    from landscape.exports.surface_file import read_surface

    x, y = np.linspace(-1, 1, 4), np.linspace(-1, 1, 4)
    loss = np.add.outer(y ** 2, x ** 2) + 0.1        # [iy, ix], the reference's flat order
    loss[3, 2:] = -1
    path = tmp_path / "ref.h5"
    with h5py.File(path, "w") as f:
        f["xcoordinates"], f["ycoordinates"] = x, y
        f["train_loss"], f["train_acc"] = loss.reshape(4, 4), np.where(loss == -1, -1, 90.0)
    s = read_surface(path)
    assert s.done.sum() == 14 and not s.done[2, 3] and not s.done[3, 3]
    assert np.isnan(s.arrays["train_acc"][3, 3]) and s.arrays["train_acc"][0, 0] == 90.0
    main(["export", "vtk", str(path), "--out", str(tmp_path / "r"), "--zscale", "1"])
    poly = read(tmp_path / "r.vtp")
    assert poly.GetNumberOfPolys() == 9 - 2
    np.testing.assert_array_equal(point_arrays(poly)["valid"], (loss.ravel() != -1).astype(np.uint8))
