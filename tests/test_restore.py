"""While guarded code runs the variables are absent; afterwards they are exactly as before."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from single_instance_build import original_env, single_instance_build, single_instance_env

from support import c_getenv, c_getenv_bytes

Runner = Callable[[Callable[[], Any], tuple[str, ...]], Any]


def via_decorator(body: Callable[[], Any], names: tuple[str, ...]) -> Any:
    return single_instance_build(body, env_vars=names)()


def via_decorator_factory(body: Callable[[], Any], names: tuple[str, ...]) -> Any:
    @single_instance_build(env_vars=names)
    def factory() -> Any:
        return body()

    return factory()


def via_context_manager(body: Callable[[], Any], names: tuple[str, ...]) -> Any:
    with single_instance_env(names):
        return body()


RUNNERS: list[Runner] = [via_decorator, via_decorator_factory, via_context_manager]
RUNNER_IDS = ["decorator", "decorator-with-options", "context-manager"]
runners = pytest.mark.parametrize("run", RUNNERS, ids=RUNNER_IDS)

VALUES = ["2", "", "Zürich ✓ 世界", " spaced value ", "a=b=c"]
values = pytest.mark.parametrize(
    "value", VALUES, ids=["plain", "empty", "unicode", "spaces", "equals"]
)


def snapshot(*names: str) -> dict[str, str | None]:
    return {name: os.environ.get(name) for name in names}


class TestHiddenWhileRunning:
    @runners
    @values
    def test_variable_absent_from_os_environ_and_c_environment(
        self, run: Runner, value: str
    ) -> None:
        os.environ["WORLD_SIZE"] = value
        seen = run(lambda: ("WORLD_SIZE" in os.environ, c_getenv("WORLD_SIZE")), ("WORLD_SIZE",))
        assert seen == (False, None)

    @runners
    def test_every_configured_variable_is_hidden(self, run: Runner) -> None:
        os.environ.update(WORLD_SIZE="4", RANK="1", LOCAL_WORLD_SIZE="2")
        names = ("WORLD_SIZE", "RANK", "LOCAL_WORLD_SIZE")
        assert run(lambda: snapshot(*names), names) == dict.fromkeys(names)

    @runners
    def test_only_configured_variables_are_touched(self, run: Runner) -> None:
        os.environ.update(WORLD_SIZE="4", RANK="1", MASTER_PORT="29500")
        before = dict(os.environ)
        inside = run(lambda: dict(os.environ), ("WORLD_SIZE",))
        before.pop("WORLD_SIZE")
        assert inside == before

    @runners
    def test_absent_variable_stays_absent(self, run: Runner) -> None:
        os.environ.pop("WORLD_SIZE", None)
        assert run(lambda: os.environ.get("WORLD_SIZE"), ("WORLD_SIZE",)) is None
        assert "WORLD_SIZE" not in os.environ


class TestRestoredAfterwards:
    @runners
    @values
    def test_value_restored_exactly_after_return(self, run: Runner, value: str) -> None:
        os.environ["WORLD_SIZE"] = value
        run(lambda: None, ("WORLD_SIZE",))
        assert os.environ["WORLD_SIZE"] == value
        assert c_getenv("WORLD_SIZE") == value

    @runners
    @pytest.mark.parametrize(
        "error",
        [ValueError("boom"), KeyboardInterrupt(), SystemExit(3), GeneratorExit()],
        ids=["exception", "KeyboardInterrupt", "SystemExit", "GeneratorExit"],
    )
    def test_value_restored_when_factory_raises(self, run: Runner, error: BaseException) -> None:
        os.environ["WORLD_SIZE"] = "2"

        def body() -> None:
            raise error

        with pytest.raises(type(error)):
            run(body, ("WORLD_SIZE",))
        assert os.environ["WORLD_SIZE"] == "2"

    @runners
    def test_absent_variable_removed_again_when_factory_sets_it(self, run: Runner) -> None:
        os.environ.pop("WORLD_SIZE", None)
        run(lambda: os.environ.__setitem__("WORLD_SIZE", "8"), ("WORLD_SIZE",))
        assert "WORLD_SIZE" not in os.environ
        assert c_getenv("WORLD_SIZE") is None

    @runners
    def test_value_restored_when_factory_changes_it(self, run: Runner) -> None:
        os.environ["WORLD_SIZE"] = "2"
        run(lambda: os.environ.__setitem__("WORLD_SIZE", "8"), ("WORLD_SIZE",))
        assert os.environ["WORLD_SIZE"] == "2"

    @runners
    def test_return_value_is_passed_through(self, run: Runner) -> None:
        sentinel = object()
        assert run(lambda: sentinel, ("WORLD_SIZE",)) is sentinel


class TestNesting:
    @runners
    def test_nested_scopes_keep_variable_hidden_until_outermost_ends(self, run: Runner) -> None:
        os.environ["WORLD_SIZE"] = "2"

        def outer() -> list[str | None]:
            seen = [os.environ.get("WORLD_SIZE")]
            run(lambda: seen.append(os.environ.get("WORLD_SIZE")), ("WORLD_SIZE",))
            seen.append(os.environ.get("WORLD_SIZE"))
            return seen

        assert run(outer, ("WORLD_SIZE",)) == [None, None, None]
        assert os.environ["WORLD_SIZE"] == "2"

    def test_overlapping_variable_sets_compose(self) -> None:
        os.environ.update(WORLD_SIZE="2", RANK="1")
        with single_instance_env("WORLD_SIZE"):
            with single_instance_env(["RANK", "WORLD_SIZE"]):
                assert snapshot("WORLD_SIZE", "RANK") == {"WORLD_SIZE": None, "RANK": None}
            assert snapshot("WORLD_SIZE", "RANK") == {"WORLD_SIZE": None, "RANK": "1"}
        assert snapshot("WORLD_SIZE", "RANK") == {"WORLD_SIZE": "2", "RANK": "1"}

    def test_inner_scope_hides_value_set_under_outer_scope(self) -> None:
        os.environ["WORLD_SIZE"] = "2"
        with single_instance_env():
            os.environ["WORLD_SIZE"] = "8"
            with single_instance_env():
                assert "WORLD_SIZE" not in os.environ
            assert "WORLD_SIZE" not in os.environ
        assert os.environ["WORLD_SIZE"] == "2"

    def test_recursive_factory_restores_once(self) -> None:
        os.environ["WORLD_SIZE"] = "2"

        @single_instance_build
        def build(depth: int) -> list[str | None]:
            below = build(depth - 1) if depth else []
            return [os.environ.get("WORLD_SIZE"), *below]

        assert build(5) == [None] * 6
        assert os.environ["WORLD_SIZE"] == "2"

    def test_context_manager_object_can_be_reentered(self) -> None:
        os.environ["WORLD_SIZE"] = "2"
        scope = single_instance_env()
        with scope, scope:
            assert "WORLD_SIZE" not in os.environ
        with scope:
            assert "WORLD_SIZE" not in os.environ
        assert os.environ["WORLD_SIZE"] == "2"

    def test_exit_without_enter_raises_and_changes_nothing(self) -> None:
        os.environ["WORLD_SIZE"] = "2"
        with pytest.raises(RuntimeError, match=r"__exit__\(\) without __enter__"):
            single_instance_env().__exit__(None, None, None)
        assert os.environ["WORLD_SIZE"] == "2"


class TestOriginalEnv:
    @runners
    @values
    def test_returns_hidden_value_inside_scope(self, run: Runner, value: str) -> None:
        os.environ["WORLD_SIZE"] = value
        assert run(lambda: original_env("WORLD_SIZE"), ("WORLD_SIZE",)) == value

    @runners
    def test_returns_default_when_hidden_variable_was_absent(self, run: Runner) -> None:
        os.environ.pop("WORLD_SIZE", None)
        assert run(lambda: original_env("WORLD_SIZE", "1"), ("WORLD_SIZE",)) == "1"
        assert run(lambda: original_env("WORLD_SIZE"), ("WORLD_SIZE",)) is None

    def test_reads_environment_outside_scope(self) -> None:
        os.environ["RANK"] = "3"
        assert original_env("RANK") == "3"
        assert original_env("NOT_SET_ANYWHERE", "x") == "x"

    def test_reads_current_value_of_variables_not_hidden(self) -> None:
        os.environ.update(WORLD_SIZE="2", RANK="1")
        with single_instance_env("WORLD_SIZE"):
            os.environ["RANK"] = "5"
            assert original_env("RANK") == "5"

    def test_returns_value_from_before_outermost_scope(self) -> None:
        os.environ["WORLD_SIZE"] = "2"
        with single_instance_env():
            os.environ["WORLD_SIZE"] = "8"
            with single_instance_env():
                assert original_env("WORLD_SIZE") == "2"


# Values a native library or a launcher may set: bytes that are not UTF-8 included.
C_VALUES = [b"2", b"", b"\xff\xfe not utf-8", "Zürich".encode()]
c_values = pytest.mark.parametrize("value", C_VALUES, ids=["plain", "empty", "not-utf-8", "utf-8"])


@pytest.fixture
def set_in_c_only() -> Iterator[Callable[[str, bytes], None]]:
    """Set a variable at the C level only, as os.putenv or native setenv do; unset it after."""
    names: list[str] = []

    def putenv(name: str, value: bytes) -> None:
        assert name not in os.environ
        names.append(name)
        os.putenv(name, value)

    yield putenv
    for name in names:
        os.unsetenv(name)


CPutenv = Callable[[str, bytes], None]


class TestValueSetOnlyAtTheCLevel:
    """A value os.environ never saw (os.putenv, native setenv) is hidden and comes back exactly."""

    @runners
    @c_values
    def test_value_comes_back_exactly_at_the_c_level(
        self, run: Runner, set_in_c_only: CPutenv, value: bytes
    ) -> None:
        set_in_c_only("WORLD_SIZE", value)
        run(lambda: None, ("WORLD_SIZE",))
        assert c_getenv_bytes("WORLD_SIZE") == value
        assert "WORLD_SIZE" not in os.environ
        assert b"WORLD_SIZE" not in os.environb

    @runners
    @c_values
    def test_value_is_hidden_at_the_c_level_while_running(
        self, run: Runner, set_in_c_only: CPutenv, value: bytes
    ) -> None:
        set_in_c_only("WORLD_SIZE", value)
        seen = run(lambda: (os.environ.get("WORLD_SIZE"), c_getenv("WORLD_SIZE")), ("WORLD_SIZE",))
        assert seen == (None, None)

    @runners
    def test_value_comes_back_when_factory_sets_the_variable(
        self, run: Runner, set_in_c_only: CPutenv
    ) -> None:
        set_in_c_only("WORLD_SIZE", b"2")

        def body() -> None:
            os.environ["WORLD_SIZE"] = "set by the factory"

        run(body, ("WORLD_SIZE",))
        assert (os.environ.get("WORLD_SIZE"), c_getenv_bytes("WORLD_SIZE")) == (None, b"2")

    def test_nested_scopes_put_the_value_back_once_the_outermost_ends(
        self, set_in_c_only: CPutenv
    ) -> None:
        set_in_c_only("WORLD_SIZE", b"2")
        with single_instance_env():
            assert single_instance_build(lambda: c_getenv("WORLD_SIZE"))() is None
            assert c_getenv("WORLD_SIZE") is None
        assert c_getenv_bytes("WORLD_SIZE") == b"2"

    def test_async_factory_puts_the_value_back(self, set_in_c_only: CPutenv) -> None:
        set_in_c_only("WORLD_SIZE", b"2")

        @single_instance_build
        async def build() -> str | None:
            await asyncio.sleep(0)
            return c_getenv("WORLD_SIZE")

        assert asyncio.run(build()) is None
        assert c_getenv_bytes("WORLD_SIZE") == b"2"

    def test_child_process_started_afterwards_inherits_the_value(
        self, set_in_c_only: CPutenv
    ) -> None:
        """subprocess passes the C-level environment on when given no env: the launcher case."""
        set_in_c_only("WORLD_SIZE", b"\xff2")
        single_instance_build(lambda: None)()
        code = "import os, sys; sys.stdout.buffer.write(os.environb.get(b'WORLD_SIZE', b'absent'))"
        child = subprocess.run([sys.executable, "-c", code], capture_output=True, check=True)
        assert child.stdout == b"\xff2"

    def test_original_env_reads_os_environ_which_lacks_it(self, set_in_c_only: CPutenv) -> None:
        set_in_c_only("WORLD_SIZE", b"2")
        assert original_env("WORLD_SIZE") is None
        with single_instance_env():
            assert original_env("WORLD_SIZE") is None


# (os.environ's bytes, the C level's bytes) before a scope; None: absent there.
DIVERGENT_LEVELS = {
    "os.environ only": (b"2", None),
    "different values": (b"2", b"3"),
    "not utf-8 in C": (b"2", b"\xff3"),
    "empty in os.environ": (b"", b"3"),
}
divergent = pytest.mark.parametrize(
    "levels", list(DIVERGENT_LEVELS.values()), ids=list(DIVERGENT_LEVELS)
)


@pytest.fixture
def set_levels() -> Iterator[Callable[[bytes | None, bytes | None], None]]:
    """Set WORLD_SIZE in os.environ and then, apart, at the C level; remove it after."""

    def set_levels(environ_value: bytes | None, c_value: bytes | None) -> None:
        if environ_value is not None:
            os.environb[b"WORLD_SIZE"] = environ_value
        if c_value is None:
            os.unsetenv("WORLD_SIZE")
        else:
            os.putenv(b"WORLD_SIZE", c_value)

    yield set_levels
    os.environb.pop(b"WORLD_SIZE", None)
    os.unsetenv("WORLD_SIZE")


SetLevels = Callable[[bytes | None, bytes | None], None]


def levels_now() -> tuple[bytes | None, bytes | None]:
    return os.environb.get(b"WORLD_SIZE"), c_getenv_bytes("WORLD_SIZE")


class TestLevelsThatDiffer:
    """os.environ and the C level disagree (os.unsetenv or os.putenv alone): each comes back."""

    @runners
    @divergent
    def test_each_level_comes_back_as_it_was(
        self, run: Runner, set_levels: SetLevels, levels: tuple[bytes, bytes | None]
    ) -> None:
        set_levels(*levels)
        assert run(levels_now, ("WORLD_SIZE",)) == (None, None)
        assert levels_now() == levels

    @runners
    @divergent
    def test_each_level_comes_back_when_the_factory_sets_the_variable(
        self, run: Runner, set_levels: SetLevels, levels: tuple[bytes, bytes | None]
    ) -> None:
        set_levels(*levels)

        def body() -> None:
            os.environ["WORLD_SIZE"] = "set by the factory"

        run(body, ("WORLD_SIZE",))
        assert levels_now() == levels

    @divergent
    def test_nested_scopes_of_the_same_and_other_names(
        self, set_levels: SetLevels, levels: tuple[bytes, bytes | None]
    ) -> None:
        set_levels(*levels)
        with single_instance_env(["WORLD_SIZE", "RANK"]):
            assert single_instance_build(levels_now)() == (None, None)
            with single_instance_env("WORLD_SIZE"):
                assert original_env("WORLD_SIZE") == levels[0].decode()
            assert levels_now() == (None, None)
        assert levels_now() == levels

    def test_child_started_afterwards_does_not_see_a_value_unset_at_the_c_level(
        self, set_levels: SetLevels
    ) -> None:
        """``os.environ["WORLD_SIZE"] = "2"; os.unsetenv("WORLD_SIZE")``: a child sees none."""
        set_levels(b"2", None)
        single_instance_build(lambda: None)()
        code = "import os; print(os.environ.get('WORLD_SIZE', 'absent'))"
        child = subprocess.run([sys.executable, "-c", code], capture_output=True, check=True)
        assert child.stdout == b"absent\n"
        assert os.environ["WORLD_SIZE"] == "2"

    @pytest.mark.filterwarnings("ignore:.*fork.*:DeprecationWarning")
    @divergent
    def test_forked_child_ends_another_threads_scope_putting_each_level_back(
        self, set_levels: SetLevels, levels: tuple[bytes, bytes | None]
    ) -> None:
        set_levels(*levels)
        entered, leave = threading.Event(), threading.Event()

        def hold_a_scope() -> None:
            with single_instance_env():
                entered.set()
                leave.wait(30)

        holder = threading.Thread(target=hold_a_scope)
        holder.start()
        try:
            entered.wait(30)
            read, write = os.pipe()
            pid = os.fork()
            if pid == 0:  # pragma: no cover - the child, where that thread does not exist
                os.write(write, repr(levels_now()).encode())
                os._exit(0)
            os.close(write)
            with os.fdopen(read, "rb") as pipe:
                seen = pipe.read()
            os.waitpid(pid, 0)
            assert levels_now() == (None, None)
        finally:
            leave.set()
            holder.join()
        assert seen == repr(levels).encode()
        assert levels_now() == levels


class TestReboundOsEnviron:
    """Guarded code uses the os.environ current when it starts, and restores into that mapping."""

    @runners
    def test_variable_is_hidden_from_the_rebound_mapping(
        self, run: Runner, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        os.environ["WORLD_SIZE"] = "4"
        real = os.environ
        replacement = {"WORLD_SIZE": "2", "RANK": "1"}
        monkeypatch.setattr(os, "environ", replacement)
        seen = run(lambda: (os.environ.get("WORLD_SIZE"), real.get("WORLD_SIZE")), ("WORLD_SIZE",))
        assert seen == (None, "4")  # the mapping in use, and only it
        assert replacement == {"WORLD_SIZE": "2", "RANK": "1"}
        assert (real["WORLD_SIZE"], c_getenv("WORLD_SIZE")) == ("4", "4")

    def test_async_factory_hides_from_the_rebound_mapping(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        replacement = {"WORLD_SIZE": "2"}
        monkeypatch.setattr(os, "environ", replacement)

        @single_instance_build
        async def build() -> str | None:
            await asyncio.sleep(0)
            return os.environ.get("WORLD_SIZE")

        assert asyncio.run(build()) is None
        assert replacement == {"WORLD_SIZE": "2"}

    def test_scope_restores_into_the_mapping_it_hid_from(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """os.environ rebound during a scope: each mapping gets back its own value."""
        os.environ["WORLD_SIZE"] = "2"
        real = os.environ
        replacement = {"WORLD_SIZE": "9"}
        with single_instance_env():
            monkeypatch.setattr(os, "environ", replacement)
            with single_instance_env():
                assert "WORLD_SIZE" not in replacement
                assert original_env("WORLD_SIZE") == "9"
            assert replacement == {"WORLD_SIZE": "9"}
            assert "WORLD_SIZE" not in real
        assert (real.get("WORLD_SIZE"), c_getenv("WORLD_SIZE")) == ("2", "2")
        assert replacement == {"WORLD_SIZE": "9"}

    def test_absent_variable_stays_absent_in_the_rebound_mapping(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        replacement: dict[str, str] = {}

        def body() -> None:
            os.environ["WORLD_SIZE"] = "set by the factory"

        monkeypatch.setattr(os, "environ", replacement)
        single_instance_build(body)()
        assert replacement == {}

    def test_original_env_reads_the_rebound_mapping(self, monkeypatch: pytest.MonkeyPatch) -> None:
        os.environ["WORLD_SIZE"] = "4"
        monkeypatch.setattr(os, "environ", {"WORLD_SIZE": "2"})
        assert original_env("WORLD_SIZE") == "2"
        with single_instance_env():
            assert original_env("WORLD_SIZE") == "2"
