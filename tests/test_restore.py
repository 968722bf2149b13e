"""While guarded code runs the variables are absent; afterwards they are exactly as before."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import pytest

from single_instance_build import original_env, single_instance_build, single_instance_env

from support import c_getenv

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
