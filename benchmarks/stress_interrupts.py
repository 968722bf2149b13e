"""Ctrl-C at random moments: how often does an interrupted guarded call leave a wrong state?

Run it with ``python benchmarks/stress_interrupts.py``: 5 to 25 seconds for
the default 20,000 interrupts per form, the longer on a busy machine; the
time grows in proportion to ``--interrupts``. ``--help`` for the options.

A ``SIGALRM`` timer fires after a random delay (1 to 40 microseconds) into a
loop of guarded no-op calls, and its handler raises ``KeyboardInterrupt``,
as Ctrl-C does. After each interrupt the script checks the state and counts
each kind of wrong outcome: the internal lock left held, the saved value
lost (``WORLD_SIZE`` gone with no scope left to bring it back), or any other
difference (``os.environ`` and the C-level environment disagreeing, a scope
left open). Each round gets exactly one interrupt; "ignored" counts those
that landed in a finalizer, where Python prints and ignores them. Each form
of guard is measured: the decorator, the context manager, both nested, and
an ``async def`` factory's coroutine; and one ``single_instance_env`` object
entered again and again, which an interrupt landing exactly as ``__exit__``
is called can leave open (a fresh one is ended when it is freed). With
``--c-level-only``, ``WORLD_SIZE`` is set with ``os.putenv`` alone, as native
code sets it, and must come back at the C level and stay out of
``os.environ``. POSIX only.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import random
import signal
import sys
from collections.abc import Callable
from types import FrameType

from single_instance_build import _scope, single_instance_build, single_instance_env

from timing import positive_int

_libc = ctypes.CDLL(None)
_libc.getenv.restype = ctypes.c_char_p
_libc.getenv.argtypes = [ctypes.c_char_p]
VALUE = "2"
c_level_only = False  # --c-level-only: WORLD_SIZE set by os.putenv alone


armed = False  # one interrupt a round, while its loop of calls runs


def interrupt(signum: int, frame: FrameType | None) -> None:
    global armed
    if armed:
        armed = False
        raise KeyboardInterrupt


def noop() -> None:
    """The factory."""


async def async_noop() -> None:
    """An async factory."""


decorated = single_instance_build(noop)
decorated_async = single_instance_build(async_noop)


def with_context_manager() -> None:
    with single_instance_env():
        noop()


shared = single_instance_env()


def with_reused_context_manager() -> None:
    with shared:
        noop()


def nested() -> None:
    with single_instance_env():
        decorated()


def run_async() -> None:
    # Driven by hand, as an event loop drives it, without the loop's own machinery.
    coroutine = decorated_async()
    with contextlib.suppress(StopIteration):
        coroutine.send(None)


FORMS: dict[str, Callable[[], None]] = {
    "@single_instance_build": decorated,
    "single_instance_env": with_context_manager,
    "one single_instance_env reused": with_reused_context_manager,
    "nested (context + decorated)": nested,
    "async def factory": run_async,
}


def outcome() -> str:
    """Classify the state after an interrupt, then repair it for the next round."""
    lock_held = _scope._lock._is_owned()  # type: ignore[attr-defined]  # C RLock has it
    value = os.environ.get("WORLD_SIZE")
    in_c = _libc.getenv(b"WORLD_SIZE")
    open_scopes = dict(_scope._hidden)
    saved = (VALUE.encode(), 2) if c_level_only else (VALUE, 0)  # (value, index in an entry)
    if lock_held:
        result = "lock held"
        while _scope._lock._is_owned():  # type: ignore[attr-defined]
            _scope._lock.release()
    elif (in_c if c_level_only else value) is None and not any(
        entry[saved[1]] == saved[0] for entry in open_scopes.values()
    ):
        result = "value lost"
    elif value != (None if c_level_only else VALUE) or in_c != VALUE.encode() or open_scopes:
        result = "other wrong"
    else:
        return "ok"
    print(
        # Names only, never the entries: those may hold values.
        f"{result}: WORLD_SIZE {value!r} in os.environ, {in_c!r} in C, "
        f"open scopes over {sorted(map(str, open_scopes))}",
        file=sys.stderr,
    )
    _scope._hidden.clear()
    set_world_size()
    return result


def set_world_size() -> None:
    if c_level_only:
        os.environ.pop("WORLD_SIZE", None)
        os.putenv("WORLD_SIZE", VALUE)
    else:
        os.environ["WORLD_SIZE"] = VALUE


def call_until_disarmed(form: Callable[[], None]) -> None:
    # A function of its own: CPython 3.13 can run a signal handler at a loop's
    # back edge outside the try around the loop (python/cpython#130279).
    while armed:
        form()


def stress(form: Callable[[], None], interrupts: int, rng: random.Random) -> dict[str, int]:
    global armed
    counts = dict.fromkeys(["lock held", "value lost", "other wrong", "ignored"], 0)
    for _ in range(interrupts):
        delay = rng.uniform(1e-6, 40e-6)
        armed = True
        try:
            signal.setitimer(signal.ITIMER_REAL, delay)
            call_until_disarmed(form)
        except KeyboardInterrupt:
            pass
        else:  # it landed in a finalizer, where Python prints and ignores it
            counts["ignored"] += 1
        result = outcome()
        if result != "ok":
            counts[result] += 1
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--interrupts", type=positive_int, default=20_000, help="per form (default 20000)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--c-level-only", action="store_true", help="set WORLD_SIZE with os.putenv alone"
    )
    args = parser.parse_args()
    global c_level_only
    c_level_only = args.c_level_only
    set_world_size()
    signal.signal(signal.SIGALRM, interrupt)
    rng = random.Random(args.seed)
    print(f"{args.interrupts:,} interrupts per form, each after 1 to 40 us")
    print(
        f"| {'form':<30} | {'lock held':>9} | {'value lost':>10} | {'other wrong':>11} "
        f"| {'ignored':>7} |"
    )
    print(f"|{'-' * 32}|{'-' * 10}:|{'-' * 11}:|{'-' * 12}:|{'-' * 8}:|")
    for name, form in FORMS.items():
        counts = stress(form, args.interrupts, rng)
        print(
            f"| {name:<30} | {counts['lock held']:>9,} | {counts['value lost']:>10,} "
            f"| {counts['other wrong']:>11,} | {counts['ignored']:>7,} |"
        )


if __name__ == "__main__":
    main()
