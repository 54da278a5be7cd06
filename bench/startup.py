"""Start-up time of the command line: `fasland --help`, `fasland CMD --help` and an argument error must
answer in under 1 s (issue 16 item 7), which holds while the entry point and the parsers import nothing
heavy (torch, h5py, numpy, …). Each is the median of 5 fresh `python -m fasland` processes; the reference
is a bare `python -c pass` measured in the same run."""
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REPEATS = 5
TARGET = 1.0   # seconds
CASES = [
    ("fasland --help", ["--help"], 0),
    ("fasland surface --help", ["surface", "--help"], 0),
    ("fasland hessian --help", ["hessian", "--help"], 0),
    ("argument error (fasland hessian --top-k many)", ["hessian", "--checkpoint", "c.pt", "--top-k", "many", "--out", "h.json"], 2),
    ("argument error (fasland train --protocol XYZ)", ["train", "--protocol", "XYZ", "--method", "erm", "--out", "r"], 2),
]


def seconds(argv, code: int | None = None) -> float:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    times = []
    for _ in range(REPEATS):
        started = time.perf_counter()
        r = subprocess.run([sys.executable, *argv], capture_output=True, text=True, cwd=ROOT, env=env)
        times.append(time.perf_counter() - started)
        if code is not None and r.returncode != code:
            raise SystemExit(f"{' '.join(argv)} exited {r.returncode}, not {code}: {r.stderr[-500:]}")
    return statistics.median(times)


def main() -> int:
    bare = seconds(["-c", "pass"])
    rows = [(name, seconds(["-m", "fasland", *argv], code)) for name, argv, code in CASES]
    print("## startup\n")
    print(f"Median of {REPEATS} fresh processes; target < {TARGET:.0f} s each. A bare `python -c pass` takes {bare:.3f} s.\n")
    print("| command | seconds | within target |\n|---|---|---|")
    for name, s in rows:
        print(f"| `{name}` | {s:.3f} | {'yes' if s < TARGET else 'NO'} |")
    return 0 if all(s < TARGET for _, s in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
