"""Per-call overhead of the guard against the inline workaround and mock.patch.dict.

Run it with ``python benchmarks/bench_overhead.py``: about 12 seconds (21
rounds of about 40 ms per variant and table, each round as many calls as fill
it). ``--long`` is the careful run, 101 rounds of about 0.2 s: 4 to 7 minutes
(380 s measured on a busy 2-core machine). ``--help`` for the other options.

Each variant wraps the same no-op "factory". The variants run interleaved,
repeat by repeat, so that a noisy neighbour slows them all alike; the table
gives the median time per call and ratios measured in the same run. It runs
once with the environment as it is and once with 500 extra variables.

One variant is not something the package does: blocking ``SIGINT`` around
the bookkeeping of each call with ``signal.pthread_sigmask`` (a block and a
restore before the call, the same after it), a known way to keep Ctrl-C out
of it. Its row shows what that would add per call; the package instead makes
its bookkeeping safe to interrupt and to run again.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from unittest import mock

from single_instance_build import single_instance_build, single_instance_env

from timing import interleaved_medians, parse_options


def noop() -> None:
    """The factory: does nothing, so only the guard's cost is measured."""


def inline_workaround() -> None:
    """The workaround copied around evaluation harnesses."""
    ws_bak = os.environ.pop("WORLD_SIZE", None)
    noop()
    if ws_bak:
        os.environ["WORLD_SIZE"] = ws_bak


decorated = single_instance_build(noop)


def context_manager() -> None:
    with single_instance_env():
        noop()


CTRL_C = {signal.SIGINT}


def decorated_with_signal_masks() -> None:
    """What blocking Ctrl-C around the bookkeeping before and after the call would add."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, CTRL_C)
    signal.pthread_sigmask(signal.SIG_SETMASK, previous)
    decorated()
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, CTRL_C)
    signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def patch_dict() -> None:
    """mock.patch.dict copies the whole environment in and out."""
    with mock.patch.dict(os.environ):
        os.environ.pop("WORLD_SIZE", None)
        noop()


VARIANTS: dict[str, Callable[[], object]] = {
    "bare no-op": noop,
    "inline workaround": inline_workaround,
    "@single_instance_build": decorated,
    "with single_instance_env()": context_manager,
    "+ SIGINT masks (not used)": decorated_with_signal_masks,
    "mock.patch.dict": patch_dict,
}


def print_table(label: str, medians: dict[str, float]) -> None:
    inline = medians["inline workaround"]
    print(f"\n{label} ({len(os.environ)} variables)")
    print(f"| {'variant':<28} | {'ns/call':>10} | {'x inline':>8} |")
    print(f"|{'-' * 30}|{'-' * 11}:|{'-' * 9}:|")
    for name, seconds in medians.items():
        print(f"| {name:<28} | {seconds * 1e9:>10,.0f} | {seconds / inline:>8.2f} |")
    speedup = medians["mock.patch.dict"] / medians["@single_instance_build"]
    print(f"@single_instance_build is {speedup:.0f}x faster than mock.patch.dict")


def main() -> None:
    budget = parse_options(__doc__.splitlines()[0])
    if budget.number is None:
        print(f"measuring for at least {budget.seconds(2 * len(VARIANTS)):.0f} s")
    os.environ["WORLD_SIZE"] = "2"
    print_table("default environment", interleaved_medians(VARIANTS, budget))
    for i in range(500):
        os.environ[f"BENCH_EXTRA_{i}"] = "x" * 32
    print_table("with 500 extra variables", interleaved_medians(VARIANTS, budget))


if __name__ == "__main__":
    main()
