"""`fasland`: one console script; each package registers its own subcommands."""
import argparse
import sys

from training.errors import FaslandError


def register(sub) -> None:
    """The analysis commands: hessian, conflicts, study."""


def main(argv=None) -> int:
    from analysis import study
    from landscape import cli as landscape_cli
    from landscape.exports import cli as export_cli
    from training import cli as training_cli

    parser = argparse.ArgumentParser(prog="fasland", description="Loss landscapes, sharpness and gradient conflict for cross-domain face anti-spoofing.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in (training_cli, landscape_cli, export_cli, sys.modules[__name__], study):
        module.register(sub)
    args = parser.parse_args(argv)
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
