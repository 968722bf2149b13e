"""``@single_instance_build`` guards every kind of callable and keeps what it looks like."""

from __future__ import annotations

import asyncio
import functools
import gc
import inspect
import logging
import os
import warnings
from collections.abc import AsyncIterator, Iterator
from typing import Any, Generic, TypeVar

import pytest

from single_instance_build import is_guarded, single_instance_build

from support import DecoratedModel, StandInModel, build_stand_in


def seen() -> str | None:
    return os.environ.get("WORLD_SIZE")


class CallableObject:
    def __call__(self, scale: int = 1) -> tuple[int, str | None]:
        return scale, seen()


class Methods:
    @single_instance_build
    def instance_method(self, x: int) -> tuple[Any, int, str | None]:
        return self, x, seen()

    @classmethod
    @single_instance_build
    def class_method_inside(cls, x: int) -> tuple[Any, int, str | None]:
        return cls, x, seen()

    @single_instance_build
    @classmethod
    def class_method_outside(cls, x: int) -> tuple[Any, int, str | None]:
        return cls, x, seen()

    @staticmethod
    @single_instance_build
    def static_method_inside(x: int) -> tuple[int, str | None]:
        return x, seen()

    @single_instance_build
    @staticmethod
    def static_method_outside(x: int) -> tuple[int, str | None]:
        return x, seen()


@pytest.mark.usefixtures("world_size")
class TestTargets:
    def test_function(self) -> None:
        assert single_instance_build(seen)() is None

    def test_function_with_options(self) -> None:
        assert single_instance_build(env_vars=["WORLD_SIZE", "RANK"])(seen)() is None

    def test_lambda(self) -> None:
        assert single_instance_build(lambda: os.environ.get("WORLD_SIZE"))() is None

    def test_partial(self) -> None:
        guarded = single_instance_build(functools.partial(StandInModel, "path", dtype="bf16"))
        model = guarded()
        assert (model.model_path, model.kwargs, model.seen_world_size) == (
            "path",
            {"dtype": "bf16"},
            None,
        )

    def test_callable_object(self) -> None:
        assert single_instance_build(CallableObject())(scale=3) == (3, None)

    def test_class_builds_instances_with_variable_hidden(self) -> None:
        guarded = single_instance_build(StandInModel)
        model = guarded("path")
        assert model.seen_world_size is None
        assert isinstance(model, guarded)
        assert isinstance(model, StandInModel)
        assert type(model) is StandInModel

    def test_builtin(self) -> None:
        assert single_instance_build(os.environ.get)("WORLD_SIZE") is None

    def test_instance_method_bound_and_through_class(self) -> None:
        obj = Methods()
        assert obj.instance_method(1) == (obj, 1, None)
        assert Methods.instance_method(obj, 2) == (obj, 2, None)

    @pytest.mark.parametrize("name", ["class_method_inside", "class_method_outside"])
    def test_class_method_through_class_and_instance(self, name: str) -> None:
        assert getattr(Methods, name)(1) == (Methods, 1, None)
        assert getattr(Methods(), name)(2) == (Methods, 2, None)

    @pytest.mark.parametrize("name", ["static_method_inside", "static_method_outside"])
    def test_static_method_through_class_and_instance(self, name: str) -> None:
        assert getattr(Methods, name)(1) == (1, None)
        assert getattr(Methods(), name)(2) == (2, None)

    def test_bound_method_of_an_instance(self) -> None:
        assert single_instance_build(CallableObject().__call__)(2) == (2, None)

    def test_variable_is_back_after_each_kind(self) -> None:
        obj = Methods()
        obj.instance_method(1)
        Methods.class_method_outside(1)
        Methods.static_method_outside(1)
        assert os.environ["WORLD_SIZE"] == "2"


class TestAsync:
    def test_coroutine_function_stays_a_coroutine_function(self) -> None:
        async def build() -> None:
            pass

        guarded = single_instance_build(build)
        assert inspect.iscoroutinefunction(guarded)
        assert inspect.iscoroutinefunction(single_instance_build(env_vars="RANK")(build))

    @pytest.mark.usefixtures("world_size")
    def test_variable_hidden_across_awaits(self) -> None:
        @single_instance_build
        async def build() -> list[str | None]:
            seen_values = [seen()]
            for _ in range(3):
                await asyncio.sleep(0)
                seen_values.append(seen())
            return seen_values

        assert asyncio.run(build()) == [None] * 4
        assert os.environ["WORLD_SIZE"] == "2"

    @pytest.mark.usefixtures("world_size")
    def test_nothing_hidden_until_the_coroutine_runs(self) -> None:
        @single_instance_build
        async def build() -> str | None:
            return seen()

        coroutine = build()
        assert os.environ["WORLD_SIZE"] == "2"
        assert asyncio.run(coroutine) is None
        assert os.environ["WORLD_SIZE"] == "2"

    @pytest.mark.usefixtures("world_size")
    def test_restored_when_coroutine_raises(self) -> None:
        @single_instance_build
        async def build() -> None:
            await asyncio.sleep(0)
            raise RuntimeError("no weights")

        with pytest.raises(RuntimeError, match="no weights"):
            asyncio.run(build())
        assert os.environ["WORLD_SIZE"] == "2"

    @pytest.mark.usefixtures("world_size")
    def test_restored_when_coroutine_is_cancelled(self) -> None:
        started = asyncio.Event()

        @single_instance_build
        async def build() -> None:
            started.set()
            await asyncio.sleep(60)

        async def main() -> None:
            task = asyncio.create_task(build())
            await started.wait()
            assert "WORLD_SIZE" not in os.environ
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

        asyncio.run(main())
        assert os.environ["WORLD_SIZE"] == "2"

    @pytest.mark.usefixtures("world_size")
    def test_callable_object_with_async_call(self) -> None:
        class AsyncBuilder:
            async def __call__(self) -> str | None:
                await asyncio.sleep(0)
                return seen()

        assert asyncio.run(single_instance_build(AsyncBuilder())()) is None
        assert os.environ["WORLD_SIZE"] == "2"

    @pytest.mark.usefixtures("world_size")
    def test_partial_of_coroutine_function(self) -> None:
        async def build(delay: float) -> str | None:
            await asyncio.sleep(delay)
            return seen()

        assert asyncio.run(single_instance_build(functools.partial(build, 0))()) is None

    @pytest.mark.usefixtures("world_size")
    def test_async_method(self) -> None:
        class Loader:
            @single_instance_build
            async def load(self) -> str | None:
                await asyncio.sleep(0)
                return seen()

        assert asyncio.run(Loader().load()) is None


class TestLooksLikeTheTarget:
    def test_function_metadata_preserved(self) -> None:
        def build_model(path: str, *, dtype: str = "bf16") -> dict[str, str]:
            """Build the model."""
            return {"path": path, "dtype": dtype}

        guarded = single_instance_build(build_model)
        assert guarded.__name__ == "build_model"
        assert guarded.__qualname__ == build_model.__qualname__
        assert guarded.__doc__ == "Build the model."
        assert guarded.__module__ == __name__
        assert guarded.__wrapped__ is build_model  # type: ignore[attr-defined]
        assert inspect.signature(guarded) == inspect.signature(build_model)
        assert guarded.__annotations__ == build_model.__annotations__

    def test_class_metadata_preserved(self) -> None:
        guarded = single_instance_build(StandInModel)
        assert guarded.__name__ == "StandInModel"
        assert guarded.__doc__ == StandInModel.__doc__
        assert guarded.__wrapped__ is StandInModel  # type: ignore[attr-defined]
        assert inspect.isclass(guarded)
        assert inspect.signature(guarded) == inspect.signature(StandInModel)

    def test_partial_attributes_read_through(self) -> None:
        target = functools.partial(StandInModel, model_path="p")
        guarded = single_instance_build(target)
        assert isinstance(guarded, functools.partial)
        assert guarded.func is StandInModel
        assert guarded.keywords == {"model_path": "p"}

    def test_method_signature_preserved(self) -> None:
        assert list(inspect.signature(Methods.instance_method).parameters) == ["self", "x"]
        assert list(inspect.signature(Methods().instance_method).parameters) == ["x"]

    def test_repr_names_target_and_variables(self) -> None:
        assert repr(single_instance_build(StandInModel, env_vars="RANK")) == (
            f"single_instance_build({StandInModel!r}, env_vars=('RANK',))"
        )


class TestIsGuarded:
    def test_true_for_guarded_false_for_plain(self) -> None:
        assert is_guarded(single_instance_build(seen))
        assert not is_guarded(seen)
        assert not is_guarded(3)

    def test_true_for_bound_guarded_methods(self) -> None:
        assert is_guarded(Methods().instance_method)
        assert is_guarded(Methods.class_method_outside)

    def test_env_vars_asks_for_at_least_those(self) -> None:
        guarded = single_instance_build(seen, env_vars=("WORLD_SIZE", "RANK"))
        assert is_guarded(guarded, env_vars="RANK")
        assert is_guarded(guarded, env_vars=["RANK", "WORLD_SIZE"])
        assert not is_guarded(guarded, env_vars=["RANK", "LOCAL_RANK"])


class TestNoStacking:
    def test_guarding_twice_returns_the_same_object(self) -> None:
        once = single_instance_build(seen)
        assert single_instance_build(once) is once
        assert single_instance_build(env_vars="WORLD_SIZE")(once) is once

    def test_guarding_for_more_variables_wraps_the_original_once(self) -> None:
        once = single_instance_build(seen)
        wider = single_instance_build(once, env_vars="RANK")
        assert wider.__wrapped__ is seen  # type: ignore[attr-defined]
        assert is_guarded(wider, env_vars=("WORLD_SIZE", "RANK"))


class TestLogging:
    def test_debug_records_name_variables_and_factory_never_values(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        os.environ["WORLD_SIZE"] = "secret-looking-value"
        caplog.set_level(logging.DEBUG, logger="single_instance_build")
        single_instance_build(build_stand_in)()
        messages = [record.getMessage() for record in caplog.records]
        assert messages == [
            "support.build_stand_in: hiding WORLD_SIZE",
            "support.build_stand_in: restored WORLD_SIZE",
        ]
        assert all(record.name == "single_instance_build" for record in caplog.records)
        assert "secret-looking-value" not in caplog.text

    def test_partial_is_logged_under_its_function_name(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        caplog.set_level(logging.DEBUG, logger="single_instance_build")
        single_instance_build(functools.partial(StandInModel, "p"))()
        assert caplog.records[0].getMessage() == "support.StandInModel: hiding WORLD_SIZE"

    def test_subscripted_generic_is_logged_under_its_class(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        caplog.set_level(logging.DEBUG, logger="single_instance_build")
        GenericModel[int]()
        assert caplog.records[0].getMessage() == (f"{__name__}.GenericModel: hiding WORLD_SIZE")

    def test_silent_above_debug(self, caplog: pytest.LogCaptureFixture) -> None:
        caplog.set_level(logging.INFO, logger="single_instance_build")
        single_instance_build(seen)()
        assert caplog.records == []


T = TypeVar("T")


@single_instance_build
class GenericModel(Generic[T]):
    def __init__(self) -> None:
        self.seen_world_size = seen()


class AsyncCallable:
    async def __call__(self, value: int = 0) -> tuple[int, str | None]:
        await asyncio.sleep(0)
        return value, seen()

    async def method(self, value: int = 0) -> tuple[int, str | None]:
        await asyncio.sleep(0)
        return value, seen()


class GeneratorCallable:
    def __call__(self) -> Iterator[str | None]:
        yield seen()


class AsyncGeneratorCallable:
    async def __call__(self) -> AsyncIterator[str | None]:
        yield seen()


async def takes_class(cls: type, value: int) -> tuple[int, str | None]:
    await asyncio.sleep(0)
    return value, seen()


class AsyncWrappers:
    """Async targets inside class and static method wrappers, guarded from outside."""

    static_partial = single_instance_build(staticmethod(functools.partial(AsyncCallable(), 1)))
    static_object = single_instance_build(staticmethod(AsyncCallable()))
    class_partial = single_instance_build(classmethod(functools.partial(takes_class, value=1)))


def run_async(guarded: Any) -> Any:
    return asyncio.run(guarded())


ASYNC_SHAPES: list[Any] = [
    functools.partial(AsyncCallable(), 1),
    functools.partial(functools.partial(AsyncCallable()), 1),
    functools.partial(AsyncCallable().method, 1),
    functools.partial(functools.partial(AsyncCallable().method), 1),
    functools.partial(AsyncCallable().__call__, 1),
]
ASYNC_IDS = [
    "partial-of-async-callable",
    "partial-of-partial",
    "partial-of-bound-async-method",
    "partial-of-partial-of-bound-method",
    "partial-of-bound-async-call",
]
GENERATOR_SHAPES: list[Any] = [
    GeneratorCallable(),
    AsyncGeneratorCallable(),
    functools.partial(GeneratorCallable()),
    functools.partial(functools.partial(AsyncGeneratorCallable())),
    GeneratorCallable().__call__,
    functools.partial(GeneratorCallable().__call__),
    staticmethod(GeneratorCallable()),
    classmethod(functools.partial(AsyncGeneratorCallable())),
]
GENERATOR_IDS = [
    "generator-call",
    "async-generator-call",
    "partial-of-generator-call",
    "partial-of-partial-of-async-generator-call",
    "bound-generator-call",
    "partial-of-bound-generator-call",
    "staticmethod-of-generator-call",
    "classmethod-of-partial-of-async-generator-call",
]


@pytest.mark.usefixtures("world_size")
class TestNoSilentBypass:
    def test_subscripted_generic_class_builds_guarded(self) -> None:
        assert GenericModel[int]().seen_world_size is None
        assert isinstance(GenericModel[int](), GenericModel)

    @pytest.mark.parametrize("target", ASYNC_SHAPES, ids=ASYNC_IDS)
    def test_async_shapes_run_their_body_hidden(self, target: Any) -> None:
        guarded = single_instance_build(target)
        assert run_async(guarded) == (1, None)
        assert os.environ["WORLD_SIZE"] == "2"

    @pytest.mark.parametrize("name", ["static_partial", "static_object", "class_partial"])
    @pytest.mark.parametrize("holder", [AsyncWrappers, AsyncWrappers()], ids=["class", "instance"])
    def test_async_shapes_in_method_wrappers_run_their_body_hidden(
        self, holder: Any, name: str
    ) -> None:
        _, seen_inside = run_async(getattr(holder, name))
        assert seen_inside is None
        assert os.environ["WORLD_SIZE"] == "2"

    @pytest.mark.parametrize("target", GENERATOR_SHAPES, ids=GENERATOR_IDS)
    def test_generator_shapes_are_refused_when_guarded(self, target: Any) -> None:
        with pytest.raises(TypeError, match="cannot guard generator function"):
            single_instance_build(target)

    def test_class_and_static_method_constructors_of_a_decorated_class_run_guarded(self) -> None:
        assert DecoratedModel.from_pretrained("p").seen_world_size is None
        assert DecoratedModel.from_static("p").seen_world_size is None
        assert is_guarded(DecoratedModel.from_pretrained)
        assert os.environ["WORLD_SIZE"] == "2"

    def test_instance_methods_and_subclasses_stay_unguarded(self) -> None:
        class Sub(DecoratedModel):
            def describe(self) -> str | None:
                return seen()

        assert Sub.from_pretrained("p").seen_world_size == "2"
        assert not is_guarded(Sub.from_pretrained)
        assert not is_guarded(DecoratedModel("p").from_pretrained)

    def test_generator_class_method_is_reached_unguarded(self) -> None:
        @single_instance_build
        class Streaming:
            @classmethod
            def stream(cls) -> Iterator[str | None]:
                yield seen()

        assert list(Streaming.stream()) == ["2"]


class TestAsyncCallTime:
    def test_wrong_arguments_raise_at_call_time(self) -> None:
        async def build(path: str) -> str:
            return path

        guarded = single_instance_build(build)
        with pytest.raises(TypeError, match="path"):
            guarded()  # type: ignore[call-arg,unused-coroutine]
        with pytest.raises(TypeError, match="unexpected keyword"):
            guarded("p", extra=1)  # type: ignore[call-arg,unused-coroutine]

    def test_wrong_arguments_of_an_async_method_raise_at_call_time(self) -> None:
        class Loader:
            @single_instance_build
            async def load(self, path: str) -> str:
                return path

        with pytest.raises(TypeError, match="path"):
            Loader().load()  # type: ignore[call-arg,unused-coroutine]

    def test_unawaited_coroutine_warns_once_under_the_users_function_name(self) -> None:
        async def build_model() -> None:
            pass

        guarded = single_instance_build(build_model)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            coroutine: Any = guarded()
            assert coroutine.__qualname__ == build_model.__qualname__
            del coroutine
            gc.collect()
        messages = [str(warning.message) for warning in caught]
        assert messages == [f"coroutine '{build_model.__qualname__}' was never awaited"]

    def test_closing_an_unstarted_guarded_coroutine_warns_nothing(self) -> None:
        async def build_model() -> None:
            pass

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            coroutine = single_instance_build(build_model)()
            coroutine.close()
            del coroutine
            gc.collect()
        assert caught == []

    def test_guarded_coroutine_functions_and_methods_are_still_ones(self) -> None:
        async def build() -> None:
            pass

        class Loader:
            @single_instance_build
            async def load(self) -> None:
                pass

        assert inspect.iscoroutinefunction(single_instance_build(build))
        assert inspect.iscoroutinefunction(single_instance_build(functools.partial(build)))
        assert inspect.iscoroutinefunction(Loader().load)
        assert inspect.iscoroutinefunction(Loader.load)

    @pytest.mark.usefixtures("world_size")
    def test_async_class_method_of_a_decorated_class_runs_hidden(self) -> None:
        @single_instance_build
        class Loader:
            @classmethod
            async def load(cls) -> str | None:
                await asyncio.sleep(0)
                return seen()

        assert inspect.iscoroutinefunction(Loader.load)
        assert asyncio.run(Loader.load()) is None
