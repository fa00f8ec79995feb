"""The ``metricsfacade`` command.

Each subcommand imports its module only when it runs, so ``--help``, ``--version`` and
``check`` work with no extra installed, and a missing extra is a one-line message.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from importlib import metadata

from metricsfacade.errors import MetricsError

DISTRIBUTION = "metricsfacade"
EXIT_USAGE = 2


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "proxy" and not _server_command(args):
        parser.error("proxy: give the server command after --")
    try:
        status: int = args.run(args)
    except MetricsError as exc:  # a configuration error or a missing extra: one line
        print(f"metricsfacade {args.command}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return status


def _version() -> str:
    """The installed distribution's version: the one pip reports, not a copy in the code."""
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return "unknown (run from a source tree that is not installed)"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="metricsfacade", description="metricsfacade tools")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser(
        "check",
        help="validate the configuration and send a test metric to each backend",
        description="Exit 0 when every backend took the test metric, 1 when one failed, "
        "2 for a configuration error. METRICSFACADE_* variables apply as in configure().",
    )
    check.add_argument("--config", metavar="FILE", help="a TOML file (default: built-in defaults)")
    check.set_defaults(run=_check)
    proxy = commands.add_parser(
        "proxy",
        help="run an MCP stdio server behind a proxy that records the shadowcat_* metrics",
        description="Relays newline-delimited JSON-RPC between this process's stdin/stdout and "
        "COMMAND's, unchanged; logs go to stderr. Use it in an MCP client's server "
        "configuration: command `metricsfacade`, args `proxy -- npx ...`.",
        epilog="Exit status: 0 when the client closed its input; the server's own status (1 if "
        "that was 0 or a signal) when it exited by itself and restart is off; 2 for a "
        "configuration error; 127 when the server command cannot start and restart is off; "
        "128+N after stop signal N (129 SIGHUP, 130 SIGINT, 143 SIGTERM), once the requests in "
        "flight are answered, the server is stopped and the tape is written. The first of "
        "these to happen decides.",
    )
    proxy.add_argument("--config", metavar="FILE", help="a TOML file ([metrics], [metrics.proxy])")
    proxy.add_argument("--metrics-port", type=int, metavar="N", help="endpoint port (0: any free)")
    proxy.add_argument("--tape", metavar="FILE", help="record every message as JSON lines")
    proxy.add_argument("server", nargs=argparse.REMAINDER, metavar="-- COMMAND [ARGS...]")
    proxy.set_defaults(run=_proxy)
    bench = commands.add_parser(
        "bench",
        help="measure the proxy's and the instrumentation's overhead per request",
        description="Interleaved rounds of direct, proxy without metrics, and proxy with each "
        "backend. Exit 1 when an instrumentation overhead exceeds the target.",
    )
    bench.add_argument("--requests", type=int, default=300, help="requests per path per round")
    bench.add_argument("--rounds", type=int, default=12)
    bench.add_argument("--target", type=float, default=5.0, help="percent (default 5)")
    bench.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    bench.add_argument(
        "--no-pin",
        dest="pin",
        action="store_false",
        help="leave process placement to the scheduler (noisier)",
    )
    bench.set_defaults(run=_bench)
    demo = commands.add_parser(
        "demo",
        help="the proxy in front of a bundled MCP server, under realistic traffic",
        description="Serves the metrics endpoint (127.0.0.1:9090 unless the config says "
        "otherwise), drives traffic with errors, a rate-limit burst and a server crash that "
        "trips the circuit breaker, and ends with a summary.",
    )
    demo.add_argument("--config", metavar="FILE", help="a TOML file (default: built-in)")
    demo.add_argument("--duration", type=float, default=0, help="seconds (0: until Ctrl-C)")
    demo.set_defaults(run=_demo)
    return parser


def _check(args: argparse.Namespace) -> int:
    from metricsfacade.check import run_check  # noqa: PLC0415 (lazy, see above)

    return run_check(args.config, sys.stdout)


def _demo(args: argparse.Namespace) -> int:
    from metricsfacade.demo.run import run_demo  # noqa: PLC0415 (lazy, see above)

    logging.basicConfig(stream=sys.stderr, level=logging.ERROR)  # the summary tells
    return run_demo(args.config, args.duration, sys.stdout)


def _bench(args: argparse.Namespace) -> int:
    from metricsfacade import plugins  # noqa: PLC0415 (lazy, see above)
    from metricsfacade.bench import (  # noqa: PLC0415 (lazy, see above)
        BACKEND_PATHS,
        print_report,
        run_bench,
    )

    for name in BACKEND_PATHS:  # a missing extra: one line now, not a dead proxy mid-run
        if name != "all":
            plugins.backend_class(name).require()
    report = run_bench(args.requests, args.rounds, args.target, pin=args.pin)
    print_report(report, sys.stdout)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(report, handle, indent=2)
    return 0 if report["passes_target"] else 1


def _server_command(args: argparse.Namespace) -> list[str]:
    server: list[str] = args.server
    return server[1:] if server[:1] == ["--"] else server


def _proxy(args: argparse.Namespace) -> int:
    from metricsfacade.proxy import run_proxy  # noqa: PLC0415 (lazy, see above)

    logging.basicConfig(
        stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(name)s: %(message)s"
    )
    return run_proxy(
        _server_command(args), args.config, metrics_port=args.metrics_port, tape_path=args.tape
    )


if __name__ == "__main__":
    sys.exit(main())
