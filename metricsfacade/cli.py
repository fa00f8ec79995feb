"""The ``metricsfacade`` command."""

from __future__ import annotations

import argparse
import json
import logging
import sys

from metricsfacade.bench import print_report, run_bench
from metricsfacade.check import run_check
from metricsfacade.demo.run import run_demo
from metricsfacade.errors import MetricsError
from metricsfacade.proxy import run_proxy


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
    proxy = commands.add_parser(
        "proxy",
        help="run an MCP stdio server behind a proxy that records the shadowcat_* metrics",
        description="Relays newline-delimited JSON-RPC between this process's stdin/stdout and "
        "COMMAND's, unchanged; logs go to stderr. Use it in an MCP client's server "
        "configuration: command `metricsfacade`, args `proxy -- npx ...`.",
    )
    proxy.add_argument("--config", metavar="FILE", help="a TOML file ([metrics], [metrics.proxy])")
    proxy.add_argument("--metrics-port", type=int, metavar="N", help="endpoint port (0: any free)")
    proxy.add_argument("--tape", metavar="FILE", help="record every message as JSON lines")
    proxy.add_argument("server", nargs=argparse.REMAINDER, metavar="-- COMMAND [ARGS...]")
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
    demo = commands.add_parser(
        "demo",
        help="the proxy in front of a bundled MCP server, under realistic traffic",
        description="Serves the metrics endpoint (127.0.0.1:9090 unless the config says "
        "otherwise), drives traffic with errors, a rate-limit burst and a server crash that "
        "trips the circuit breaker, and ends with a summary.",
    )
    demo.add_argument("--config", metavar="FILE", help="a TOML file (default: built-in)")
    demo.add_argument("--duration", type=float, default=0, help="seconds (0: until Ctrl-C)")
    args = parser.parse_args(argv)
    if args.command == "demo":
        logging.basicConfig(stream=sys.stderr, level=logging.ERROR)  # the summary tells
        try:
            return run_demo(args.config, args.duration, sys.stdout)
        except MetricsError as exc:
            print(f"metricsfacade demo: {exc}", file=sys.stderr)
            return 2
    if args.command == "bench":
        return _bench(args)
    if args.command == "check":
        return run_check(args.config, sys.stdout)
    if args.command == "proxy":
        return _proxy(parser, args)
    parser.error(f"unknown command {args.command!r}")
    return 2


def _bench(args: argparse.Namespace) -> int:
    report = run_bench(args.requests, args.rounds, args.target, pin=args.pin)
    print_report(report, sys.stdout)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(report, handle, indent=2)
    return 0 if report["passes_target"] else 1


def _proxy(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    command = args.server[1:] if args.server[:1] == ["--"] else args.server
    if not command:
        parser.error("proxy: give the server command after --")
    logging.basicConfig(
        stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(name)s: %(message)s"
    )
    try:
        return run_proxy(command, args.config, metrics_port=args.metrics_port, tape_path=args.tape)
    except MetricsError as exc:
        print(f"metricsfacade proxy: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
