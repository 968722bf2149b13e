"""Static checks: decorated callables keep their types. Checked by mypy --strict and pyright.

Lines marked ``# type: ignore[code]`` must be rejected; mypy's
``warn_unused_ignores`` (part of strict) fails the run if one is accepted.
Nothing here is executed by the test suite.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable

from typing_extensions import assert_type  # typing.assert_type is Python 3.11+

from single_instance_build import (
    DEFAULT_ENV_VARS,
    is_guarded,
    original_env,
    single_instance_build,
    single_instance_env,
)


def build(path: str, *, dtype: str = "bf16") -> dict[str, str]:
    return {"path": path, "dtype": dtype}


class Model:
    def __init__(self, path: str) -> None:
        self.path = path

    @single_instance_build
    def reload(self, strict: bool) -> int:
        return int(strict)

    @classmethod
    @single_instance_build
    def from_config(cls, config: dict[str, str]) -> Model:
        return cls(config["path"])

    @single_instance_build
    @classmethod
    def from_path(cls, path: str) -> Model:
        return cls(path)

    @single_instance_build
    @staticmethod
    def default_path(name: str) -> str:
        return name


async def build_async(path: str) -> Model:
    return Model(path)


# Both decorator forms keep the signature of a function.
bare = single_instance_build(build)
with_options = single_instance_build(env_vars=("WORLD_SIZE", "RANK"))(build)
assert_type(bare("p"), dict[str, str])
assert_type(bare("p", dtype="fp16"), dict[str, str])
assert_type(with_options("p"), dict[str, str])
bare(3)  # type: ignore[arg-type]
bare()  # type: ignore[call-arg]
bare("p", dtype=1)  # type: ignore[arg-type]
bare("p", device="cpu")  # type: ignore[call-arg]
wrong_return: int = bare("p")  # type: ignore[assignment]
with_options(3)  # type: ignore[arg-type]

# A class stays a class: construction, isinstance and annotations type-check.
GuardedModel = single_instance_build(Model)
assert_type(GuardedModel, type[Model])
model = GuardedModel("p")
assert_type(model, Model)
assert isinstance(model, GuardedModel)
GuardedModel(3)  # type: ignore[arg-type]
assert_type(single_instance_build(env_vars="WORLD_SIZE")(Model), type[Model])

# Methods bind as before.
assert_type(model.reload(True), int)
assert_type(Model.from_config({"path": "p"}), Model)
assert_type(Model.from_path("p"), Model)
assert_type(model.default_path("p"), str)
model.reload("yes")  # type: ignore[arg-type]
Model.from_path(3)  # type: ignore[arg-type]
Model.default_path(3)  # type: ignore[arg-type]

# Async functions stay awaitable with the same result.
guarded_async = single_instance_build(build_async)
awaitable: Awaitable[Model] = guarded_async("p")
_ = guarded_async(1)  # type: ignore[arg-type]


async def awaits_guarded() -> None:
    assert_type(await guarded_async("p"), Model)


# functools.partial and lambdas.
partial_build = single_instance_build(functools.partial(build, "p"))
assert_type(partial_build(), dict[str, str])
assert_type(single_instance_build(lambda: 3)(), int)

# The context manager and helpers.
with single_instance_env() as nothing:
    assert_type(nothing, None)
with single_instance_env(["WORLD_SIZE", "RANK"]):
    pass
assert_type(single_instance_env("RANK").env_vars, tuple[str, ...])
assert_type(original_env("WORLD_SIZE"), str | None)
assert_type(original_env("WORLD_SIZE", "1"), str)
assert_type(is_guarded(bare), bool)
assert_type(DEFAULT_ENV_VARS, tuple[str, ...])
single_instance_build(build, env_vars=3)  # type: ignore[call-overload]
single_instance_env(3)  # type: ignore[arg-type]
original_env(3)  # type: ignore[call-overload]
