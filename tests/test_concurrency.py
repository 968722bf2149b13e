"""Scopes from threads, asyncio tasks and forked children compose over one process environment."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import threading
import time
from collections.abc import Callable, Generator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from single_instance_build import _scope, original_env, single_instance_build, single_instance_env

from support import c_getenv, c_getenv_bytes

THREADS = 8


class TestThreads:
    @pytest.mark.usefixtures("world_size")
    def test_overlapping_builds_never_see_variable_and_readers_never_lose_path(self) -> None:
        """8 threads start together, each builds repeatedly; a reader watches PATH throughout."""
        barrier = threading.Barrier(THREADS + 1)
        seen_inside: list[str | None] = []
        path_missing = threading.Event()
        done = threading.Event()

        @single_instance_build
        def build(i: int) -> None:
            seen_inside.append(os.environ.get("WORLD_SIZE"))
            time.sleep(random.random() / 1000)
            seen_inside.append(os.environ.get("WORLD_SIZE"))

        def worker(i: int) -> None:
            barrier.wait()
            for _ in range(50):
                build(i)

        def reader() -> None:
            while not done.is_set():
                if "PATH" not in os.environ:
                    path_missing.set()

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(THREADS)]
        watcher = threading.Thread(target=reader)
        watcher.start()
        for thread in threads:
            thread.start()
        barrier.wait()
        for thread in threads:
            thread.join()
        done.set()
        watcher.join()

        assert seen_inside == [None] * (THREADS * 50 * 2)
        assert not path_missing.is_set()
        assert os.environ["WORLD_SIZE"] == "2"

    @pytest.mark.usefixtures("world_size")
    def test_original_env_reads_hidden_value_from_every_thread(self) -> None:
        @single_instance_build
        def build() -> str | None:
            time.sleep(0.001)
            return original_env("WORLD_SIZE")

        with ThreadPoolExecutor(THREADS) as pool:
            results = list(pool.map(lambda _: build(), range(THREADS * 4)))
        assert results == ["2"] * (THREADS * 4)

    @pytest.mark.usefixtures("world_size")
    def test_factory_may_build_sub_models_in_other_threads(self) -> None:
        """No lock is held while a factory runs, so nested builds on other threads finish."""

        @single_instance_build
        def build_part() -> str | None:
            return os.environ.get("WORLD_SIZE")

        @single_instance_build
        def build_model() -> list[str | None]:
            with ThreadPoolExecutor(4) as pool:
                return list(pool.map(lambda _: build_part(), range(8)))

        result: list[list[str | None]] = []
        thread = threading.Thread(target=lambda: result.append(build_model()))
        thread.start()
        thread.join(timeout=30)
        assert not thread.is_alive(), "deadlock: a lock was held while the factory ran"
        assert result == [[None] * 8]
        assert os.environ["WORLD_SIZE"] == "2"

    @pytest.mark.usefixtures("world_size")
    def test_failing_and_succeeding_threads_restore_together(self) -> None:
        barrier = threading.Barrier(THREADS)

        @single_instance_build
        def build(i: int) -> int:
            barrier.wait()
            if i % 2:
                raise RuntimeError(f"build {i} failed")
            return i

        with ThreadPoolExecutor(THREADS) as pool:
            futures = [pool.submit(build, i) for i in range(THREADS)]
        failures = [f.exception() for f in futures]
        assert [f is None for f in failures] == [i % 2 == 0 for i in range(THREADS)]
        assert os.environ["WORLD_SIZE"] == "2"


class TestThreadsWithACLevelOnlyValue:
    def test_overlapping_builds_put_back_a_value_set_only_at_the_c_level(self) -> None:
        """WORLD_SIZE set by os.putenv alone: hidden from every build, back at the C level after."""
        os.putenv("WORLD_SIZE", "2")
        seen_inside: list[str | None] = []

        @single_instance_build
        def build() -> None:
            seen_inside.append(c_getenv("WORLD_SIZE"))
            time.sleep(random.random() / 1000)

        try:
            with ThreadPoolExecutor(THREADS) as pool:
                list(pool.map(lambda _: build(), range(THREADS * 20)))
            assert set(seen_inside) == {None}
            assert (os.environ.get("WORLD_SIZE"), c_getenv("WORLD_SIZE")) == (None, "2")
            assert _scope._hidden == {}
        finally:
            os.unsetenv("WORLD_SIZE")


class TestAsyncio:
    @pytest.mark.usefixtures("world_size")
    def test_gather_of_overlapping_builds(self) -> None:
        @single_instance_build
        async def build(i: int) -> list[str | None]:
            seen = []
            for _ in range(5):
                seen.append(os.environ.get("WORLD_SIZE"))
                await asyncio.sleep(random.random() / 1000)
            return seen

        async def main() -> tuple[list[list[str | None]], str | None]:
            results = await asyncio.gather(*(build(i) for i in range(THREADS)))
            return list(results), os.environ.get("WORLD_SIZE")

        results, after_gather = asyncio.run(main())
        assert results == [[None] * 5] * THREADS
        assert after_gather == "2"

    @pytest.mark.usefixtures("world_size")
    def test_variable_visible_again_to_tasks_once_every_build_ended(self) -> None:
        release = asyncio.Event()

        @single_instance_build
        async def build() -> None:
            await release.wait()

        async def main() -> tuple[str | None, str | None]:
            task = asyncio.create_task(build())
            await asyncio.sleep(0)
            during = os.environ.get("WORLD_SIZE")
            release.set()
            await task
            return during, os.environ.get("WORLD_SIZE")

        assert asyncio.run(main()) == (None, "2")


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork() is POSIX only")
@pytest.mark.filterwarnings("ignore:.*fork.*:DeprecationWarning")
class TestFork:
    def _run_in_child(self, body: Callable[[], int]) -> int:
        """Fork, run *body* in the child and return its exit status; fail if it hangs."""
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            code = 1
            try:
                code = body()
            finally:
                os._exit(code)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                return os.waitstatus_to_exitcode(status)
            time.sleep(0.01)
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        pytest.fail("the forked child hung: it inherited a held lock")

    @pytest.mark.usefixtures("world_size")
    def test_child_forked_while_lock_is_held_can_still_build(self) -> None:
        holding = threading.Event()

        def hold_lock() -> None:
            with _scope._lock:
                holding.set()
                time.sleep(0.2)

        holder = threading.Thread(target=hold_lock)
        holder.start()
        holding.wait()

        def child() -> int:
            with single_instance_env():
                hidden = "WORLD_SIZE" not in os.environ
            return 0 if hidden and os.environ.get("WORLD_SIZE") == "2" else 3

        assert self._run_in_child(child) == 0
        holder.join()

    @pytest.mark.usefixtures("world_size")
    @pytest.mark.parametrize(
        "forker_in_scope", [False, True], ids=["forker-outside", "forker-inside"]
    )
    def test_child_forked_while_another_thread_builds_gets_the_variable_back(
        self, forker_in_scope: bool
    ) -> None:
        """That thread does not exist in the child, so its scope ends there at once.

        A scope of the forking thread itself still hides the variable until it ends.
        """
        inside, release = threading.Event(), threading.Event()

        @single_instance_build
        def build() -> None:
            inside.set()
            release.wait(10)

        builder = threading.Thread(target=build)
        builder.start()
        inside.wait(10)

        def child() -> int:
            if forker_in_scope:
                if "WORLD_SIZE" in os.environ or original_env("WORLD_SIZE") != "2":
                    return 3
                scope.__exit__(None, None, None)
            ok = os.environ.get("WORLD_SIZE") == "2" and c_getenv("WORLD_SIZE") == "2"
            return 0 if ok and _scope._hidden == {} else 4

        scope = single_instance_env()
        try:
            if forker_in_scope:
                scope.__enter__()
            assert self._run_in_child(child) == 0
        finally:
            if forker_in_scope:
                scope.__exit__(None, None, None)
            release.set()
            builder.join()
        assert os.environ["WORLD_SIZE"] == "2"

    @pytest.mark.parametrize("where", ["c-level-only", "rebound-os-environ"])
    def test_child_forked_while_another_thread_builds_gets_its_own_value_back(
        self, where: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The ended scope's value comes back where it was: at the C level, or in its mapping."""
        replacement = {"WORLD_SIZE": "2"}
        if where == "c-level-only":
            os.putenv("WORLD_SIZE", "2")
        else:
            monkeypatch.setattr(os, "environ", replacement)
        inside, release = threading.Event(), threading.Event()

        @single_instance_build
        def build() -> None:
            inside.set()
            release.wait(10)

        def child() -> int:
            if where == "c-level-only":
                ok = "WORLD_SIZE" not in os.environ and c_getenv("WORLD_SIZE") == "2"
            else:
                ok = replacement == {"WORLD_SIZE": "2"}
            return 0 if ok and _scope._hidden == {} else 4

        builder = threading.Thread(target=build)
        builder.start()
        try:
            inside.wait(10)
            assert self._run_in_child(child) == 0
        finally:
            release.set()
            builder.join()
            if where == "c-level-only":
                os.unsetenv("WORLD_SIZE")

    @pytest.mark.usefixtures("world_size")
    def test_child_forked_inside_a_with_keeps_it_after_another_thread_ended_its_own(self) -> None:
        """A generator entered the same object in a thread; the forking thread finished it."""
        shared = single_instance_env()

        def suspended() -> Generator[None, None, None]:
            with shared:
                yield

        generator = suspended()
        started = threading.Thread(target=next, args=(generator,))
        started.start()
        started.join()

        def child() -> int:
            return 0 if "WORLD_SIZE" not in os.environ else 3

        with shared:
            generator.close()  # ends the thread's scope, not this with's
            assert self._run_in_child(child) == 0
        assert os.environ["WORLD_SIZE"] == "2"

    @pytest.mark.usefixtures("world_size")
    def test_child_forked_inside_a_scope_sees_it_and_restores_it(self) -> None:
        def child() -> int:
            return 0 if "WORLD_SIZE" not in os.environ else 3

        with single_instance_env():
            assert self._run_in_child(child) == 0

        def child_after_its_scope_ends() -> int:
            with single_instance_env():
                pass
            return 0 if os.environ.get("WORLD_SIZE") == "2" else 3

        with single_instance_env():
            pass
        assert self._run_in_child(child_after_its_scope_ends) == 0


class TestRaces:
    def test_thread_deleting_a_hidden_variable_while_a_scope_ends(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Another thread deletes WORLD_SIZE between the C and the Python half of a scope's delete.

        The scope's end must neither raise nor leave its other names hidden.
        """
        os.environ.update(WORLD_SIZE="2", RANK="1")
        real = os.unsetenv
        raced = threading.Event()

        def racing(key: bytes) -> None:
            real(key)
            if key == b"WORLD_SIZE" and not raced.is_set() and "WORLD_SIZE" in os.environ:
                raced.set()
                other = threading.Thread(target=os.environ.pop, args=("WORLD_SIZE", None))
                other.start()
                other.join()

        @single_instance_build(env_vars=("WORLD_SIZE", "RANK"))
        def build() -> str:
            with single_instance_env():  # an inner scope ends while the outer one hides it
                os.environ["WORLD_SIZE"] = "set by the factory"
                monkeypatch.setattr(os, "unsetenv", racing)
            monkeypatch.undo()
            return "built"

        assert build() == "built"
        assert raced.is_set(), "the race never happened: the test proved nothing"
        assert (os.environ.get("WORLD_SIZE"), os.environ.get("RANK")) == ("2", "1")
        assert _scope._hidden == {}


# A prior value: absent (None), a str in os.environ, or bytes set by os.putenv alone.
Prior = str | tuple[str, bytes] | None
PRIOR_VALUES = st.one_of(
    st.none(),
    st.just(""),
    st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\x00"), max_size=8),
    st.tuples(
        st.just("c-level only"), st.binary(max_size=8).map(lambda b: b.replace(b"\x00", b""))
    ),
)
NAMES = ("WORLD_SIZE", "RANK", "LOCAL_WORLD_SIZE")


@st.composite
def scope_trees(draw: Any, depth: int = 0) -> dict[str, Any]:
    """A scope: what it hides, whether its body fails or sets a variable, what runs inside."""
    names = draw(st.lists(st.sampled_from(NAMES), min_size=1, max_size=3))
    children = [] if depth >= 3 else draw(st.lists(scope_trees(depth + 1), max_size=3))
    return {
        "names": names,
        "form": draw(st.sampled_from(["decorator", "context", "thread"])),
        "fails": draw(st.booleans()),
        # A factory may set a variable it hides; one it does not hide is its own business.
        "sets": draw(st.one_of(st.none(), st.sampled_from(names))),
        "children": children,
    }


def sets_any(tree: dict[str, Any]) -> bool:
    return bool(tree["sets"]) or any(sets_any(child) for child in tree["children"])


def run_tree(tree: dict[str, Any], errors: list[BaseException], check_absent: bool) -> None:
    def body() -> None:
        if check_absent:  # a factory that sets a hidden variable makes it visible to all threads
            for name in tree["names"]:
                assert name not in os.environ
                assert c_getenv(name) is None
        if tree["sets"]:
            os.environ[tree["sets"]] = "set-by-factory"
        for child in tree["children"]:
            run_tree(child, errors, check_absent)
        if tree["fails"]:
            raise RuntimeError("factory failed")

    if tree["form"] == "context":
        with contextlib.suppress(RuntimeError), single_instance_env(tree["names"]):
            body()
    elif tree["form"] == "decorator":
        with contextlib.suppress(RuntimeError):
            single_instance_build(body, env_vars=tree["names"])()
    else:

        def in_thread() -> None:
            try:
                single_instance_build(body, env_vars=tree["names"])()
            except RuntimeError:
                pass
            except BaseException as error:  # an assertion inside the thread
                errors.append(error)

        thread = threading.Thread(target=in_thread)
        thread.start()
        thread.join()


def run_tree_reporting(
    tree: dict[str, Any], errors: list[BaseException], check_absent: bool
) -> None:
    try:
        run_tree(tree, errors, check_absent)
    except BaseException as error:  # reported to the test's thread
        errors.append(error)


class TestProperty:
    @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(
        prior=st.fixed_dictionaries(dict.fromkeys(NAMES, PRIOR_VALUES)),
        trees=st.lists(scope_trees(), min_size=1, max_size=4),
        concurrently=st.booleans(),
    )
    def test_any_mix_of_nested_failing_concurrent_scopes_restores_environment(
        self, prior: dict[str, Prior], trees: list[dict[str, Any]], concurrently: bool
    ) -> None:
        for name, value in prior.items():
            os.environ.pop(name, None)
            if isinstance(value, str):
                os.environ[name] = value
            elif value is not None:
                os.putenv(name, value[1])
        try:
            self._run(trees, concurrently)
            for name, value in prior.items():
                in_c = os.fsencode(value) if isinstance(value, str) else value and value[1]
                assert c_getenv_bytes(name) == in_c, name
        finally:
            for name, value in prior.items():
                if isinstance(value, tuple):
                    os.unsetenv(name)  # os.environ is put back by the conftest fixture

    def _run(self, trees: list[dict[str, Any]], concurrently: bool) -> None:
        before = dict(os.environ)
        errors: list[BaseException] = []
        check_absent = not (concurrently and any(sets_any(tree) for tree in trees))
        if concurrently:
            threads = [
                threading.Thread(target=run_tree_reporting, args=(tree, errors, check_absent))
                for tree in trees
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        else:
            for tree in trees:
                run_tree(tree, errors, check_absent)
        assert errors == []
        assert dict(os.environ) == before
        assert _scope._hidden == {}
