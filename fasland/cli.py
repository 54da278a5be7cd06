"""`fasland`: the one console script. Each command's parser lives in the module named in COMMANDS, whose
`register(sub)` adds it (with `set_defaults(run=…)`); the work is a plain function of the library that the
`run` callback calls. Parsers import nothing heavy (torch, h5py, numpy, …), so `--help` and argument errors
answer at once. To add a command: write its function, a module with `register(sub)`, and one line here."""
import argparse
import importlib
import sys

from training.errors import FaslandError

# (command, module whose register(sub) adds it), in --help order
COMMANDS = [
    ("train", "training.cli"),
    ("data", "training.cli"),
    ("import", "training.imports"),
    ("surface", "landscape.cli"),
    ("export", "landscape.exports.cli"),
    ("hessian", "analysis.cli"),
    ("conflicts", "analysis.cli"),
    ("study", "analysis.cli"),
    ("attention", "analysis.attention"),
]
# modules that register views of their result files for `fasland export html` (landscape.exports.views)
VIEWS = ["analysis.views"]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fasland", description="Loss landscapes, sharpness and gradient conflict for cross-domain face anti-spoofing.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    registered = set()
    for _, module in COMMANDS:
        if module not in registered:
            importlib.import_module(module).register(sub)
            registered.add(module)
    show_defaults(p)
    return p


def show_defaults(p: argparse.ArgumentParser) -> None:
    """Every option's default in its --help, unless it is None/False (nothing given) or the help says it."""
    for a in p._actions:
        if isinstance(a, argparse._SubParsersAction):
            for child in a.choices.values():
                show_defaults(child)
        elif a.option_strings and a.help is not argparse.SUPPRESS and a.default not in (None, False, argparse.SUPPRESS) \
                and "default" not in (a.help or ""):
            shown = " ".join(map(str, a.default)) if isinstance(a.default, (list, tuple)) else a.default
            a.help = f"{a.help} (default: {shown})" if a.help else f"default: {shown}"


def keep_freed_memory() -> None:
    """Keep freed tensors in the process heap (glibc mallopt M_MMAP_MAX = 0, M_TRIM_THRESHOLD = 2³¹−1):
    by default every ResNet18-sized gradient (44 MB) is a fresh mmap that the kernel zero-fills page by
    page, a third of the time of `conflicts`. Ignored where the C library is not glibc."""
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-4, 0)              # M_MMAP_MAX
        libc.mallopt(-1, 2 ** 31 - 1)    # M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        pass


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    keep_freed_memory()
    for module in VIEWS:
        importlib.import_module(module)
    try:
        return args.run(args) or 0
    except FaslandError as e:
        print(f"fasland {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"fasland {args.command}: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
