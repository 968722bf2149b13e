"""Guarding a VLMEvalKit-sized registry: time to guard 550 partials, and time per build.

Run it with ``python benchmarks/bench_registry.py``: 2 to 5 seconds.
``--long`` is the careful run (101 rounds instead of 21, and longer rounds of
builds): under a minute. ``--help`` for the other options.

The registry holds 550 ``functools.partial(StandIn, model_path=..., ...)``
entries, the shape and size of VLMEvalKit's ``supported_VLM``. The build of a
stand-in does nothing, so the per-build figures are the guard's own cost.
Guarded and unguarded builds run interleaved, repeat by repeat.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from functools import partial
from typing import Any

from single_instance_build import GuardedRegistry, guard_registry

from timing import interleaved_medians, parse_options

ENTRIES = 550


class StandIn:
    """A model class whose construction costs nothing."""

    def __init__(self, model_path: str, **kwargs: Any) -> None:
        self.model_path = model_path


def make_registry() -> dict[str, Any]:
    return {
        f"model-{i}": partial(StandIn, model_path=f"org/model-{i}", max_new_tokens=512)
        for i in range(ENTRIES)
    }


def once(action: Callable[[], object]) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def median_seconds(action: Callable[[], object], repeats: int) -> float:
    return statistics.median(once(action) for _ in range(repeats))


def main() -> None:
    budget = parse_options(__doc__.splitlines()[0])
    os.environ["WORLD_SIZE"] = "2"

    fresh = [make_registry() for _ in range(budget.repeats)]
    guard_s = statistics.median(once(partial(guard_registry, r)) for r in fresh)
    again_s = median_seconds(partial(guard_registry, fresh[0]), budget.repeats)
    class_s = median_seconds(lambda: GuardedRegistry(make_registry()), budget.repeats)
    make_s = median_seconds(make_registry, budget.repeats)

    builds: dict[str, Callable[[], object]] = {
        "unguarded partial": make_registry()["model-7"],
        "guarded partial": guard_registry(make_registry())["model-7"],
    }
    per_build = interleaved_medians(builds, budget)

    print(f"registry of {ENTRIES} partials")
    print(f"| {'operation':<42} | {'median':>10} |")
    print(f"|{'-' * 44}|{'-' * 11}:|")
    print(f"| {'build the plain dict (reference)':<42} | {make_s * 1e3:>7.2f} ms |")
    print(f"| {'guard_registry(supported_VLM)':<42} | {guard_s * 1e3:>7.2f} ms |")
    print(f"| {'guard_registry again (all already guarded)':<42} | {again_s * 1e3:>7.2f} ms |")
    print(f"| {'GuardedRegistry(plain dict) incl. building':<42} | {class_s * 1e3:>7.2f} ms |")
    for name, seconds in per_build.items():
        print(f"| {'one build, ' + name:<42} | {seconds * 1e6:>7.2f} us |")
    ratio = per_build["guarded partial"] / per_build["unguarded partial"]
    extra = per_build["guarded partial"] - per_build["unguarded partial"]
    print(f"a guarded build costs {extra * 1e6:.2f} us more ({ratio:.1f}x a no-op build)")


if __name__ == "__main__":
    main()
