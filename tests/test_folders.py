"""The real-data loader on a small folder tree in the SA-FAS/GAC-FAS layout, and its errors."""
import numpy as np
import pytest
import torch
from PIL import Image

from training.data import load_domain
from training.errors import FaslandError


def write_video(folder, frames=3, colour=(200, 120, 90)):
    folder.mkdir(parents=True)
    for i in range(frames):
        pixels = np.full((40, 30, 3), colour, np.uint8)
        pixels[i] = 0
        Image.fromarray(pixels).save(folder / f"crop_{i:03d}.jpg")


@pytest.fixture
def root(tmp_path):
    """msu with two live and one spoof video per split, plus oulu's folder (nested sub-folders)."""
    r = tmp_path / "data"
    for split in ("train", "test"):
        write_video(r / "msu" / split / "live" / "real_client001", 3)
        write_video(r / "msu" / split / "Live" / "real_client002", 2)
        write_video(r / "msu" / split / "spoof" / "attack_client001_print", 4, colour=(60, 60, 200))
        write_video(r / "oulu" / split / "session1" / "LIVE" / "1_1_01_1", 2)
        write_video(r / "oulu" / split / "session1" / "spoof" / "1_1_01_2", 2)
    return r


def test_loads_frames_labels_clients(root, tmp_path):
    data = load_domain(str(root), "M", "train", image_size=24, cache_dir=str(tmp_path / "cache"))
    assert data.images.shape == (9, 3, 24, 24) and data.images.dtype == torch.uint8
    assert data.labels.tolist() == [1.0] * 5 + [0.0] * 4        # Live, live, spoof (sorted by path)
    assert data.labels.dtype == torch.float32 and data.clients.dtype == torch.int64
    assert len(data.clients.unique()) == 3                        # a video is a client
    assert data.depth.shape == (9, 32, 32) and data.depth[data.labels == 0].sum() == 0
    assert data.depth[data.labels == 1].flatten(1).amax(1).min() > 0
    blue = data.images[data.labels == 0].float().mean((0, 2, 3))
    assert blue[2] > blue[0]                                       # the spoof frames are the blue ones
    test = load_domain(str(root), "M", "test", image_size=24, cache_dir=str(tmp_path / "cache"))
    assert not set(test.clients.tolist()) & set(data.clients.tolist())
    again = load_domain(str(root), "M", "train", image_size=24, cache_dir=str(tmp_path / "cache"))
    assert all(torch.equal(a, b) for a, b in zip(data, again))


def test_samples_draws_a_seeded_subset(root, tmp_path):
    a = load_domain(str(root), "O", "test", image_size=16, samples=3, seed=1, cache_dir=str(tmp_path))
    b = load_domain(str(root), "O", "test", image_size=16, samples=3, seed=1, cache_dir=str(tmp_path))
    assert a.images.shape[0] == 3 and torch.equal(a.images, b.images)


@pytest.mark.parametrize("case, message", [
    ("missing_root", "data root .* does not exist"),
    ("missing_domain", "domain folder .*casia.* not found"),
    ("missing_split", "split folder .* not found"),
    ("empty", "no crop_\\*.jpg frames under"),
    ("no_spoof", "has no spoof videos"),
    ("no_live", "has no live videos"),
    ("unlabelled", "cannot tell live from spoof for video"),
    ("unknown_domain", "unknown domain 'X'"),
])
def test_errors_name_the_path_and_the_fix(root, tmp_path, case, message):
    domain = "C"
    if case == "missing_root":
        target = tmp_path / "nowhere"
    elif case == "missing_domain":
        target = root
    elif case == "unknown_domain":
        target, domain = root, "X"
    else:
        target = tmp_path / case
        split = target / "casia" / "train"
        split.mkdir(parents=True)
        if case == "missing_split":
            split.rmdir()
        elif case == "empty":
            (split / "live" / "v1").mkdir(parents=True)
            (split / "live" / "v1" / "frame_000.png").write_bytes(b"")
        elif case == "no_spoof":
            write_video(split / "live" / "v1")
        elif case == "no_live":
            write_video(split / "spoof" / "v1")
        elif case == "unlabelled":
            write_video(split / "live" / "v1")
            write_video(split / "attack" / "v2")
    with pytest.raises(FaslandError, match=message):
        load_domain(str(target), domain, "train", image_size=16, cache_dir=str(tmp_path / "cache"))


@pytest.mark.parametrize("relative, label", [
    ("spoof/Clive_03", 0), ("live/Spoofy", 1), ("Live-session/v1", 1), ("attack/v1_SPOOF", 0),
    ("session1/live_02", 1), ("alive/v1", None), ("spoofing/v1", None), ("live/spoof_01", None), ("v1", None),
])
def test_labels_are_whole_words_of_the_path(relative, label):
    from pathlib import Path

    from training.data.folders import video_label
    assert video_label(Path(relative)) == label


def test_a_spoof_video_named_like_clive_loads_as_spoof(tmp_path):
    r = tmp_path / "data"
    for split in ("train", "test"):
        write_video(r / "casia" / split / "live" / "olive_01", 2)
        write_video(r / "casia" / split / "spoof" / "Clive_03", 3)
    data = load_domain(str(r), "C", "train", image_size=16, cache_dir=str(tmp_path / "cache"))
    assert data.labels.tolist() == [1.0] * 2 + [0.0] * 3
