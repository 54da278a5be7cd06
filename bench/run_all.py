"""`make bench`: run every bench/*.py script and write their sections, with the machine, to bench/RESULTS.md."""
import datetime
import os
import platform
import subprocess
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent


def machine() -> str:
    cpu = next((l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines() if l.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else platform.processor()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return (f"- date: {datetime.date.today()}\n- CPU: {cpu}, {os.cpu_count()} cores; GPU: {gpu}\n"
            f"- Python {platform.python_version()}, torch {torch.__version__}, {platform.system()} {platform.machine()}\n")


def main() -> int:
    scripts = sorted(p for p in HERE.glob("*.py") if p.name != "run_all.py")
    sections, failed = [], []
    for script in scripts:
        print(f"== {script.name}", flush=True)
        r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, cwd=HERE.parent)
        sys.stderr.write(r.stderr[-2000:])
        print(r.stdout, flush=True)
        if r.returncode:
            failed.append(script.name)
            sections.append(f"## {script.stem}\n\nFAILED (exit {r.returncode}):\n\n```\n{r.stderr[-1500:]}\n```\n")
        else:
            sections.append(r.stdout.strip() + "\n")
    text = "# Benchmarks\n\nMeasured by `make bench`; each figure is a ratio of two timings taken in the same run.\n\n" \
           + machine() + "\n" + "\n".join(sections)
    (HERE / "RESULTS.md").write_text(text)
    print(f"wrote {HERE / 'RESULTS.md'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
