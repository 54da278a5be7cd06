"""Real data at the datasets' size, on a folder of JPEG videos in the release's layout
ROOT/<dataset>/<split>/<live|spoof>/<video>/crop_NNNN.jpg: training streams one random frame of each video
per pass from DataLoader workers, the probe decodes frames_per_video frames of each video and no others."""
import h5py
import numpy as np
import pytest
import torch
from PIL import Image

from training.data import folders
from training.probe import load_probe

VIDEOS, FRAMES, SIZE = 6, 20, 16          # per class, domain and split: 96 videos of 20 frames


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """Each frame is flat: red = 10 · frame index, green = 10 · video index (live videos first), blue = live."""
    r = tmp_path_factory.mktemp("real")
    for dataset in ("replay", "oulu", "casia", "msu"):
        for split in ("train", "test"):
            for label, kind in ((1, "live"), (0, "spoof")):
                for v in range(VIDEOS):
                    video = r / dataset / split / kind / f"{kind}_{v:02d}"
                    video.mkdir(parents=True)
                    for i in range(FRAMES):
                        rgb = (10 * i, 10 * (v + VIDEOS * (1 - label)), 200 * label)
                        Image.fromarray(np.full((12, 12, 3), rgb, np.uint8)).save(video / f"crop_{i:04d}.jpg", quality=95)
    return r


def frame_and_video(images: torch.Tensor) -> list[tuple[int, int]]:
    """(frame index, video index) of each flat uint8 image, read back from its colour."""
    mean = images.float().mean((2, 3))
    return [(round(r / 10), round(g / 10)) for r, g in mean[:, :2].tolist()]


@pytest.fixture
def counted_reads(monkeypatch, tmp_path):
    """Every decoded image counted; an empty cache of this test's own."""
    monkeypatch.setenv("FASLAND_CACHE", str(tmp_path / "cache"))
    calls = []
    read = folders._read

    def counting(path, *args, **kwargs):
        calls.append(path)
        return read(path, *args, **kwargs)

    monkeypatch.setattr(folders, "_read", counting)
    return calls


def config(root, **data):
    return {"protocol": "ICM2O", "data": {"root": str(root), "image_size": SIZE, "seed": 0, "normalize": "imagenet", **data}}


def test_the_probe_holds_frames_per_video_times_videos(root, counted_reads):
    probe = load_probe(config(root), max_samples=None, frames_per_video=3)
    videos = 2 * VIDEOS
    assert len(counted_reads) == 4 * 3 * videos                 # decoded: 3 frames of each video, nothing else
    for d, (x, y) in probe.domains.items():
        assert x.dtype == torch.uint8 and tuple(x.shape) == (3 * videos, 3, SIZE, SIZE)      # resident: uint8, fpv × videos
        assert y.sum() == 3 * VIDEOS
        seen = frame_and_video(x)
        for v in range(videos):
            frames = [f for f, vid in seen if vid == v]
            assert len(frames) == 3 and len(set(frames)) == 3    # three different frames of every video
    again = load_probe(config(root), max_samples=None, frames_per_video=3)
    assert all(torch.equal(probe.domains[d][0], again.domains[d][0]) for d in probe.domains)     # seeded
    other = load_probe(config(root, seed=1), max_samples=None, frames_per_video=3)
    assert not torch.equal(probe.domains["O"][0], other.domains["O"][0])
    batch = probe.batches("O")[0][0]
    assert batch.dtype == torch.float32 and torch.allclose(batch[:, 2].mean(), ((probe.domains["O"][0][:, 2].float() / 255 - 0.406) / 0.225).mean(), atol=1e-5)


def test_max_samples_caps_the_decoding_and_keeps_both_classes(root, counted_reads):
    probe = load_probe(config(root), max_samples=8, frames_per_video=2)
    assert len(counted_reads) == 4 * 8
    for x, y in probe.domains.values():
        assert len(x) == 8 and 0 < y.sum() < 8


def test_training_streams_one_random_frame_per_video_per_pass(root):
    stream = folders.VideoStream(root, "I", SIZE, batch=4, workers=1, seed=0)
    passes = []
    for _ in range(2):
        batches = [stream() for _ in range(2 * VIDEOS // 4)]
        images = torch.cat([b[0] for b in batches])
        assert images.dtype == torch.uint8 and all(len(b[0]) == 4 for b in batches)
        seen = dict((v, f) for f, v in frame_and_video(images))
        assert sorted(seen) == list(range(2 * VIDEOS))           # every video exactly once per pass
        assert torch.cat([b[1] for b in batches]).sum() == VIDEOS
        passes.append(seen)
    assert passes[0] != passes[1]                                 # a new random frame per video in the next pass
    same = folders.VideoStream(root, "I", SIZE, batch=4, workers=1, seed=0)
    assert dict((v, f) for f, v in frame_and_video(torch.cat([same()[0] for _ in range(3)]))) == passes[0]


def test_train_then_probe_the_folder(root, tmp_path, monkeypatch):
    from training.presets import make_config
    from training.trainer import SourceBatches, train

    monkeypatch.setenv("FASLAND_CACHE", str(tmp_path / "cache"))
    cfg = make_config("ICM2O", "erm", "demo", {"data": {"root": str(root), "image_size": SIZE, "workers": 1},
                                               "train": {"epochs": 1, "steps_per_epoch": 2, "batch_per_domain": 4, "eval_samples": None}})
    batches = SourceBatches(cfg, "cpu")
    assert all(isinstance(d, folders.VideoStream) for d in batches.draws)     # nothing of the domains held in memory
    assert [len(x) for x, _ in batches.sample(torch.Generator().manual_seed(0))] == [4, 4, 4]
    metrics = train(cfg, tmp_path / "run", progress=False)
    assert 0 <= metrics["final"]["target"]["hter"] <= 1
    # the commands' probe: every video's frames-per-video frames (--max-samples all)
    from reliability_fixtures import cli
    from training.checkpoint import load_model

    r = cli(["surface", "--checkpoint", tmp_path / "run" / "checkpoint.pt", "--x", "0:1:2", "--max-samples", "all",
             "--frames-per-video", "2", "--threads", "1", "--out", tmp_path / "s.h5"])
    assert r.code == 0, r.err[-3000:]
    model, ckpt = load_model(tmp_path / "run" / "checkpoint.pt")
    probe = load_probe(ckpt["config"], max_samples=None, frames_per_video=2)
    assert all(len(y) == 2 * 2 * VIDEOS for _, y in probe.domains.values())
    with h5py.File(tmp_path / "s.h5", "r") as f:
        assert float(f["train_loss"][0]) == pytest.approx(probe(model)["train_loss"], rel=1e-5)
