"""`fasland export html`: the figures hold the h5/JSON values (masked where invalid), share one colour scale
and one set of levels across surfaces, and the page carries plotly.js itself."""
import json
import re
from pathlib import Path

import h5py
import numpy as np
import pytest

from fasland.cli import main
from export_fixtures import write_conflicts, write_hessian, write_surface
from landscape.exports.html_page import curves_figure, surfaces_figure
from analysis.views import conflicts_figure, hessian_figure
from landscape.exports.surface_file import read_surfaces


def rows_follow_y(path, name):
    """The stored (nx, ny) dataset as plotly's z[iy][ix], with None where not done or not finite."""
    with h5py.File(path) as f:
        raw, done = f[name][()], f["done"][()]
        nx, ny = len(f["xcoordinates"]), len(f["ycoordinates"])
    z = raw.reshape(ny, nx).astype(float)
    z[(done.reshape(ny, nx) == 0) | ~np.isfinite(z)] = np.nan
    return z


def as_array(z):
    return np.array([[np.nan if v is None else v for v in row] for row in z], dtype=float)


@pytest.fixture
def three(tmp_path):
    paths = [tmp_path / f"{m}.h5" for m in ("erm", "sam", "gacfas")]
    write_surface(paths[0], scale=1.0, missing=[(8, 6)], blowup=[(0, 0)])
    write_surface(paths[1], scale=0.5)
    write_surface(paths[2], scale=0.25, nx=11, ny=5)
    return paths


def test_surfaces_share_colour_scale_and_levels_and_hold_the_h5_values(three):
    fig = surfaces_figure(read_surfaces(three))
    surfaces = [t for t in fig.data if t.type == "surface"]
    contours = [t for t in fig.data if t.type == "contour"]
    assert len(surfaces) == len(contours) == 3
    truth = [rows_follow_y(p, "train_loss") for p in three]
    for t3, t2, z in zip(surfaces, contours, truth):
        np.testing.assert_array_equal(as_array(t3.z), z)
        np.testing.assert_array_equal(as_array(t2.z), z)
        assert t3.coloraxis == t2.coloraxis == "coloraxis"
    assert as_array(surfaces[0].z)[0, 0] != as_array(surfaces[0].z)[0, 0]       # the inf point is a gap
    lo = min(np.nanmin(z) for z in truth)
    hi = max(np.nanmax(z) for z in truth)
    assert fig.layout.coloraxis.cmin == pytest.approx(lo) and fig.layout.coloraxis.cmax == pytest.approx(hi)
    levels = {(c.contours.start, c.contours.end, c.contours.size) for c in contours}
    assert len(levels) == 1
    start, end, size = levels.pop()
    assert start <= lo and end >= hi and 8 <= (end - start) / size <= 30
    paths3d = [t for t in fig.data if t.type == "scatter3d"]
    paths2d = [t for t in fig.data if t.type == "scatter"]
    assert len(paths3d) == len(paths2d) == 3
    with h5py.File(three[0]) as f:
        np.testing.assert_allclose(paths2d[0].x, f["proj_xcoord"][()])
        np.testing.assert_allclose(paths2d[0].y, f["proj_ycoord"][()])
        np.testing.assert_array_equal(paths2d[0].customdata, f["proj_epochs"][()])


def test_menu_switches_every_panel_to_each_array(three):
    fig = surfaces_figure(read_surfaces(three), first="test_loss")
    buttons = fig.layout.updatemenus[0].buttons
    names = [b.label for b in buttons]
    assert names[0] == "test_loss"
    assert set(names) == {"train_loss", "train_acc", "test_loss", "test_acc", "test_hter", "test_auc",
                          "loss_I", "acc_I", "loss_C", "acc_C", "loss_M", "acc_M", "loss_O", "acc_O"}
    button = buttons[names.index("acc_C")]
    data, layout, traces = button.args
    kinds = [fig.data[i].type for i in traces]
    assert kinds.count("surface") == kinds.count("contour") == kinds.count("scatter3d") == 3
    truth = [rows_follow_y(p, "acc_C") for p in three]
    zs = [as_array(z) for z, kind in zip(data["z"], kinds) if kind == "surface"]
    for z, t in zip(zs, truth):
        np.testing.assert_array_equal(z, t)
    assert layout["coloraxis.cmin"] == pytest.approx(min(np.nanmin(t) for t in truth))
    assert layout["coloraxis.cmax"] == pytest.approx(max(np.nanmax(t) for t in truth))
    assert len({json.dumps(c) for c, k in zip(data["contours"], kinds) if k == "contour"}) == 1


def test_log_and_zmax_change_heights_not_masking(three):
    fig = surfaces_figure(read_surfaces(three[:1]), log=True, zmax=1.0)
    z = as_array(fig.data[0].z)
    truth = rows_follow_y(three[0], "train_loss")
    np.testing.assert_allclose(z, np.log(np.minimum(truth, 1.0) + 0.1))


def test_one_d_page_draws_every_domain_on_shared_axes(tmp_path):
    a, b = tmp_path / "a.h5", tmp_path / "b.h5"
    ta = write_surface(a, nx=21, one_d=True, missing=[(4,)])
    tb = write_surface(b, nx=21, one_d=True, scale=3.0)
    fig = curves_figure(read_surfaces([a, b]))
    names = {t.name for t in fig.data}
    assert {"loss_I", "loss_C", "loss_M", "loss_O", "acc_I", "train_loss", "test_acc", "test_hter"} <= names
    first = {t.name: t for t in fig.data if t.xaxis == "x"}
    np.testing.assert_array_equal(np.array(first["loss_M"].y, dtype=float), ta["arrays"]["loss_M"])   # None -> nan at the gap
    assert first["loss_M"].y[4] is None
    loss_axes = {fig.layout[k].range for k in ("yaxis", "yaxis3")}
    assert len(loss_axes) == 1
    hi = max(np.nanmax(t["arrays"][n]) for t in (ta, tb) for n in t["arrays"] if "loss" in n)
    assert loss_axes.pop()[1] >= hi


def test_page_is_self_contained(three, tmp_path):
    out = tmp_path / "page.html"
    assert main(["export", "html", *map(str, three), "--out", str(out), "--labels", "ERM,SAM,GAC-FAS"]) == 0
    html = out.read_text()
    assert not re.search(r"<script[^>]+src=", html)          # nothing fetched: plotly.js is inline
    assert html.count("Plotly.newPlot") == 1 and len(html) > 2_000_000
    for label in ("ERM", "SAM", "GAC-FAS"):
        assert f'"{label}"' in html


def read_hessian(path):
    from analysis.views import HessianView
    return HessianView().read(path, json.loads(Path(path).read_text()))


def read_conflicts(path):
    from analysis.views import ConflictsView
    return ConflictsView().read(path, json.loads(Path(path).read_text()))[0]


def test_analysis_files_become_density_eigenvalue_and_conflict_views(tmp_path):
    h1, h2, c = tmp_path / "erm.json", tmp_path / "sam.json", tmp_path / "conf.json"
    d1, d2 = write_hessian(h1, "erm"), write_hessian(h2, "sam", scale=0.4)
    dc = write_conflicts(c, "gacfas")
    spectra = read_hessian(h1)
    assert [s.label for s in spectra] == ["erm", "erm · I", "erm · C", "erm · M"]
    np.testing.assert_array_equal(spectra[0].eigenvalues, d1["eigenvalues"])
    np.testing.assert_array_equal(spectra[0].density, d1["density"]["density"])
    assert spectra[0].trace == d1["trace"]["mean"] and spectra[2].eigenvalues.tolist() == [d1["per_domain"]["C"]["lambda_max"]]
    conf = read_conflicts(c)
    assert conf.domains == ["I", "C", "M"] and conf.label == "gacfas"
    assert list(conf.matrices) == ["theta", "sam", "ascent I", "ascent C", "ascent M", "generalization"]
    np.testing.assert_array_equal(conf.matrices["ascent C"], dc["gacfas"]["points"]["C"]["cosines"])
    np.testing.assert_array_equal(conf.matrices["sam"], dc["sam"]["cosines"])
    assert conf.scores["theta"] == dc["theta"]["conflict"]
    np.testing.assert_array_equal(conf.epochs, [1, 2, 3, 4, 5])
    np.testing.assert_array_equal(conf.over_epochs["theta"][:, 0, 2], [e["theta"]["cosines"][0][2] for e in dc["trajectory"]])
    np.testing.assert_array_equal(conf.over_epochs["ascent M"][:, 1, 2],
                                  [e["gacfas"]["points"]["M"]["cosines"][1][2] for e in dc["trajectory"]])
    hf = hessian_figure(read_hessian(h1) + read_hessian(h2))
    dens = [t for t in hf.data if t.xaxis == "x"]
    assert len(dens) == 2 and dens[1].name == "sam (trace 16)"
    np.testing.assert_allclose(dens[1].y, d2["density"]["density"])
    cf = conflicts_figure([conf])
    heat = [t for t in cf.data if t.type == "heatmap"]
    assert len(heat) == 6 and cf.layout.coloraxis.cmin == -1 and cf.layout.coloraxis.cmax == 1
    np.testing.assert_array_equal(heat[4].z, dc["gacfas"]["points"]["M"]["cosines"])
    lines = [t for t in cf.data if t.type == "scatter"]
    assert [t.name for t in lines[:3]] == ["theta: I–C", "theta: I–M", "theta: C–M"]
    assert len(lines) == 3 + 5                                # θ's pairs, then the mean pair cosine at 5 other points
    k = [[np.mean([e["sam"]["cosines"][a][b] for a, b in ((0, 1), (0, 2), (1, 2))]) for e in dc["trajectory"]]]
    np.testing.assert_allclose(lines[3].y, k[0])
    out = tmp_path / "analysis.html"
    assert main(["export", "html", str(h1), str(h2), str(c), "--out", str(out)]) == 0
    assert out.stat().st_size > 2_000_000


@pytest.mark.parametrize("content, words", [
    ("{not json", ["nor readable JSON"]),
    ('{"loss": 1}', ["neither a surface file nor a result", "'fasland hessian'", "'fasland conflicts'"]),
    ('{"command": "conflicts", "version": 1, "domains": ["I", "C"], "theta": {"norms": [1, 2]}}', ["theta has no 2×2 cosine matrix"]),
    ('{"command": "hessian", "eigenvalues": [1.0]}', ["older fasland", "rerun 'fasland hessian'"]),
    ('{"command": "hessian", "version": 99}', ["version 99", "does not know"]),
    ("[1, 2]", ["neither a surface file nor a result"]),
    (None, ["not found"]),
])
def test_bad_inputs_are_one_clear_sentence(tmp_path, capsys, content, words):
    path = tmp_path / "in.json"
    if content is not None:
        path.write_text(content)
    assert main(["export", "html", str(path), "--out", str(tmp_path / "p.html")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fasland export: error: ") and err.count("\n") == 1
    for w in words:
        assert w in err
    assert not (tmp_path / "p.html").exists()


def test_labels_must_match_inputs_and_surf_name_must_exist(three, tmp_path, capsys):
    assert main(["export", "html", *map(str, three), "--out", str(tmp_path / "p.html"), "--labels", "A,B"]) == 2
    assert "--labels gives 2 names for 3 input files" in capsys.readouterr().err
    assert main(["export", "html", str(three[0]), "--out", str(tmp_path / "p.html"), "--surf-name", "nope"]) == 2
    err = capsys.readouterr().err
    assert "'nope'" in err and "train_loss" in err and "acc_O" in err
