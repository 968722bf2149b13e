"""Signals at random moments: does a handler ever leave a wrong state or spoil a guarded call?

Run it with ``python benchmarks/stress_interrupts.py``: 30 to 80 seconds for
the default 20,000 signals per form and handler (75 s measured on a busy
2-core machine); the time grows in proportion to ``--interrupts``. ``--help`` for
the options.

A ``SIGALRM`` timer fires after a random delay (1 to 40 microseconds) into a
loop of guarded no-op calls. Each of three handlers is measured:

- ``Ctrl-C`` raises ``KeyboardInterrupt``, as Ctrl-C does;
- ``original_env()`` reads ``WORLD_SIZE`` with it, and returns;
- ``guarded call`` runs a guarded function, which reads what it sees at both
  levels and through ``original_env()``, and returns.

After each signal the script checks the state and counts each kind of wrong
outcome: the internal lock left held, the saved value lost (``WORLD_SIZE``
gone with no scope left to bring it back), any other difference
(``os.environ`` or the C-level environment not as before, a scope left
open), a wrong read in the handler, and, for the handlers that return, a
guarded call that raised or did not return its factory's result. Each round
gets exactly one signal; "ignored" counts those that landed in a finalizer,
where Python prints and ignores what a handler raises. Each form of guard is
measured: the decorator, the context manager, both nested, and an ``async
def`` factory's coroutine; and one ``single_instance_env`` object entered
again and again, which an interrupt landing exactly as ``__exit__`` is
called can leave open (a fresh one is ended when it is freed).

``--levels`` sets ``WORLD_SIZE`` in ``os.environ`` and at the C level alike
(the default), at the C level only (``os.putenv`` alone, as native code sets
it; ``--c-level-only`` says the same), in ``os.environ`` only (then
``os.unsetenv``), or with a different value at each: each level must come
back as it was. POSIX only.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import random
import signal
import sys
from collections.abc import Callable
from types import FrameType

from single_instance_build import _scope, original_env, single_instance_build, single_instance_env

from timing import positive_int

_libc = ctypes.CDLL(None)
_libc.getenv.restype = ctypes.c_char_p
_libc.getenv.argtypes = [ctypes.c_char_p]

# --levels: WORLD_SIZE's value in os.environ and at the C level (None: unset).
LEVELS: dict[str, tuple[str | None, str | None]] = {
    "both": ("2", "2"),
    "c-only": (None, "2"),
    "environ-only": ("2", None),
    "different": ("2", "3"),
}
expected: tuple[str | None, str | None] = LEVELS["both"]
RESULT = object()  # what the factory returns: a guarded call must return it


def c_getenv() -> str | None:
    value: bytes | None = _libc.getenv(b"WORLD_SIZE")
    return None if value is None else value.decode()


def world_size() -> tuple[str | None, str | None]:
    return os.environ.get("WORLD_SIZE"), c_getenv()


def set_world_size() -> None:
    environ_value, c_value = expected
    if environ_value is None:
        os.environ.pop("WORLD_SIZE", None)
    else:
        os.environ["WORLD_SIZE"] = environ_value
    if c_value is None:
        os.unsetenv("WORLD_SIZE")
    else:
        os.putenv("WORLD_SIZE", c_value)


armed = False  # one signal a round, while its loop of calls runs
wrong_reads = 0  # handlers that read something else than the value before the call


def view() -> tuple[str | None, str | None, str | None]:
    return (*world_size(), original_env("WORLD_SIZE"))


guarded_view = single_instance_build(view)


def ctrl_c() -> None:
    raise KeyboardInterrupt


def read_original_env() -> None:
    global wrong_reads
    if original_env("WORLD_SIZE") != expected[0]:
        wrong_reads += 1


def call_guarded() -> None:
    global wrong_reads
    if guarded_view() != (None, None, expected[0]):
        wrong_reads += 1


HANDLERS: dict[str, Callable[[], None]] = {
    "Ctrl-C": ctrl_c,
    "original_env()": read_original_env,
    "guarded call": call_guarded,
}
handler = ctrl_c


def on_signal(signum: int, frame: FrameType | None) -> None:
    global armed
    if armed:
        armed = False
        handler()


def noop() -> object:
    """The factory."""
    return RESULT


async def async_noop() -> object:
    """An async factory."""
    return RESULT


decorated = single_instance_build(noop)
decorated_async = single_instance_build(async_noop)


def with_context_manager() -> object:
    with single_instance_env():
        return noop()


shared = single_instance_env()


def with_reused_context_manager() -> object:
    with shared:
        return noop()


def nested() -> object:
    with single_instance_env():
        return decorated()


def run_async() -> object:
    # Driven by hand, as an event loop drives it, without the loop's own machinery.
    coroutine = decorated_async()
    try:
        coroutine.send(None)
    except StopIteration as done:
        return done.value
    raise AssertionError("the coroutine did not finish")  # pragma: no cover


FORMS: dict[str, Callable[[], object]] = {
    "@single_instance_build": decorated,
    "single_instance_env": with_context_manager,
    "one single_instance_env reused": with_reused_context_manager,
    "nested (context + decorated)": nested,
    "async def factory": run_async,
}
KINDS = ["lock held", "value lost", "other wrong", "wrong read", "call spoilt", "ignored"]


def outcome() -> str:
    """Classify the state after a signal, then repair it for the next round."""
    lock_held = _scope._lock._is_owned()  # type: ignore[attr-defined]  # C RLock has it
    now = world_size()
    open_scopes = dict(_scope._hidden)
    if lock_held:
        result = "lock held"
        while _scope._lock._is_owned():  # type: ignore[attr-defined]
            _scope._lock.release()
    elif now == expected and not open_scopes:
        return "ok"
    elif not open_scopes and any(
        value is None and want is not None for value, want in zip(now, expected, strict=True)
    ):
        result = "value lost"
    else:
        result = "other wrong"
    print(
        # Names only, never the entries: those may hold values.
        f"{result}: WORLD_SIZE {now[0]!r} in os.environ, {now[1]!r} in C, "
        f"open scopes over {sorted(map(str, open_scopes))}",
        file=sys.stderr,
    )
    _scope._hidden.clear()
    set_world_size()
    return result


def call_until_disarmed(form: Callable[[], object]) -> bool:
    """Call *form* until the signal came; False if a call raised or lost its result."""
    # A function of its own: CPython 3.13 can run a signal handler at a loop's
    # back edge outside the try around the loop (python/cpython#130279).
    while armed:
        try:
            if form() is not RESULT:
                return False
        except KeyboardInterrupt:
            raise
        except Exception as error:
            print(f"call spoilt: {error!r}", file=sys.stderr)
            return False
    return True


def stress(form: Callable[[], object], interrupts: int, rng: random.Random) -> dict[str, int]:
    global armed, wrong_reads
    counts = dict.fromkeys(KINDS, 0)
    wrong_reads = 0
    for _ in range(interrupts):
        delay = rng.uniform(1e-6, 40e-6)
        armed, spoilt = True, False
        try:
            signal.setitimer(signal.ITIMER_REAL, delay)
            spoilt = not call_until_disarmed(form)
        except KeyboardInterrupt:
            pass
        else:
            if spoilt:
                counts["call spoilt"] += 1
                armed = False
                signal.setitimer(signal.ITIMER_REAL, 0)
            elif handler is ctrl_c:
                # It landed in a finalizer, where Python prints and ignores it.
                counts["ignored"] += 1
        result = outcome()
        if result != "ok":
            counts[result] += 1
    counts["wrong read"] = wrong_reads
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--interrupts", type=positive_int, default=20_000, help="per form (default 20000)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--levels", choices=list(LEVELS), default="both", help="where WORLD_SIZE is set"
    )
    parser.add_argument("--c-level-only", action="store_true", help="the same as --levels c-only")
    parser.add_argument(
        "--handlers",
        default=",".join(HANDLERS),
        help=f"comma-separated, of: {', '.join(HANDLERS)} (default: all)",
    )
    args = parser.parse_args()
    global expected, handler
    expected = LEVELS["c-only" if args.c_level_only else args.levels]
    handlers = args.handlers.split(",")
    for name in handlers:
        if name not in HANDLERS:
            parser.error(f"--handlers: {name!r} is none of {', '.join(HANDLERS)}")
    set_world_size()
    signal.signal(signal.SIGALRM, on_signal)
    rng = random.Random(args.seed)
    print(f"{args.interrupts:,} signals per form and handler, each after 1 to 40 us")
    print(
        f"| {'handler':<14} | {'form':<30} | "
        + " | ".join(f"{kind:>{max(len(kind), 6)}}" for kind in KINDS)
        + " |"
    )
    print(f"|{'-' * 16}|{'-' * 32}|" + "".join(f"{'-' * (max(len(k), 6) + 1)}:|" for k in KINDS))
    for handler_name in handlers:
        handler = HANDLERS[handler_name]
        for name, form in FORMS.items():
            counts = stress(form, args.interrupts, rng)
            print(
                f"| {handler_name:<14} | {name:<30} | "
                + " | ".join(f"{counts[kind]:>{max(len(kind), 6)},}" for kind in KINDS)
                + " |",
                flush=True,
            )


if __name__ == "__main__":
    main()
