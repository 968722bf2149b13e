"""Timing helpers shared by the benchmark scripts: interleaved rounds, medians, options."""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable


def parse_options(description: str) -> argparse.Namespace:
    """``--repeats`` and ``--number``, the same for every benchmark."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--repeats", type=int, default=31, help="interleaved rounds (default 31)")
    parser.add_argument("--number", type=int, default=2000, help="calls per round (default 2000)")
    return parser.parse_args()


def interleaved_medians(
    variants: dict[str, Callable[[], object]], repeats: int, number: int
) -> dict[str, float]:
    """Median seconds per call of each variant, the variants interleaved round by round.

    A noisy neighbour then slows all variants alike, so ratios from one run are fair.
    """
    samples: dict[str, list[float]] = {name: [] for name in variants}
    names = list(variants)
    for repeat in range(repeats):
        # Rotate the order so no variant always runs first after a pause.
        for name in names[repeat % len(names) :] + names[: repeat % len(names)]:
            call = variants[name]
            start = time.perf_counter()
            for _ in range(number):
                call()
            samples[name].append((time.perf_counter() - start) / number)
    return {name: statistics.median(values) for name, values in samples.items()}
