"""SynthFAS: determinism, cache, client disjointness, shapes, labels, depth; protocols."""
import pytest
import torch

from training.data import DOMAIN_NAMES, DomainData, load_domain, normalize, synth
from training.data.protocols import PROTOCOLS, parse_protocol
from training.errors import FaslandError

SIZE, N = 32, 40


@pytest.fixture(scope="module")
def small():
    return {(d, s): synth.generate(d, s, SIZE, N, seed=3) for d in "IOCM" for s in ("train", "test")}


def test_same_seed_gives_byte_identical_arrays(small):
    again = synth.generate("C", "train", SIZE, N, seed=3)
    for a, b in zip(small[("C", "train")], again):
        assert a.dtype == b.dtype and torch.equal(a, b)
    other = synth.generate("C", "train", SIZE, N, seed=4)
    assert not torch.equal(small[("C", "train")].images, other.images)


def test_cache_hit_equals_fresh(tmp_path):
    first = load_domain("synth", "M", "test", image_size=SIZE, samples=N, seed=1, cache_dir=str(tmp_path))
    files = sorted(p.name for p in tmp_path.glob("*.pt"))     # the images and, beside them, their annotations
    assert len(files) == 2 and files[0].endswith(".annotations.pt") and not list(tmp_path.glob("*.tmp"))
    notes = synth.load_annotations("M", "test", SIZE, N, seed=1, cache=tmp_path)
    assert torch.equal(notes.kinds, synth._generate("M", "test", SIZE, N, seed=1)[1].kinds)
    assert sorted(p.name for p in tmp_path.glob("*.pt")) == files
    cached = load_domain("synth", "M", "test", image_size=SIZE, samples=N, seed=1, cache_dir=str(tmp_path))
    fresh = synth.generate("M", "test", SIZE, N, seed=1)
    for a, b, c in zip(first, cached, fresh):
        assert torch.equal(a, b) and torch.equal(a, c)
    # a key per parameter set: another seed is another file
    load_domain("synth", "M", "test", image_size=SIZE, samples=N, seed=2, cache_dir=str(tmp_path))
    assert len(list(tmp_path.glob("*.pt"))) == 4


def test_clients_are_disjoint_between_train_and_test_and_domains(small):
    seen = {}
    for (d, s), data in small.items():
        ids = set(data.clients.tolist())
        for other, other_ids in seen.items():
            assert not ids & other_ids, f"{d}/{s} shares clients with {other}"
        seen[(d, s)] = ids
        assert ids <= set(synth.client_ids(d, s).tolist())


def test_shapes_dtypes_and_balanced_labels(small):
    for data in small.values():
        assert isinstance(data, DomainData)
        assert data.images.shape == (N, 3, SIZE, SIZE) and data.images.dtype == torch.uint8
        assert data.labels.shape == (N,) and data.labels.dtype == torch.float32
        assert data.depth.shape == (N, 32, 32) and data.depth.dtype == torch.uint8
        assert data.clients.shape == (N,) and data.clients.dtype == torch.int64
        assert set(data.labels.tolist()) == {0.0, 1.0} and data.labels.sum() == N // 2
        # every client shows up live and as a spoof once there are enough images
        clients = data.clients.unique()
        for c in clients[: N // 2 // len(clients)]:
            assert set(data.labels[data.clients == c].tolist()) == {0.0, 1.0}


def test_depth_is_zero_for_spoof_and_a_relief_for_live(small):
    for data in small.values():
        spoof, live = data.depth[data.labels == 0], data.depth[data.labels == 1]
        assert spoof.sum() == 0
        assert (live.flatten(1).amax(1) > 100).all()
        assert ((live > 0).flatten(1).float().mean(1) > 0.15).all()   # a face-sized region


def test_default_sizes_and_images_differ_between_domains():
    assert synth.DEFAULT_SAMPLES == {"train": 600, "test": 300}
    means = [synth.generate(d, "test", 16, 20, 0).images.float().mean((0, 2, 3)) for d in "IOCM"]
    assert min((a - b).abs().sum() for i, a in enumerate(means) for b in means[i + 1:]) > 1


def test_normalize_is_imagenet():
    x = torch.full((1, 3, 2, 2), 255, dtype=torch.uint8)
    y = normalize(x)
    assert y.dtype == torch.float32
    assert torch.allclose(y[0, :, 0, 0], (1 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225]))


def test_protocols():
    assert parse_protocol("ICM2O") == (("I", "C", "M"), "O")
    assert parse_protocol("MI2C") == (("M", "I"), "C")
    for sources, target in PROTOCOLS.values():
        assert target not in sources and set(sources) | {target} <= set(DOMAIN_NAMES)
    with pytest.raises(FaslandError, match="unknown protocol 'XYZ'.*ICM2O"):
        parse_protocol("XYZ")


def test_bad_arguments_are_one_clear_error(tmp_path):
    with pytest.raises(FaslandError, match="unknown domain 'Q'"):
        load_domain("synth", "Q", "train")
    with pytest.raises(FaslandError, match="unknown split 'val'"):
        load_domain("synth", "I", "val")


def test_write_synth_writes_cache_files_and_contact_sheet(tmp_path):
    paths = synth.write_synth(tmp_path, image_size=16, samples=8, seed=0)
    assert len(paths) == 9 and all(p.exists() for p in paths)
    assert paths[-1].name == "contact_sheet.png" and paths[-1].stat().st_size > 10_000
    data = load_domain("synth", "O", "test", image_size=16, samples=4, cache_dir=str(tmp_path))
    assert data.images.shape == (4, 3, 16, 16)
