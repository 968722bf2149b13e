"""Per-call overhead of the guard against the inline workaround and mock.patch.dict.

Run it with ``python benchmarks/bench_overhead.py`` (``--help`` for options).

Each variant wraps the same no-op "factory". The variants run interleaved,
repeat by repeat, so that a noisy neighbour slows them all alike; the table
gives the median time per call and ratios measured in the same run. It runs
once with the environment as it is and once with 500 extra variables.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from unittest import mock

from single_instance_build import single_instance_build


def noop() -> None:
    """The factory: does nothing, so only the guard's cost is measured."""


def inline_workaround() -> None:
    """The workaround copied around evaluation harnesses."""
    ws_bak = os.environ.pop("WORLD_SIZE", None)
    noop()
    if ws_bak:
        os.environ["WORLD_SIZE"] = ws_bak


decorated = single_instance_build(noop)


def patch_dict() -> None:
    """mock.patch.dict copies the whole environment in and out."""
    with mock.patch.dict(os.environ):
        os.environ.pop("WORLD_SIZE", None)
        noop()


VARIANTS: dict[str, Callable[[], None]] = {
    "bare no-op": noop,
    "inline workaround": inline_workaround,
    "@single_instance_build": decorated,
    "mock.patch.dict": patch_dict,
}


def measure(repeats: int, number: int) -> dict[str, float]:
    """Median seconds per call of each variant, interleaved repeat by repeat."""
    samples: dict[str, list[float]] = {name: [] for name in VARIANTS}
    names = list(VARIANTS)
    for repeat in range(repeats):
        # Rotate the order so no variant always runs first after a pause.
        for name in names[repeat % len(names) :] + names[: repeat % len(names)]:
            call = VARIANTS[name]
            start = time.perf_counter()
            for _ in range(number):
                call()
            samples[name].append((time.perf_counter() - start) / number)
    return {name: statistics.median(values) for name, values in samples.items()}


def print_table(label: str, medians: dict[str, float]) -> None:
    inline = medians["inline workaround"]
    print(f"\n{label} ({len(os.environ)} variables)")
    print(f"| {'variant':<24} | {'ns/call':>9} | {'x inline':>8} |")
    print(f"|{'-' * 26}|{'-' * 10}:|{'-' * 9}:|")
    for name, seconds in medians.items():
        print(f"| {name:<24} | {seconds * 1e9:>9,.0f} | {seconds / inline:>8.2f} |")
    speedup = medians["mock.patch.dict"] / medians["@single_instance_build"]
    print(f"@single_instance_build is {speedup:.0f}x faster than mock.patch.dict")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=31, help="interleaved rounds (default 31)")
    parser.add_argument("--number", type=int, default=2000, help="calls per round (default 2000)")
    args = parser.parse_args()

    os.environ["WORLD_SIZE"] = "2"
    print_table("default environment", measure(args.repeats, args.number))
    for i in range(500):
        os.environ[f"BENCH_EXTRA_{i}"] = "x" * 32
    print_table("with 500 extra variables", measure(args.repeats, args.number))


if __name__ == "__main__":
    main()
