"""The surface file: schema, reference value order, resume identity, refusal, atomic writes, the writer lock."""
import h5py
import numpy as np
import pytest

from landscape import store as store_mod
from landscape.store import SurfaceStore, read_store
from training.errors import FaslandError

X, Y = np.linspace(-1, 1, 4), np.linspace(-0.5, 0.5, 3)
PROV = {"checkpoint_sha256": "abc", "directions": {"kind": "random", "seed": 0}, "data": {"protocol": "ICM2O"}}


def fill(s: SurfaceStore, f, ks=None):
    """Record metrics f(x, y) at the flat indices ks (reference order k = iy*nx + ix)."""
    nx = len(s.x)
    for k in (range(s.size) if ks is None else ks):
        x, y = s.x[k % nx], s.y[k // nx]
        s.record(k, {"train_loss": f(x, y), "train_acc": 0.5, "loss_I": 2 * f(x, y)})


def g(x, y):
    return x + 10 * y


def test_schema_and_reference_order(tmp_path):
    path = tmp_path / "surf.h5"
    s = SurfaceStore.open(path, X, Y, PROV, {"proj_xcoord": np.array([0.1, 0.2])})
    fill(s, g)
    s.close()
    with h5py.File(path, "r") as f:
        assert f["train_loss"].shape == (4, 3) and f["done"].shape == (4, 3)
        assert f["done"][()].dtype == np.uint8 and f["done"][()].all()
        assert f.attrs["checkpoint_sha256"] == "abc" and f.attrs["layout"] == "reference"
        np.testing.assert_array_equal(f["proj_xcoord"][()], [0.1, 0.2])
        # a reader as the reference's h52vtp.py: meshgrid(x, y) raveled against the values raveled
        xm, ym = np.meshgrid(f["xcoordinates"][:], f["ycoordinates"][:])
        np.testing.assert_allclose(f["train_loss"][:].ravel(), g(xm.ravel(), ym.ravel()))
    back = read_store(path)
    np.testing.assert_allclose(back.arrays["loss_I"], 2 * g(*np.meshgrid(X, Y, indexing="ij")))   # [ix, iy]


def test_resume_keeps_points_and_lists_the_missing_ones(tmp_path):
    path = tmp_path / "surf.h5"
    s = SurfaceStore.open(path, X, Y, PROV)
    fill(s, g, ks=[0, 5, 7])
    s.close()
    s2 = SurfaceStore.open(path, X, Y, PROV)
    assert s2.missing() == [k for k in range(12) if k not in (0, 5, 7)]
    assert s2.arrays["train_loss"][1, 1] == g(X[1], Y[1])      # k = 5 = iy·nx + ix
    assert np.isnan(s2.arrays["train_loss"][1, 0])
    s2.close()


@pytest.mark.parametrize("change", ["grid", "checkpoint_sha256", "directions", "data"])
def test_another_surface_is_refused_and_left_untouched(tmp_path, change):
    path = tmp_path / "surf.h5"
    s = SurfaceStore.open(path, X, Y, PROV)
    fill(s, g, ks=[1, 2])
    s.close()
    before = path.read_bytes()
    prov, x = dict(PROV), X
    if change == "grid":
        x = np.linspace(-1, 1, 5)
    else:
        prov[change] = {"other": 1} if change != "checkpoint_sha256" else "def"
    with pytest.raises(FaslandError, match="another") as e:
        SurfaceStore.open(path, x, Y, prov)
    assert "\n" not in str(e.value)
    assert path.read_bytes() == before
    SurfaceStore.open(path, X, Y, PROV).close()   # the lock was released on refusal


def test_files_that_are_not_ours_are_refused(tmp_path):
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f["xcoordinates"] = X
    before = other.read_bytes()
    with pytest.raises(FaslandError, match="not a fasland surface"):
        SurfaceStore.open(other, X, Y, PROV)
    assert other.read_bytes() == before
    text = tmp_path / "notes.h5"
    text.write_text("hello")
    with pytest.raises(FaslandError, match="not a readable HDF5"):
        SurfaceStore.open(text, X, Y, PROV)
    assert text.read_text() == "hello"
    with pytest.raises(FaslandError, match="is a folder"):
        SurfaceStore.open(tmp_path, X, Y, PROV)


def test_a_failing_write_leaves_the_last_complete_file(tmp_path, monkeypatch):
    path = tmp_path / "surf.h5"
    s = SurfaceStore.open(path, X, Y, PROV)
    fill(s, g, ks=[0])
    s.save()
    before = path.read_bytes()
    fill(s, g, ks=[1])

    def boom(*a, **k):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(store_mod.os, "fsync", boom)
    with pytest.raises(FaslandError, match=r"cannot write .*surf.h5. \(No space left"):
        s.save()
    assert path.read_bytes() == before
    assert not list(tmp_path.glob(".surf.h5.*.tmp"))
    assert read_store(path).done.sum() == 1
    s.release()


def test_one_writer_at_a_time_and_stale_temporaries_are_removed(tmp_path):
    path = tmp_path / "surf.h5"
    s = SurfaceStore.open(path, X, Y, PROV)
    with pytest.raises(FaslandError, match="another fasland job is writing"):
        SurfaceStore.open(path, X, Y, PROV)
    s.close()
    stale = tmp_path / ".surf.h5.99999.tmp"
    stale.write_bytes(b"torn")
    SurfaceStore.open(path, X, Y, PROV).close()
    assert not stale.exists()


def test_non_finite_values_are_stored_as_they_are(tmp_path):
    path = tmp_path / "surf.h5"
    s = SurfaceStore.open(path, X, None, PROV)
    s.record(0, {"train_loss": float("inf"), "test_hter": float("nan")})
    s.record(1, {"train_loss": 0.3, "test_hter": 0.1})
    s.close()
    back = read_store(path)
    assert back.arrays["train_loss"][0] == np.inf and np.isnan(back.arrays["test_hter"][0])
    assert back.done.tolist() == [True, True, False, False]


def test_finished_surface_is_not_rewritten(tmp_path):
    path = tmp_path / "surf.h5"
    s = SurfaceStore.open(path, X, None, PROV)
    fill_1d = [s.record(k, {"train_loss": float(k)}) for k in range(4)]
    assert len(fill_1d) == 4
    s.close()
    stat = path.stat()
    s2 = SurfaceStore.open(path, X, None, PROV)
    assert s2.missing() == []
    s2.close()
    assert path.stat().st_mtime_ns == stat.st_mtime_ns and path.stat().st_ino == stat.st_ino


def test_autosave_spends_a_bounded_share_of_time(tmp_path, monkeypatch):
    s = SurfaceStore.open(tmp_path / "surf.h5", X, None, PROV)
    clock = [100.0]
    monkeypatch.setattr(store_mod.time, "monotonic", lambda: clock[0])
    s.last_save, s.save_cost = 100.0, 0.01
    s.record(0, {"train_loss": 1.0})
    clock[0] = 100.1
    assert not s.save_if_due(overhead=0.05)     # 0.1 s < 0.01 / 0.05 = 0.2 s
    clock[0] = 100.3
    assert s.save_if_due(overhead=0.05)
    assert not s.save_if_due(overhead=0.05)     # nothing new to save
    s.close()


def test_journal_keeps_points_recorded_after_the_last_save(tmp_path):
    """A writer killed between two full saves: its journaled points come back, a torn last line is
    dropped, and a journal of another surface is ignored."""
    path = tmp_path / "surf.h5"
    s = SurfaceStore.open(path, X, Y, PROV)
    fill(s, g, ks=[0, 1])
    s.save()
    fill(s, g, ks=[2, 3])                      # journaled, not yet in the file
    s.journal.write('[4, {"train_loss": 1')   # the point in flight when the kill came
    s.journal.flush()
    s.release()                                # what a SIGKILL leaves: no close(), no save
    assert read_store(path).done.sum() == 2
    s2 = SurfaceStore.open(path, X, Y, PROV)
    assert s2.done[:, 0].all() and s2.done.sum() == 4           # k = 0..3: the first row of y
    assert s2.arrays["train_loss"][3, 0] == g(X[3], Y[0])
    assert read_store(path).done.sum() == 4    # replayed points are saved at once
    s2.close()
    assert not path.with_name(".surf.h5.journal").exists()
    other = tmp_path / "other.h5"
    s3 = SurfaceStore.open(other, X, None, PROV)
    s3.record(1, {"train_loss": 5.0})
    s3.release()
    path.unlink()
    path.with_name(".other.h5.journal").rename(path.with_name(".surf.h5.journal"))
    s4 = SurfaceStore.open(path, X, Y, PROV)   # a journal of a 1-D surface: not this one
    assert s4.done.sum() == 0
    s4.close()


def test_both_readers_index_a_hand_made_reference_file_as_ix_iy(tmp_path):
    """A file written as the reference's plot_surface.py does (shape (nx, ny), values along meshgrid(x, y)
    raveled), nx ≠ ny: read_store and the exports' read_surface both give a[ix, iy] = f(x[ix], y[iy]), and
    the one point left undone is flat k = iy·nx + ix."""
    from landscape.exports.surface_file import read_surface

    xm, ym = np.meshgrid(X, Y)                          # [iy, ix]
    done = np.ones_like(xm, dtype=np.uint8)
    done[1, 2] = 0                                      # (ix, iy) = (2, 1): k = 1·4 + 2 = 6
    path = tmp_path / "hand.h5"
    with h5py.File(path, "w") as f:
        f["xcoordinates"], f["ycoordinates"] = X, Y
        f["train_loss"] = g(xm, ym).reshape(len(X), len(Y))
        f["done"] = done.reshape(len(X), len(Y))
        f.attrs["format"] = store_mod.FORMAT
    expected = g(*np.meshgrid(X, Y, indexing="ij"))
    s = read_store(path)
    assert s.arrays["train_loss"].shape == (4, 3) and s.missing() == [6] and not s.done[2, 1]
    np.testing.assert_array_equal(s.arrays["train_loss"], expected)
    expected[2, 1] = np.nan
    np.testing.assert_array_equal(read_surface(path).arrays["train_loss"], expected)
    s.path = tmp_path / "again.h5"
    s.save()                                            # and the store writes it back in the same layout
    with h5py.File(s.path, "r") as f:
        np.testing.assert_array_equal(f["train_loss"][()], g(xm, ym).reshape(len(X), len(Y)))
        np.testing.assert_array_equal(f["done"][()], done.reshape(len(X), len(Y)))
