"""`fasland export png`: side-by-side contours share their levels and colour range, invalid points are masked,
the path is drawn, 1-D curves share their axes, and the files are real images."""
import h5py
import numpy as np
import pytest
from matplotlib.contour import ContourSet
from PIL import Image

from fasland.cli import main
from export_fixtures import write_surface
from landscape.exports.figures import contour_figure, curves_figure, parse_levels
from landscape.exports.surface_file import nice_levels, read_surfaces


def finite_values(path, name):
    with h5py.File(path) as f:
        v, done = f[name][()], f["done"][()].astype(bool)
    return v[done & np.isfinite(v)]


@pytest.fixture
def three(tmp_path):
    paths = [tmp_path / f"{m}.h5" for m in ("erm", "sam", "gacfas")]
    write_surface(paths[0], scale=1.0, missing=[(8, 6)], blowup=[(0, 0)])
    write_surface(paths[1], scale=0.5)
    write_surface(paths[2], scale=0.25)
    return paths


def contour_sets(fig):
    return [c for ax in fig.axes for c in ax.collections if isinstance(c, ContourSet)]


def test_side_by_side_contours_share_levels_and_mask_invalid_points(three):
    fig = contour_figure(read_surfaces(three), labels=["ERM", "SAM", "GAC-FAS"])
    sets = contour_sets(fig)
    assert len(sets) == 3
    lo = min(finite_values(p, "train_loss").min() for p in three)
    hi = max(finite_values(p, "train_loss").max() for p in three)
    for cs in sets:
        np.testing.assert_allclose(cs.levels, nice_levels(lo, hi, 12))
        assert cs.norm.vmin == pytest.approx(lo) and cs.norm.vmax == pytest.approx(hi)
        assert len(cs.labelTexts) >= 3                          # labelled levels
    first = finite_values(three[0], "train_loss")
    assert sets[0].zmin == pytest.approx(first.min()) and sets[0].zmax == pytest.approx(first.max())   # inf/NaN masked
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles == ["ERM", "SAM", "GAC-FAS"]
    axes3d = [ax for ax in fig.axes if ax.name == "3d"]
    assert len(axes3d) == 3 and all(ax.get_zlim() == pytest.approx((lo, hi)) for ax in axes3d)
    with h5py.File(three[0]) as f:
        px, py = f["proj_xcoord"][()], f["proj_ycoord"][()]
    path = [ln for ln in fig.axes[0].lines if ln.get_label() == "training path"]
    assert len(path) == 1
    np.testing.assert_allclose(path[0].get_xdata(), px)
    np.testing.assert_allclose(path[0].get_ydata(), py)
    assert fig.axes[0].get_xlabel() == "PC1 (71.0%)"


def test_given_levels_are_used_verbatim(three):
    levels = parse_levels("0.2:2:0.3")
    np.testing.assert_allclose(levels, [0.2, 0.5, 0.8, 1.1, 1.4, 1.7])
    for cs in contour_sets(contour_figure(read_surfaces(three[:2]), levels=levels)):
        np.testing.assert_allclose(cs.levels, levels)


def test_one_d_curves_use_loss_and_accuracy_axes_with_shared_limits(tmp_path):
    a, b = tmp_path / "a.h5", tmp_path / "b.h5"
    ta = write_surface(a, nx=21, one_d=True, missing=[(3,)])
    tb = write_surface(b, nx=21, one_d=True, scale=4.0)
    fig = curves_figure(read_surfaces([a, b]))
    left = [ax for ax in fig.axes if ax.get_lines() and ax.get_lines()[0].get_label().startswith(("train_loss", "loss"))]
    right = [ax for ax in fig.axes if ax not in left]
    assert len(left) == 2 and len(right) == 2
    assert left[0].get_ylim() == left[1].get_ylim() and right[0].get_ylim() == right[1].get_ylim()
    hi = max(np.nanmax(t["arrays"][n]) for t in (ta, tb) for n in t["arrays"] if "loss" in n)
    assert left[0].get_ylim()[1] >= hi
    lines = {ln.get_label(): ln for ln in left[0].get_lines()}
    assert {"train_loss", "test_loss", "loss_I", "loss_C", "loss_M", "loss_O"} == set(lines)
    np.testing.assert_array_equal(lines["loss_C"].get_ydata(), ta["arrays"]["loss_C"])       # NaN gap at the missing point
    assert {ln.get_label() for ln in right[0].get_lines()} >= {"train_acc", "test_acc", "acc_M", "test_hter", "test_auc"}


def test_cli_writes_png_and_pdf(three, tmp_path):
    out = tmp_path / "fig" / "surfaces.png"
    assert main(["export", "png", *map(str, three), "--out", str(out), "--labels", "ERM,SAM,GAC-FAS", "--dpi", "80"]) == 0
    img = np.asarray(Image.open(out).convert("RGB")).astype(int)
    assert img.shape[0] > 300 and img.shape[1] > 600 and img.std() > 20
    assert len(np.unique(img.reshape(-1, 3), axis=0)) > 500
    pdf = tmp_path / "surfaces.pdf"
    assert main(["export", "png", str(three[0]), "--out", str(pdf), "--surf-name", "test_hter", "--log"]) == 0
    assert pdf.read_bytes()[:5] == b"%PDF-"


@pytest.mark.parametrize("case, words", [
    ("mixed", ["mix 1-D and 2-D"]),
    ("name", ["'val_acc'", "train_loss", "loss_O"]),
    ("levels", ["--levels", "MIN:MAX:STEP"]),
    ("format", ["unknown image format '.xyz'"]),
])
def test_bad_input_is_one_clear_sentence(three, tmp_path, capsys, case, words):
    line = tmp_path / "line.h5"
    write_surface(line, one_d=True)
    args = {"mixed": [str(three[0]), str(line), "--out", str(tmp_path / "f.png")],
            "name": [str(three[0]), "--surf-name", "val_acc", "--out", str(tmp_path / "f.png")],
            "levels": [str(three[0]), "--levels", "1:2", "--out", str(tmp_path / "f.png")],
            "format": [str(three[0]), "--out", str(tmp_path / "f.xyz")]}[case]
    assert main(["export", "png", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fasland export: error: ") and err.count("\n") == 1
    for w in words:
        assert w in err
    assert not list(tmp_path.glob("f.*")) and not list(tmp_path.glob(".f.*"))
