"""Bad names and targets fail when a guard is created, before anything runs."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import pytest

from single_instance_build import (
    _transformers,
    guard_transformers,
    is_guarded,
    original_env,
    single_instance_build,
    single_instance_env,
)

BAD_TYPES: list[Any] = [3, None, b"WORLD_SIZE", 1.5, object()]
BAD_NAMES = ["", "A=B", "=", "NUL\x00IN", "WORLD_SIZE="]

GuardMaker = Callable[[Any], object]
MAKERS: list[GuardMaker] = [
    lambda env_vars: single_instance_build(env_vars=env_vars),
    lambda env_vars: single_instance_build(print, env_vars=env_vars),
    lambda env_vars: single_instance_env(env_vars),
    lambda env_vars: guard_transformers(env_vars=env_vars),
]
MAKER_IDS = ["decorator-factory", "decorator-direct", "context-manager", "guard-transformers"]


class TestBadEnvVars:
    @pytest.mark.parametrize("make", MAKERS, ids=MAKER_IDS)
    @pytest.mark.parametrize("env_vars", BAD_TYPES, ids=repr)
    def test_non_iterable_or_non_str_raises_type_error_naming_it(
        self, make: GuardMaker, env_vars: Any
    ) -> None:
        with pytest.raises(TypeError, match=r"expected|must be") as info:
            make(env_vars)
        assert repr(env_vars) in str(info.value)

    @pytest.mark.parametrize("make", MAKERS, ids=MAKER_IDS)
    @pytest.mark.parametrize("bad", BAD_TYPES, ids=repr)
    def test_non_str_inside_iterable_raises_type_error_naming_it(
        self, make: GuardMaker, bad: Any
    ) -> None:
        with pytest.raises(TypeError) as info:
            make(["WORLD_SIZE", bad])
        assert repr(bad) in str(info.value)
        assert "non-empty str" in str(info.value)

    @pytest.mark.parametrize("make", MAKERS, ids=MAKER_IDS)
    @pytest.mark.parametrize("name", BAD_NAMES, ids=repr)
    def test_malformed_name_raises_value_error_naming_it(self, make: GuardMaker, name: str) -> None:
        with pytest.raises(ValueError, match="non-empty str without '=' or NUL") as info:
            make(("WORLD_SIZE", name))
        assert repr(name) in str(info.value)

    @pytest.mark.parametrize("make", MAKERS, ids=MAKER_IDS)
    def test_empty_iterable_raises_value_error(self, make: GuardMaker) -> None:
        with pytest.raises(ValueError, match=r"at least one variable, got \[\]"):
            make([])

    def test_bad_input_leaves_environment_unchanged(self, world_size: str) -> None:
        before = dict(os.environ)
        for env_vars in [*BAD_TYPES, *BAD_NAMES, ["WORLD_SIZE", 3]]:
            with pytest.raises((TypeError, ValueError)):
                single_instance_build(print, env_vars=env_vars)
        assert dict(os.environ) == before

    def test_bad_guard_transformers_call_changes_nothing(self) -> None:
        for env_vars in [*BAD_TYPES, *BAD_NAMES, ["WORLD_SIZE", 3]]:
            with pytest.raises((TypeError, ValueError)):
                guard_transformers(env_vars=env_vars)
        assert _transformers.status().names == ()

    def test_message_never_contains_a_value(self) -> None:
        os.environ["HF_TOKEN"] = "hf_secret_value"
        with pytest.raises(ValueError, match="non-empty str") as info:
            single_instance_env(["HF_TOKEN", ""])
        assert "hf_secret_value" not in str(info.value)


class TestBadTargets:
    @pytest.mark.parametrize("target", [3, "build_model", None, [print]], ids=repr)
    def test_non_callable_raises_type_error_naming_it(self, target: Any) -> None:
        with pytest.raises(TypeError, match="expected a callable") as info:
            single_instance_build(env_vars="WORLD_SIZE")(target)
        assert repr(target) in str(info.value)

    def test_generator_function_is_refused_at_decoration(self) -> None:
        def stream() -> Any:
            yield os.environ.get("WORLD_SIZE")

        with pytest.raises(TypeError, match="cannot guard generator function"):
            single_instance_build(stream)

    def test_async_generator_function_is_refused_at_decoration(self) -> None:
        async def stream() -> Any:
            yield os.environ.get("WORLD_SIZE")

        with pytest.raises(TypeError, match="cannot guard generator function"):
            single_instance_build(stream)


class TestOriginalEnvBadInput:
    @pytest.mark.parametrize("name", [3, None, b"WORLD_SIZE"], ids=repr)
    def test_non_str_raises_type_error(self, name: Any) -> None:
        with pytest.raises(TypeError, match="non-empty str"):
            original_env(name)

    @pytest.mark.parametrize("name", BAD_NAMES, ids=repr)
    def test_malformed_raises_value_error(self, name: str) -> None:
        with pytest.raises(ValueError, match="non-empty str"):
            original_env(name)


class TestIsGuardedBadInput:
    def test_bad_env_vars_raise(self) -> None:
        with pytest.raises(ValueError, match="non-empty str"):
            is_guarded(print, env_vars="")
