"""What the benchmark scripts share: interleaved timing rounds and the command line."""

from __future__ import annotations

import argparse
import json
import timeit
from collections.abc import Callable, Sequence
from typing import Any


def interleaved_ns(timers: Sequence[timeit.Timer], rounds: int, number: int) -> list[list[float]]:
    """ns per run of each timer, per round; the order flips every round so drift in the
    machine's speed hits every row alike."""
    samples: list[list[float]] = [[] for _ in timers]
    for round_index in range(rounds):
        order = list(range(len(timers)))
        if round_index % 2:
            order.reverse()
        for index in order:
            samples[index].append(timers[index].timeit(number) / number * 1e9)
    return samples


def run(
    description: str,
    measure: Callable[[int, int], list[dict[str, Any]]],
    print_table: Callable[[list[dict[str, Any]]], None],
    *,
    rounds: int,
    number: int,
    argv: list[str] | None = None,
) -> int:
    """Parse --rounds/--number/--json, measure, print, and write the JSON if asked."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--rounds", type=int, default=rounds)
    parser.add_argument("--number", type=int, default=number)
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)
    results = measure(args.rounds, args.number)
    print_table(results)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=2)
    return 0
