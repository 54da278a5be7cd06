"""The study's own numbers: surface width from a 1-D curve, read back from the file."""
import h5py
import numpy as np
import pytest

from analysis.study import axis_around, surface_width


def curve(path, a, loss):
    with h5py.File(path, "w") as f:
        f["xcoordinates"], f["train_loss"] = a, loss


def test_width_of_a_parabola_is_its_closed_form(tmp_path):
    a = np.linspace(-1, 1, 401)
    curve(tmp_path / "c.h5", a, 0.3 + 2.0 * a ** 2)
    width, open_ended = surface_width(tmp_path / "c.h5", 0.1)
    assert width == pytest.approx(2 * np.sqrt(0.1 / 2.0), abs=1e-4) and not open_ended


def test_flat_curve_is_a_lower_bound_and_nan_stops_the_interval(tmp_path):
    a = np.linspace(-1, 1, 21)
    curve(tmp_path / "flat.h5", a, np.full_like(a, 0.5))
    assert surface_width(tmp_path / "flat.h5", 0.1) == (pytest.approx(2.0), True)
    loss = np.full_like(a, 0.5)
    loss[15:] = np.nan                        # diverged beyond a = 0.5
    curve(tmp_path / "nan.h5", a, loss)
    assert surface_width(tmp_path / "nan.h5", 0.1) == (pytest.approx(1.0 + a[14]), True)   # still open at a = −1


def test_pca_axis_covers_the_path_with_margin():
    lo, hi, n = axis_around(np.array([-2.0, 0.0, 6.0]), 9).split(":")
    assert float(lo) == pytest.approx(-4.0) and float(hi) == pytest.approx(8.0) and n == "9"
