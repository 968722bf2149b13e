"""A garbage collection that ends scopes inside the bookkeeping neither deadlocks nor leaks."""

from __future__ import annotations

import json

import pytest

from support import run_isolated

# Each child makes cyclic garbage holding a scope that only a finalizer can
# end, and then runs a guarded call with the collector run from inside the
# bookkeeping: every write of a variable calls os.putenv or os.unsetenv, looked
# up in the os module on each call (as os.environ's own methods do), which the
# child wraps to collect whenever the lock is held. It reports how
# many collections ran so (the test's proof that it tests something) and the
# state at the end. A deadlock hangs the child: run_isolated's time limit
# fails the test then.
PRELUDE = """
    import asyncio, gc, json, os
    from single_instance_build import _scope, single_instance_build, single_instance_env

    os.environ["WORLD_SIZE"] = "2"
    inside_lock = 0
    held = getattr(_scope._lock, "_is_owned", None) or _scope._lock.locked  # 0.1.0: a Lock
    putenv, unsetenv = os.putenv, os.unsetenv

    def collecting(write):
        def collect_then_write(*args):
            global inside_lock
            if held():
                inside_lock += 1
                gc.collect()
            write(*args)
        return collect_then_write

    os.putenv, os.unsetenv = collecting(putenv), collecting(unsetenv)

    class Cycle:
        def __init__(self, payload):
            self.payload, self.me = payload, self

    def report():
        os.putenv, os.unsetenv = putenv, unsetenv
        gc.collect()
        print(json.dumps({
            "inside_lock": inside_lock,
            "world_size": os.environ.get("WORLD_SIZE"),
            "open": sorted(map(str, _scope._hidden)),  # names: entries may hold values
        }))
"""


def run_with_garbage(make_garbage: str, inside_the_build: bool = False) -> dict[str, object]:
    """Garbage made before each guarded call, or by the factory itself (ended by its close)."""
    code = (
        PRELUDE
        + make_garbage
        + f"""
    def factory():
        if {inside_the_build}:
            make_garbage()
        return os.environ.get("WORLD_SIZE")

    build = single_instance_build(factory)
    for _ in range(20):
        if not {inside_the_build}:
            make_garbage()
        assert build() is None
    report()
    """
    )
    result: dict[str, object] = json.loads(run_isolated(code, timeout=60))
    return result


class TestFinalizersInsideTheBookkeeping:
    @pytest.mark.parametrize("inside_the_build", [False, True], ids=["before", "by-the-factory"])
    def test_dropped_generator_suspended_inside_single_instance_env(
        self, inside_the_build: bool
    ) -> None:
        """Made by the factory, the generator's scope ends inside the build's own close."""
        result = run_with_garbage(
            """
    def suspended():
        with single_instance_env():
            yield

    def make_garbage():
        generator = suspended()
        next(generator)  # WORLD_SIZE hidden until a finalizer closes it
        Cycle(generator)
    """,
            inside_the_build,
        )
        assert result["inside_lock"], (
            "no collection ran with the lock held: the test proved nothing"
        )
        assert result == {"inside_lock": result["inside_lock"], "world_size": "2", "open": []}

    def test_started_then_dropped_guarded_coroutine(self) -> None:
        result = run_with_garbage(
            """
    @single_instance_build
    async def load():
        await asyncio.sleep(0)

    def make_garbage():
        coroutine = load()
        coroutine.send(None)  # suspended at the await, WORLD_SIZE hidden
        Cycle(coroutine)
    """
        )
        assert result["inside_lock"], (
            "no collection ran with the lock held: the test proved nothing"
        )
        assert result == {"inside_lock": result["inside_lock"], "world_size": "2", "open": []}

    @pytest.mark.parametrize("closer", ["close", "gc"])
    def test_generator_finalized_in_another_thread_ends_its_scope(self, closer: str) -> None:
        """The thread that ends a scope need not be the one that opened it."""
        out = run_isolated(
            PRELUDE
            + f"""
    import threading
    def suspended():
        with single_instance_env():
            yield

    generator = suspended()
    next(generator)
    assert "WORLD_SIZE" not in os.environ
    def finish():
        global generator
        if {closer!r} == "close":
            generator.close()
        else:
            Cycle(generator)
            generator = None
            gc.collect()
    thread = threading.Thread(target=finish)
    thread.start()
    thread.join()
    report()
    """,
            timeout=60,
        )
        result = json.loads(out)
        assert (result["world_size"], result["open"]) == ("2", [])


class TestReusedContextManager:
    def test_generator_finalized_inside_another_with_of_the_same_object(self) -> None:
        """A finalizer's __exit__ ends its own with-statement's scope, not the one being entered."""
        out = run_isolated(
            PRELUDE
            + """
    shared = single_instance_env()

    def suspended():
        with shared:
            yield

    def make_garbage():
        generator = suspended()
        next(generator)
        Cycle(generator)

    for _ in range(20):
        make_garbage()
        with shared:  # the collection runs inside this with's bookkeeping
            assert "WORLD_SIZE" not in os.environ
    report()
    """,
            timeout=60,
        )
        result = json.loads(out)
        assert result["inside_lock"], (
            "no collection ran with the lock held: the test proved nothing"
        )
        assert (result["world_size"], result["open"]) == ("2", [])
