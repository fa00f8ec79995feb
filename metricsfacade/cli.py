"""The ``metricsfacade`` command."""

from __future__ import annotations

import argparse
import sys

from metricsfacade.check import run_check


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="metricsfacade", description="metricsfacade tools")
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser(
        "check",
        help="validate the configuration and send a test metric to each backend",
        description="Exit 0 when every backend took the test metric, 1 when one failed, "
        "2 for a configuration error. METRICSFACADE_* variables apply as in configure().",
    )
    check.add_argument("--config", metavar="FILE", help="a TOML file (default: built-in defaults)")
    args = parser.parse_args(argv)
    if args.command == "check":
        return run_check(args.config, sys.stdout)
    parser.error(f"unknown command {args.command!r}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
