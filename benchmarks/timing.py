"""Timing helpers shared by the benchmark scripts: options, a time budget, interleaved medians.

A run is sized by time, not by a count of calls: each round of a variant
lasts about ``round_seconds`` however slow the variant is, so a default run
ends in seconds even where one call takes milliseconds (``mock.patch.dict``
over a large environment), and ``--long`` gives the careful run.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

QUICK_REPEATS, QUICK_ROUND_SECONDS = 21, 0.04
LONG_REPEATS, LONG_ROUND_SECONDS = 101, 0.2


@dataclass(frozen=True)
class Budget:
    """How long a benchmark measures: rounds, and calls per round (or seconds per round)."""

    repeats: int
    number: int | None  # calls per round; None: as many as fill round_seconds
    round_seconds: float

    def seconds(self, rounds: int) -> float:
        """How long *rounds* rounds take at the least, when calls per round are chosen by time."""
        return rounds * self.repeats * self.round_seconds


def positive_int(text: str) -> int:
    """An argparse type: a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text!r}")
    return value


def parse_options(description: str) -> Budget:
    """``--long``, ``--repeats`` and ``--number``, the same for every benchmark that times calls."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--long",
        action="store_true",
        help=f"the careful run: {LONG_REPEATS} rounds of about {LONG_ROUND_SECONDS:g} s per "
        f"variant, instead of {QUICK_REPEATS} of about {QUICK_ROUND_SECONDS:g} s",
    )
    parser.add_argument(
        "--repeats",
        type=positive_int,
        help=f"interleaved rounds (default {QUICK_REPEATS}, with --long {LONG_REPEATS})",
    )
    parser.add_argument(
        "--number",
        type=positive_int,
        help="calls per round, the same for every variant (default: as many as fill a round)",
    )
    args = parser.parse_args()
    default_repeats = LONG_REPEATS if args.long else QUICK_REPEATS
    return Budget(
        repeats=args.repeats or default_repeats,
        number=args.number,
        round_seconds=LONG_ROUND_SECONDS if args.long else QUICK_ROUND_SECONDS,
    )


def calls_per_round(call: Callable[[], object], round_seconds: float) -> int:
    """How many calls of *call* fill about *round_seconds*, measured over at least 1/10 of it."""
    number = 1
    while True:
        start = time.perf_counter()
        for _ in range(number):
            call()
        elapsed = time.perf_counter() - start
        if elapsed >= round_seconds / 10:
            return max(1, round(number * round_seconds / elapsed))
        number *= 10


def interleaved_medians(
    variants: dict[str, Callable[[], object]], budget: Budget
) -> dict[str, float]:
    """Median seconds per call of each variant, the variants interleaved round by round.

    A noisy neighbour then slows all variants alike, so ratios from one run are fair.
    """
    numbers = {
        name: budget.number or calls_per_round(call, budget.round_seconds)
        for name, call in variants.items()
    }
    samples: dict[str, list[float]] = {name: [] for name in variants}
    names = list(variants)
    for repeat in range(budget.repeats):
        # Rotate the order so no variant always runs first after a pause.
        for name in names[repeat % len(names) :] + names[: repeat % len(names)]:
            call, number = variants[name], numbers[name]
            start = time.perf_counter()
            for _ in range(number):
                call()
            samples[name].append((time.perf_counter() - start) / number)
    return {name: statistics.median(values) for name, values in samples.items()}
