"""Same seed and inputs → the same numbers, bit for bit, on one machine: directions, surfaces (compared
as arrays: HDF5 files carry timestamps), SynthFAS images and trained weights. A different seed gives
different numbers, so none of these checks can pass by comparing constants."""
import numpy as np
import pytest
import torch

from reliability_fixtures import assert_same_weights, cli, datasets, make_checkpoint, tiny_run, train_args, weights

__all__ = ["tiny_run"]
SURF = ["--x", "-1:1:3", "--y", "-1:1:2", "--max-samples", "8", "--threads", "1"]


def assert_same_arrays(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], np.ndarray):
            assert a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k], equal_nan=a[k].dtype.kind == "f"), k
        else:
            assert a[k] == b[k], k


@pytest.fixture(scope="module")
def surfaces(module_tmp):
    """Three `fasland surface` runs of one checkpoint: seed 0 twice, seed 1 once."""
    d = module_tmp
    ck = make_checkpoint(d / "c.pt")
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        r = cli(["surface", "--checkpoint", ck, *SURF, "--seed", seed, "--out", d / f"{name}.h5"])
        assert r.code == 0, r.err[-2000:]
    return d


def test_same_seed_gives_identical_directions(surfaces):
    a, b, c = (datasets(surfaces / f"{n}.dirs.h5") for n in "abc")
    assert len([k for k in a if k.startswith("xdirection/")]) == len([k for k in a if k.startswith("ydirection/")]) > 60
    assert_same_arrays(a, b)
    assert all(a[k].dtype == np.float32 for k in a)
    assert any(not np.array_equal(a[k], c[k]) for k in a)          # seed 1 draws other directions


def test_same_seed_gives_identical_surface_arrays(surfaces):
    a, b, c = (datasets(surfaces / f"{n}.h5") for n in "abc")
    assert a["done"].all() and a["train_loss"].shape == (3, 2)
    a.pop("dir_file"), b.pop("dir_file"), c.pop("dir_file")       # the direction file's own path
    assert_same_arrays(a, b)
    assert not np.array_equal(a["train_loss"], c["train_loss"])


def test_synthfas_is_identical_for_a_seed():
    from training.data.synth import generate

    one, two = generate("C", "train", 32, 24, seed=0), generate("C", "train", 32, 24, seed=0)
    other = generate("C", "train", 32, 24, seed=1)
    for field in ("images", "labels", "depth", "clients"):
        assert torch.equal(getattr(one, field), getattr(two, field)), field
    assert one.images.dtype == torch.uint8 and one.images.shape == (24, 3, 32, 32)
    assert not torch.equal(one.images, other.images)


def test_two_identical_training_runs_give_identical_weights(tiny_run, tmp_path):
    reference, config = tiny_run
    r = cli(train_args(config, tmp_path / "again"))
    assert r.code == 0, r.err[-2000:]
    for name in ("checkpoint.pt", "checkpoints/epoch_000.pt", "checkpoints/epoch_001.pt", "checkpoints/epoch_002.pt"):
        assert_same_weights(tmp_path / "again" / name, reference / name)
    assert (tmp_path / "again" / "steps.jsonl").read_text() == (reference / "steps.jsonl").read_text()
    moved = weights(reference / "checkpoint.pt")["head.weight"] - weights(reference / "checkpoints/epoch_000.pt")["head.weight"]
    assert moved.abs().max() > 0                                     # training changed the weights

