"""Candidate demo recipes: one method trained on one protocol, its source and target HTER, and its cost.

Each RECIPE is IMAGE_SIZE:EPOCHS:STEPS_PER_EPOCH:LR_STEP[:LR] (lr_step 0 = constant; LR default the preset's),
trained with the demo preset otherwise and evaluated once, at the end, on held-out clients. Prints one markdown row per recipe
(method, protocol, training seed, image size, steps, LR step, warming, LR, source and target HTER) with wall and process-CPU
seconds, CPU milliseconds per step and the 1-minute load average at the start (the machine may be shared: CPU seconds per
step are the figure to extrapolate from). With `ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2` in the environment an
AVX-512 machine computes what an AVX2-only one does (README, What the demo measured)."""
import argparse
import contextlib
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))   # this checkout's packages, not an installed copy

from training.presets import make_config
from training.trainer import train


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("recipes", nargs="+", metavar="PX:EPOCHS:STEPS:LR_STEP[:LR]")
    p.add_argument("--method", default="erm")
    p.add_argument("--protocol", default="ICM2O")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--warming", type=int, default=None, help="train.minimizer_warming (default: the preset's)")
    p.add_argument("--seed", type=int, default=0, help="train.seed (the data and directions stay the preset's)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    for recipe in args.recipes:
        px, epochs, steps, lr_step, *lr = recipe.split(":")
        px, epochs, steps, lr_step = int(px), int(epochs), int(steps), int(lr_step)
        over = {"data": {"image_size": px}, "hparams": {"lr": float(lr[0])} if lr else {},
                "train": {"epochs": epochs, "steps_per_epoch": steps, "lr_step": lr_step, "lr_gamma": 0.5,
                          "eval_every": 10 ** 6, "save_every": 10 ** 6, "seed": args.seed}}
        if args.warming is not None:
            over["train"]["minimizer_warming"] = args.warming
        config = make_config(args.protocol, args.method, "demo", over)
        load, wall, cpu = os.getloadavg()[0], time.time(), time.process_time()
        with tempfile.TemporaryDirectory() as run, contextlib.redirect_stdout(sys.stderr):
            final = train(config, run, "cpu", progress=False)["final"]
        wall, cpu = time.time() - wall, time.process_time() - cpu
        print(f"| {args.method} | {args.protocol} | {args.seed} | {px} | {epochs}×{steps} | {lr_step or '–'} | {config['train']['minimizer_warming']} | {config['hparams']['lr']:g} | "
              f"{100 * final['sources']['hter']:.2f}% | {100 * final['target']['hter']:.2f}% | {wall:.0f} | {cpu:.0f} | "
              f"{1000 * cpu / (epochs * steps):.0f} | {load:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
