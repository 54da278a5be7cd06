"""Bad input of every kind, table-driven: each case runs `fasland …` in this process and must exit
non-zero with exactly one error sentence on stderr that names the bad input (path or value) and says
what to do, without a traceback, leaving every existing file untouched. Then: pickled objects are
refused without running them, and far-away surfaces store NaN/inf that the exports mask."""
import json
import os
import pickle
from contextlib import nullcontext
from pathlib import Path
from typing import NamedTuple

import h5py
import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from reliability_fixtures import CONFIG, TINY_TRAIN, cli, full_disk, make_checkpoint, write_dataset, write_tiny_config

SURF = ["--max-samples", "4", "--batch-size", "16", "--threads", "1"]
TRAIN = ["train", "--protocol", "ICM2O", "--method", "erm", "--image-size", "32", "--threads", "1"]
IMPORT = ["import", "--protocol", "ICM2O", "--image-size", "32"]
READ_ONLY = "/sys/fasland-test"   # sysfs refuses new files even to root (chmod does not stop root)


class Case(NamedTuple):
    id: str
    argv: list            # {d}: the shared workspace, {t}: this case's own empty folder
    names: list           # what the error sentence must contain (the bad path or value)
    fsize: int | None = None      # a full disk: files may not grow past this many bytes
    xfail: str | None = None      # a known defect in another engineer's file (strict: passes once fixed)


def surface(*extra, ck="{d}/c.pt", x="-1:1:2", out="{t}/s.h5"):
    return ["surface", "--checkpoint", ck, "--x", x, *SURF, *extra, "--out", out]


def hessian(*extra, ck="{d}/c.pt", out="{t}/h.json"):
    return ["hessian", "--checkpoint", ck, "--max-samples", "2", "--max-iter", "2", "--threads", "1", *extra, "--out", out]



CASES = [
    # ---- train: names, config, sizes
    Case("train-unknown-protocol", ["train", "--protocol", "XYZ", "--method", "erm", "--out", "{t}/r"], ["'XYZ'"]),
    Case("train-unknown-method", ["train", "--protocol", "ICM2O", "--method", "adam", "--out", "{t}/r"], ["'adam'"]),
    Case("train-unknown-preset", TRAIN + ["--preset", "huge", "--out", "{t}/r"], ["'huge'"]),
    Case("train-config-missing", TRAIN + ["--config", "{d}/nope.yaml", "--out", "{t}/r"], ["{d}/nope.yaml"]),
    Case("train-config-not-yaml", TRAIN + ["--config", "{d}/broken.yaml", "--out", "{t}/r"], ["{d}/broken.yaml"]),
    Case("train-config-not-a-mapping", TRAIN + ["--config", "{d}/list.yaml", "--out", "{t}/r"], ["{d}/list.yaml"]),
    Case("train-config-unknown-section", TRAIN + ["--config", "{d}/section.yaml", "--out", "{t}/r"], ["'trainer'"]),
    Case("train-zero-epochs", TRAIN + ["--config", "{d}/zero.yaml", "--out", "{t}/r"], ["train.epochs = 0"]),
    Case("train-negative-steps", TRAIN + ["--config", "{d}/negative.yaml", "--out", "{t}/r"], ["train.steps_per_epoch = -3"]),
    Case("train-negative-epochs-flag", TRAIN + ["--epochs", "-1", "--out", "{t}/r"], ["train.epochs = -1"]),
    Case("train-image-size-too-small", TRAIN + ["--config", "{d}/tiny.yaml", "--image-size", "4", "--out", "{t}/r"], ["image size 4"]),
    # ---- train: data folders
    Case("train-data-missing", TRAIN + ["--data", "{d}/nodata", "--out", "{t}/r"], ["{d}/nodata"]),
    Case("train-data-empty-folder", TRAIN + ["--data", "{d}/empty", "--out", "{t}/r"], ["{d}/empty/replay"]),
    Case("train-data-no-live-videos", TRAIN + ["--data", "{d}/nolive", "--out", "{t}/r"], ["{d}/nolive/replay/train", "live"]),
    Case("train-data-label-only-a-substring", TRAIN + ["--data", "{d}/substring", "--out", "{t}/r"],
         ["{d}/substring/replay/train/alive/v1", "word"]),
    Case("train-data-no-frames", TRAIN + ["--data", "{d}/noframes", "--out", "{t}/r"], ["{d}/noframes/replay/train"]),
    Case("train-data-unlabelled-video", TRAIN + ["--data", "{d}/unlabelled", "--out", "{t}/r"], ["{d}/unlabelled/replay/train/v1"]),
    Case("train-data-corrupt-image", TRAIN + ["--config", "{d}/tiny.yaml", "--data", "{d}/corrupt", "--out", "{t}/r"],
         ["{d}/corrupt/replay/train/live/v1/crop_0.jpg"]),
    Case("train-pretrained-missing", TRAIN + ["--config", "{d}/tiny.yaml", "--pretrained", "{d}/nope.pt", "--out", "{t}/r"], ["{d}/nope.pt"]),
    Case("train-pretrained-corrupt", TRAIN + ["--config", "{d}/tiny.yaml", "--pretrained", "{d}/garbage.pt", "--out", "{t}/r"], ["{d}/garbage.pt"]),
    # ---- train: where it writes
    Case("train-out-under-a-file", TRAIN + ["--config", "{d}/tiny.yaml", "--out", "{d}/file/run"], ["{d}/file/run"]),
    Case("train-out-read-only", TRAIN + ["--config", "{d}/tiny.yaml", "--out", READ_ONLY + "/run"], [READ_ONLY + "/run"]),
    Case("train-out-holds-another-run", TRAIN + ["--config", "{d}/tiny.yaml", "--seed", "3", "--out", "{d}/run"],
         ["{d}/run", "train.seed 0 → 3"]),
    Case("train-out-holds-a-longer-run", TRAIN + ["--config", "{d}/tiny.yaml", "--epochs", "2", "--out", "{d}/longrun"],
         ["{d}/longrun", "3 epochs", "--epochs 3"]),
    Case("train-sam-only-warming", ["train", "--protocol", "ICM2O", "--method", "sam", "--image-size", "32", "--config",
                                    "{d}/tiny.yaml", "--epochs", "1", "--out", "{t}/r"], ["--method sam", "train.minimizer_warming = 1"]),
    Case("train-keep-checkpoints-zero", TRAIN + ["--config", "{d}/tiny.yaml", "--keep-checkpoints", "0", "--out", "{t}/r"],
         ["train.save_every = 0 (--keep-checkpoints)"]),
    Case("train-full-disk", TRAIN + ["--config", "{d}/tiny.yaml", "--out", "{t}/r"], ["{t}/r/"], fsize=1 << 20),
    Case("train-resume-state-pickled", TRAIN + ["--config", "{d}/tiny.yaml", "--out", "{d}/evilrun"],
         ["{d}/evilrun/resume.pt", "pickled"]),
    # ---- surface: grid specs and sizes
    Case("surface-grid-zero-points", surface(x="1:-1:0"), ["1:-1:0"]),
    Case("surface-grid-letters", surface(x="a:b:c"), ["a:b:c"]),
    Case("surface-grid-two-fields", surface(x="1:2"), ["1:2"]),
    Case("surface-grid-negative-points", surface("--y", "0:1:-2"), ["0:1:-2"]),
    Case("surface-grid-min-not-below-max", surface(x="1:1:3"), ["1:1:3"]),
    Case("surface-grid-one-point-two-ends", surface(x="0:1:1"), ["0:1:1", "MIN = MAX"]),
    Case("surface-grid-infinite", surface(x="0:inf:3"), ["0:inf:3"]),
    Case("surface-zero-max-samples", surface("--max-samples", "0"), ["--max-samples 0"]),
    Case("surface-negative-batch-size", surface("--batch-size", "-4"), ["--batch-size -4"]),
    Case("surface-zero-threads", surface("--threads", "0"), ["--threads 0"]),
    Case("surface-two-direction-sources", surface("--model2", "{d}/c2.pt", "--dir-file", "{d}/done.dirs.h5"), ["--model2", "--dir-file"]),
    # ---- surface: the checkpoint
    Case("ckpt-missing", surface(ck="{d}/nope.pt"), ["{d}/nope.pt"]),
    Case("ckpt-is-a-folder", surface(ck="{d}/empty"), ["{d}/empty"]),
    Case("ckpt-truncated", surface(ck="{d}/truncated.pt"), ["{d}/truncated.pt", "truncated"]),
    Case("ckpt-random-bytes", surface(ck="{d}/garbage.pt"), ["{d}/garbage.pt", "corrupt"]),
    Case("ckpt-pickled-object", surface(ck="{d}/evil.pt"), ["{d}/evil.pt", "pickled"]),
    Case("ckpt-other-architecture", surface(ck="{d}/other_arch.pt"), ["{d}/other_arch.pt"]),
    Case("ckpt-unknown-architecture", surface(ck="{d}/vgg.pt"), ["'vgg11'"]),
    Case("ckpt-missing-keys", surface(ck="{d}/missing_keys.pt"), ["{d}/missing_keys.pt", "layer4.1.bn2.weight"]),
    Case("ckpt-wrong-shape", surface(ck="{d}/wrong_shape.pt"), ["{d}/wrong_shape.pt", "head.weight"]),
    Case("ckpt-nan-weights", surface(ck="{d}/nan.pt"), ["{d}/nan.pt", "NaN"]),
    Case("ckpt-inf-weights", surface(ck="{d}/inf.pt"), ["{d}/inf.pt", "layer2.0.conv1.weight"]),
    Case("ckpt-not-ours", surface(ck="{d}/foreign.pt"), ["{d}/foreign.pt"]),
    Case("ckpt-fields-of-wrong-type", surface(ck="{d}/wrong_types.pt"), ["{d}/wrong_types.pt"]),
    Case("ckpt-without-protocol", surface(ck="{d}/no_protocol.pt"), ["{d}/no_protocol.pt"]),
    Case("model2-missing", surface("--model2", "{d}/nope2.pt"), ["{d}/nope2.pt"]),
    Case("model2-pickled-object", surface("--model2", "{d}/evil.pt", out="{t}/m2.h5"), ["{d}/evil.pt", "pickled"]),
    # ---- surface: existing output files
    Case("out-h5-not-ours", surface(out="{d}/notours.h5"), ["{d}/notours.h5"]),
    Case("out-not-hdf5", surface(out="{d}/text.h5"), ["{d}/text.h5"]),
    Case("out-other-directions", surface("--seed", "1", out="{d}/done.h5"), ["{d}/done.h5", "directions"]),
    Case("out-other-data-spec", surface("--max-samples", "3", out="{d}/done.h5"), ["{d}/done.h5", "max_samples 4 → 3"]),
    Case("out-other-grid", surface(x="-1:1:3", out="{d}/done.h5"), ["{d}/done.h5", "grid"]),
    Case("out-other-checkpoint", surface(ck="{d}/c2.pt", out="{d}/done.h5"), ["{d}/done.h5", "checkpoint"]),
    Case("out-is-a-folder", surface(out="{d}/empty"), ["{d}/empty"]),
    Case("out-under-a-file", surface(out="{d}/file/s.h5"), ["{d}/file/s"]),
    Case("out-read-only", surface(out=READ_ONLY + "/s.h5"), [READ_ONLY + "/s"]),
    Case("out-full-disk-directions", surface(), ["{t}/s.dirs.h5"], fsize=1 << 20),
    Case("out-full-disk-surface", surface("--dir-file", "{d}/done.dirs.h5"), ["{t}/s.h5"], fsize=4096),
    # ---- surface: direction files
    Case("dir-file-missing", surface("--dir-file", "{d}/nope.h5"), ["{d}/nope.h5"]),
    Case("dir-file-not-hdf5", surface("--dir-file", "{d}/c.pt"), ["{d}/c.pt"]),
    Case("dir-file-not-ours", surface("--dir-file", "{d}/notours.h5"), ["{d}/notours.h5"]),
    Case("dir-file-other-model", surface("--dir-file", "{d}/dirs_small.h5"), ["{d}/dirs_small.h5"]),
    Case("dir-file-wrong-shape", surface("--dir-file", "{d}/dirs_shape.h5"), ["{d}/dirs_shape.h5", "xdirection/0"]),
    Case("dir-file-pickled-bytes", surface("--dir-file", "{d}/dirs_pickle.h5"), ["{d}/dirs_pickle.h5"]),
    Case("dir-file-1d-with-y", surface("--y", "-1:1:2", "--dir-file", "{d}/done.dirs.h5"), ["{d}/done.dirs.h5", "--y"]),
    Case("surface-data-missing", surface("--data", "{d}/nodata"), ["{d}/nodata"]),
    Case("surface-data-root-gone", surface(ck="{d}/real_gone.pt"), ["{d}/gone", "--data DIR"]),
    # ---- export
    Case("export-missing", ["export", "png", "{d}/nope.h5", "--out", "{t}/f.png"], ["{d}/nope.h5"]),
    Case("export-h5-not-ours", ["export", "vtk", "{d}/notours.h5", "--out", "{t}/v"], ["{d}/notours.h5"]),
    Case("export-not-hdf5", ["export", "vtk", "{d}/text.h5", "--out", "{t}/v"], ["{d}/text.h5"]),
    Case("export-json-corrupt", ["export", "html", "{d}/broken.json", "--out", "{t}/p.html"], ["{d}/broken.json"]),
    Case("export-json-not-an-object", ["export", "html", "{d}/list.json", "--out", "{t}/p.html"], ["{d}/list.json"]),
    Case("export-unknown-array", ["export", "vtk", "{d}/done.h5", "--surf-name", "nope", "--out", "{t}/v"], ["'nope'"]),
    Case("export-unknown-array-1d-png", ["export", "png", "{d}/done.h5", "--surf-name", "nope", "--out", "{t}/f.png"], ["'nope'"]),
    Case("export-unknown-array-1d-html", ["export", "html", "{d}/done.h5", "--surf-name", "nope", "--out", "{t}/p.html"], ["'nope'"]),
    Case("export-levels-not-numbers", ["export", "png", "{d}/done.h5", "--levels", "a:b:c", "--out", "{t}/f.png"], ["a:b:c"]),
    Case("export-unknown-image-format", ["export", "png", "{d}/done.h5", "--out", "{t}/f.xyz"], [".xyz"]),
    Case("export-labels-count", ["export", "png", "{d}/done.h5", "--labels", "A,B", "--out", "{t}/f.png"], ["--labels"]),
    Case("export-vtk-out-under-a-file", ["export", "vtk", "{d}/done.h5", "--out", "{d}/file/v"], ["{d}/file/v"]),
    Case("export-html-out-under-a-file", ["export", "html", "{d}/done.h5", "--out", "{d}/file/p.html"], ["{d}/file/p.html"]),
    Case("export-png-out-read-only", ["export", "png", "{d}/done.h5", "--out", READ_ONLY + "/f.png"], [READ_ONLY + "/f.png"]),
    # ---- hessian and conflicts
    Case("hessian-zero-top-k", hessian("--top-k", "0"), ["--top-k 0"]),
    Case("hessian-unknown-solver", hessian("--solver", "arnoldi"), ["--solver", "'arnoldi'", "lanczos"]),
    Case("hessian-old-solver-flag-checked-too", hessian("--method", "arnoldi"), ["'arnoldi'", "lanczos"]),
    Case("hessian-negative-tol", hessian("--tol", "-1"), ["--tol -1"]),
    Case("hessian-one-trace-sample", hessian("--trace", "--trace-samples", "1"), ["--trace-samples 1"]),
    Case("hessian-zero-max-samples", hessian("--max-samples", "0"), ["--max-samples 0"]),
    Case("hessian-ckpt-truncated", hessian(ck="{d}/truncated.pt"), ["{d}/truncated.pt"]),
    Case("hessian-ckpt-pickled", hessian(ck="{d}/evil.pt"), ["{d}/evil.pt", "pickled"]),
    Case("hessian-out-read-only", hessian(out=READ_ONLY + "/h.json"), [READ_ONLY + "/h.json"]),
    Case("hessian-out-under-a-file", hessian(out="{d}/file/h.json"), ["{d}/file/h.json"]),
    Case("hessian-out-not-ours", hessian(out="{d}/notes.json"), ["{d}/notes.json"]),
    Case("conflicts-out-not-ours", ["conflicts", "--checkpoint", "{d}/c.pt", *SURF, "--out", "{d}/notes.json"], ["{d}/notes.json"]),
    Case("conflicts-nothing-to-do", ["conflicts", "--out", "{t}/c.json"], ["--checkpoint", "--trajectory"]),
    Case("conflicts-trajectory-not-a-folder", ["conflicts", "--trajectory", "{d}/file", "--out", "{t}/c.json"], ["{d}/file"]),
    Case("conflicts-trajectory-without-epochs", ["conflicts", "--trajectory", "{d}/empty", "--out", "{t}/c.json"], ["{d}/empty"]),
    Case("conflicts-negative-rho", ["conflicts", "--checkpoint", "{d}/c.pt", "--rho", "-1", *SURF, "--out", "{t}/c.json"], ["--rho -1"]),
    Case("conflicts-nan-weights", ["conflicts", "--checkpoint", "{d}/nan.pt", *SURF, "--out", "{t}/c.json"], ["{d}/nan.pt"]),
    # ---- import
    Case("import-another-architecture", IMPORT + ["--format", "gacfas", "--checkpoint", "{d}/tv.pt", "--out", "{t}/c.pt"], ["{d}/tv.pt", "GAC-FAS"]),
    Case("import-missing-key", IMPORT + ["--format", "torchvision", "--checkpoint", "{d}/tv_missing.pt", "--out", "{t}/c.pt"],
         ["{d}/tv_missing.pt", "layer4.1.bn2.weight"]),
    Case("import-extra-key", IMPORT + ["--format", "torchvision", "--checkpoint", "{d}/tv_extra.pt", "--out", "{t}/c.pt"],
         ["{d}/tv_extra.pt", "extra.weight"]),
    Case("import-head-of-three", IMPORT + ["--format", "torchvision", "--checkpoint", "{d}/tv_head3.pt", "--out", "{t}/c.pt"],
         ["{d}/tv_head3.pt", "(3, 512)"]),
    Case("import-live-index-out-of-range", IMPORT + ["--format", "torchvision", "--checkpoint", "{d}/tv.pt", "--live-index", "5",
                                                     "--out", "{t}/c.pt"], ["--live-index 5"]),
    Case("import-live-index-of-one-logit", IMPORT + ["--format", "torchvision", "--checkpoint", "{d}/tv.pt", "--live-index", "0",
                                                     "--out", "{t}/c.pt"], ["--live-index 0", "one logit"]),
    Case("import-factory-not-importable", IMPORT + ["--format", "module", "--model", "no_such_pkg.nets:build", "--checkpoint", "{d}/tv.pt",
                                                    "--out", "{t}/c.pt"], ["no_such_pkg"]),
    Case("import-factory-returns-no-module", IMPORT + ["--format", "module", "--model", "import_fixtures:not_a_module", "--checkpoint",
                                                       "{d}/tv.pt", "--out", "{t}/c.pt"], ["import_fixtures:not_a_module", "nn.Module"]),
    Case("import-no-config-no-protocol", ["import", "--format", "torchvision", "--checkpoint", "{d}/tv.pt", "--out", "{t}/c.pt"],
         ["{d}/tv.pt", "--protocol"]),
    Case("import-pickle-that-runs-code", IMPORT + ["--format", "torchvision", "--checkpoint", "{d}/evil.pt", "--out", "{t}/c.pt"],
         ["{d}/evil.pt", "posix.system"]),
    # ---- attention and unseen-attack protocols
    Case("attention-unknown-method", ["attention", "--checkpoint", "{d}/c.pt", "--method", "lime", "--out", "{t}/a"], ["'lime'", "integrated-gradients"]),
    Case("attention-zero-samples", ["attention", "--checkpoint", "{d}/c.pt", "--samples", "0", "--out", "{t}/a"], ["--samples 0"]),
    Case("attention-unknown-layer", ["attention", "--checkpoint", "{d}/c.pt", "--layer", "layer9", "--samples", "2", "--out", "{t}/a"], ["'layer9'"]),
    Case("attention-cam-without-convolutions", ["attention", "--checkpoint", "{d}/flat.pt", "--samples", "2", "--out", "{t}/a"],
         ["convolutional", "--method integrated-gradients"]),
    Case("attention-out-is-a-file", ["attention", "--checkpoint", "{d}/c.pt", "--out", "{d}/file"], ["{d}/file"]),
    Case("train-unseen-attacks-on-real-data", ["train", "--protocol", "PR2CW", "--method", "erm", "--data", "{d}/empty", "--out", "{t}/r"],
         ["PR2CW", "{d}/empty", "attack labels"]),
    # ---- study
    Case("study-unknown-method", ["study", "--methods", "erm,adam", "--out", "{t}/st"], ["adam"]),
    Case("study-keep-checkpoints-zero", ["study", "--methods", "erm", "--keep-checkpoints", "0", "--out", "{t}/st"],
         ["train.save_every = 0 (--keep-checkpoints)"]),
    Case("study-unknown-protocol", ["study", "--protocol", "XYZ", "--out", "{t}/st"], ["'XYZ'"]),
]


class Evil:
    """Loading this runs code: it touches the marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="module")
def workspace(module_tmp):
    """Every bad input, and existing results that no failure may touch."""
    d = module_tmp / "bad_inputs"
    d.mkdir()
    ck = make_checkpoint(d / "c.pt")
    make_checkpoint(d / "c2.pt", seed=1)
    state = torch.load(ck, weights_only=True)["model"]
    data = ck.read_bytes()
    (d / "truncated.pt").write_bytes(data[: len(data) // 3])
    (d / "garbage.pt").write_bytes(np.random.default_rng(0).bytes(4096))
    torch.save({"model": state, "arch": Evil(d / "RAN"), "config": CONFIG, "epoch": 0, "metrics": {}}, d / "evil.pt")
    make_checkpoint(d / "other_arch.pt", state=torch.nn.Linear(3, 1).state_dict())
    make_checkpoint(d / "vgg.pt", arch={"name": "vgg11"})
    make_checkpoint(d / "missing_keys.pt", state={k: v for k, v in state.items() if k != "layer4.1.bn2.weight"})
    make_checkpoint(d / "wrong_shape.pt", state={**state, "head.weight": torch.zeros(1, 7)})
    make_checkpoint(d / "nan.pt", state={**state, "stem.0.weight": state["stem.0.weight"].clone().index_fill_(0, torch.tensor([0]), float("nan"))})
    make_checkpoint(d / "inf.pt", state={**state, "layer2.0.conv1.weight": state["layer2.0.conv1.weight"] * float("inf")})
    make_checkpoint(d / "no_protocol.pt", config={"data": {}})
    torch.save({"weights": torch.zeros(2)}, d / "foreign.pt")
    import torchvision
    tv = torchvision.models.resnet18(weights=None, num_classes=1).state_dict()     # files for fasland import
    torch.save(tv, d / "tv.pt")
    torch.save({k: v for k, v in tv.items() if k != "layer4.1.bn2.weight"}, d / "tv_missing.pt")
    torch.save({**tv, "extra.weight": torch.zeros(3)}, d / "tv_extra.pt")
    torch.save({**tv, "fc.weight": torch.zeros(3, 512), "fc.bias": torch.zeros(3)}, d / "tv_head3.pt")
    torch.save({"model": torch.zeros(3), "arch": "resnet18", "config": CONFIG, "epoch": 1, "metrics": {}}, d / "wrong_types.pt")
    from import_fixtures import flat_linear      # an imported model without convolutions, for attention
    torch.save({"model": flat_linear().state_dict()}, d / "flat_src.pt")
    r = cli(["import", "--format", "module", "--model", "import_fixtures:flat_linear", "--checkpoint", d / "flat_src.pt",
             "--protocol", "ICM2O", "--image-size", "32", "--out", d / "flat.pt"])
    assert r.code == 0, r.err[-2000:]

    (d / "file").write_text("a regular file, not a folder")
    (d / "empty").mkdir()
    (d / "text.h5").write_text("surface results, in a text file someone named .h5")
    with h5py.File(d / "notours.h5", "w") as f:
        f["a"] = np.arange(3.0)
    write_dataset(d / "nolive", kinds=("spoof",))
    write_dataset(d / "unlabelled", label_word=False)
    write_dataset(d / "substring", kinds=("alive", "spoof"))     # 'alive' holds 'live' only as a substring
    write_dataset(d / "corrupt", corrupt="replay/train/live/v1/crop_0.jpg")
    (d / "noframes" / "replay" / "train").mkdir(parents=True)

    write_tiny_config(d / "tiny.yaml")
    (d / "broken.yaml").write_text("train: {epochs: [\n")
    (d / "list.yaml").write_text("- 1\n- 2\n")
    (d / "section.yaml").write_text("trainer: {epochs: 1}\n")
    (d / "zero.yaml").write_text("train: {epochs: 0}\n")
    (d / "negative.yaml").write_text("train: {steps_per_epoch: -3}\n")
    (d / "broken.json").write_text('{"eigenvalues": [1.0, ')
    (d / "list.json").write_text("[1, 2]")
    (d / "notes.json").write_text('{"my": "own notes"}')

    # a finished run, and a run whose resume state carries a pickled object
    from training.presets import make_config
    config = make_config("ICM2O", "erm", "demo", TINY_TRAIN)
    config["data"]["image_size"] = 32
    for name in ("run", "evilrun"):
        (d / name).mkdir()
        (d / name / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    (d / "run" / "checkpoint.pt").write_bytes(data)
    (d / "run" / "metrics.json").write_text('{"final": null}')
    (d / "evilrun" / "resume.pt").write_bytes((d / "evil.pt").read_bytes())
    longer = make_config("ICM2O", "erm", "demo", TINY_TRAIN, {"data": {"image_size": 32}, "train": {"epochs": 3}})
    (d / "longrun").mkdir()
    (d / "longrun" / "config.yaml").write_text(yaml.safe_dump(longer, sort_keys=False))
    torch.save({**torch.load(ck, weights_only=True), "config": longer, "epoch": 3}, d / "longrun" / "checkpoint.pt")
    (d / "longrun" / "metrics.json").write_text('{"final": null}')
    make_checkpoint(d / "real_gone.pt", config={**CONFIG, "data": {**CONFIG["data"], "root": str(d / "gone")}})

    # an existing surface and its directions
    r = cli([a.format(d=d) for a in surface(out="{d}/done.h5")])
    assert r.code == 0, r.err[-2000:]
    from landscape.directions import Directions, load_directions, save_directions
    save_directions(d / "dirs_small.h5", Directions([torch.zeros(1, 3), torch.zeros(1)]))
    x = load_directions(d / "done.dirs.h5").x
    save_directions(d / "dirs_shape.h5", Directions([torch.zeros(2, 2)] + x[1:]))
    with h5py.File(d / "dirs_pickle.h5", "w") as f:
        f.create_group("xdirection")["0"] = np.void(pickle.dumps(Evil(d / "RAN")))
    return d


def fingerprint(root: Path) -> dict:
    """sha256 of every small file, (size, mtime, inode) of every large one: any write or replace shows."""
    import hashlib

    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file():
            st = p.stat()
            out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest() if st.st_size < 1 << 20 else (st.st_size, st.st_mtime_ns, st.st_ino)
    return out


def param(case: Case):
    marks = [pytest.mark.xfail(strict=True, reason=case.xfail)] if case.xfail else []
    return pytest.param(case, id=case.id, marks=marks)


def test_the_table_is_large_and_distinct():
    assert len(CASES) >= 25 and len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", [param(c) for c in CASES])
def test_bad_input_gives_one_sentence_and_touches_nothing(case, workspace, tmp_path):
    fill = {"d": workspace, "t": tmp_path}
    argv = [a.format(**fill) for a in case.argv]
    before = fingerprint(workspace)
    with full_disk(case.fsize) if case.fsize else nullcontext():
        r = cli(argv)
    assert r.code == 2, f"exit {r.code}\n{r.err[-3000:]}"
    assert "Traceback" not in r.err
    errors = r.error_lines()
    assert len(errors) == 1, r.err[-3000:]
    sentence = errors[0]
    assert sentence.startswith(f"fasland {argv[0]}: error: "), sentence
    for name in case.names:
        assert name.format(**fill) in sentence, f"{name.format(**fill)!r} not named in: {sentence}"
    assert "; " in sentence or "--" in sentence, f"no fix given: {sentence}"   # 'what is wrong; what to do'
    after = fingerprint(workspace)
    assert {k: v for k, v in after.items() if k in before} == before, "an existing file was changed"
    assert set(before) <= set(after), "an existing file was deleted"
    assert not (workspace / "RAN").exists(), "a pickled object was unpickled"


def test_a_failed_start_does_not_lock_the_run_folder(workspace, tmp_path):
    """Bad settings fail before the run folder records them: the corrected command then runs."""
    run = tmp_path / "r"
    assert cli(TRAIN + ["--config", workspace / "zero.yaml", "--out", run]).code == 2
    r = cli(TRAIN + ["--config", workspace / "tiny.yaml", "--epochs", "1", "--out", run])
    assert r.code == 0, r.err[-2000:]


# ------------------------------------------------------------------------------------------ safe loading

def test_pickled_checkpoint_is_refused_without_running_it(workspace, tmp_path):
    """With weights_only=False the marker file would appear; fasland refuses the file instead."""
    with pytest.raises(Exception):
        torch.load(workspace / "evil.pt", weights_only=True)
    r = cli([a.format(d=workspace, t=tmp_path) for a in surface(ck="{d}/evil.pt")])
    assert r.code == 2 and "pickled objects" in r.err and "os.system" in r.err.replace("posix.system", "os.system")
    assert not (workspace / "RAN").exists()


def test_direction_datasets_are_never_unpickled(workspace):
    from landscape.directions import load_directions
    from training.errors import FaslandError

    with pytest.raises(FaslandError, match="numeric datasets"):
        load_directions(workspace / "dirs_pickle.h5")
    assert not (workspace / "RAN").exists()


# ------------------------------------------------------------------------------------------ non-finite values

@pytest.fixture(scope="module")
def far_surface(workspace, module_tmp):
    """A 2-D surface from θ out to 1e4 along a filter-normalized direction: the far points overflow."""
    d = module_tmp / "far"
    d.mkdir()
    r = cli(["surface", "--checkpoint", workspace / "c.pt", "--x", "0:1e4:3", "--y", "0:1:2", *SURF, "--out", d / "far.h5"])
    assert r.code == 0, r.err[-2000:]
    return d / "far.h5"


def test_far_surface_stores_nan_and_inf_without_crashing(far_surface):
    with h5py.File(far_surface, "r") as f:
        done = f["done"][()].astype(bool)
        loss = f["train_loss"][()].reshape(-1)
        x = f["xcoordinates"][()]
    assert done.all()
    assert np.isfinite(loss[0]) and 0 < loss[0] < 5          # θ itself
    assert not np.isfinite(loss[[1, 2, 4, 5]]).any()          # a = 5e3, 1e4: overflowed, stored as NaN/inf
    assert x[-1] == 1e4


@pytest.mark.parametrize("fmt", ["vtk", "html", "png"])
def test_exports_mask_non_finite_points(far_surface, tmp_path, fmt):
    out = tmp_path / {"vtk": "v", "html": "p.html", "png": "f.png"}[fmt]
    r = cli(["export", fmt, far_surface, "--out", out])
    assert r.code == 0, r.err[-2000:]
    with h5py.File(far_surface, "r") as f:
        finite = np.isfinite(f["train_loss"][()].reshape(-1))   # flat k = iy*nx + ix
    if fmt == "vtk":
        import vtk
        from vtk.util.numpy_support import vtk_to_numpy

        reader = vtk.vtkXMLStructuredGridReader()
        reader.SetFileName(str(tmp_path / "v.vts"))
        reader.Update()
        grid = reader.GetOutput()
        valid = vtk_to_numpy(grid.GetPointData().GetArray("valid"))
        assert np.array_equal(valid.astype(bool), finite)          # VTK point order is x fastest, like k
        z = vtk_to_numpy(grid.GetPoints().GetData())[:, 2]
        assert np.isfinite(z).all()                                # no NaN coordinates for ParaView
    elif fmt == "html":
        figures = plotted_data(out.read_text())
        numbers = [v for fig in figures for v in leaves(fig)]
        assert numbers and all(v is None or np.isfinite(v) for v in numbers if not isinstance(v, str))  # nulls, not NaN
        surfaces = [t for fig in figures for t in fig[0] if t.get("type") == "surface"]
        z = np.array(surfaces[0]["z"], dtype=float)             # None → NaN: a gap, never a bogus height
        assert np.isnan(z).sum() == (~finite).sum() and np.isfinite(z).sum() == finite.sum()
    else:
        assert out.stat().st_size > 1000


def plotted_data(page: str) -> list:
    """The (data, layout) arguments of every Plotly.newPlot call of a page, parsed as JSON."""
    import re

    decoder, out = json.JSONDecoder(), []
    for m in re.finditer(r'Plotly\.newPlot\(\s*"[^"]+",\s*', page):
        data, end = decoder.raw_decode(page, m.end())
        layout, _ = decoder.raw_decode(page, re.compile(r",\s*").match(page, end).end())
        out.append((data, layout))
    return out


def leaves(value):
    """Every number (and None) nested in JSON lists and dicts."""
    if isinstance(value, dict):
        for v in value.values():
            yield from leaves(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from leaves(v)
    elif value is None or isinstance(value, (int, float)) and not isinstance(value, bool):
        yield value
