"""Guarded methods, wider guards and decorated classes copy and pickle, without global effects."""

from __future__ import annotations

import abc
import copy
import copyreg
import functools
import gc
import multiprocessing
import os
import pickle
import weakref
from collections.abc import Callable
from typing import Any

import pytest

from single_instance_build import GuardedRegistry, is_guarded, single_instance_build

from support import DecoratedModel, GuardedMethods, StandInModel, build_guarded, build_in_worker

DUPLICATORS: list[Callable[[Any], Any]] = [
    copy.copy,
    copy.deepcopy,
    lambda obj: pickle.loads(pickle.dumps(obj)),
    lambda obj: pickle.loads(pickle.dumps(obj, protocol=0)),
]
DUPLICATOR_IDS = ["copy", "deepcopy", "pickle", "pickle-protocol-0"]

BOUND: list[Callable[[], Any]] = [
    lambda: GuardedMethods("p").build,
    lambda: GuardedMethods.from_config,
    lambda: GuardedMethods("p").from_config,
    lambda: GuardedMethods.static,
    lambda: GuardedMethods("p").static,
]
BOUND_IDS = ["obj.build", "Cls.from_config", "obj.from_config", "Cls.static", "obj.static"]


@pytest.mark.usefixtures("world_size")
class TestBoundGuardedMethodsCopyAndPickle:
    @pytest.mark.parametrize("duplicate", DUPLICATORS, ids=DUPLICATOR_IDS)
    @pytest.mark.parametrize("make", BOUND, ids=BOUND_IDS)
    def test_duplicate_is_guarded_and_builds_hidden(
        self, make: Callable[[], Any], duplicate: Callable[[Any], Any]
    ) -> None:
        restored = duplicate(make())
        assert is_guarded(restored)
        assert restored().seen_world_size is None
        assert os.environ["WORLD_SIZE"] == "2"

    def test_bound_method_keeps_its_instance_through_pickle(self) -> None:
        restored = pickle.loads(pickle.dumps(GuardedMethods("kept").build))
        assert restored().model_path == "kept"

    def test_deepcopy_binds_to_a_copy_of_the_instance(self) -> None:
        obj = GuardedMethods("p")
        duplicate: Any = copy.deepcopy(obj.build)
        assert duplicate.__self__ is not obj
        assert duplicate.__self__.model_path == "p"

    def test_registry_holding_a_bound_method_deep_copies(self) -> None:
        registry = GuardedRegistry({"bound": GuardedMethods("p").build})
        duplicate = copy.deepcopy(registry)
        assert duplicate["bound"]().seen_world_size is None

    def test_registry_holding_bound_methods_builds_in_a_spawned_worker(self) -> None:
        registry: GuardedRegistry[str, Callable[[], StandInModel]] = GuardedRegistry(
            {"obj": GuardedMethods("p").build, "cls": GuardedMethods.from_config}
        )
        with multiprocessing.get_context("spawn").Pool(1) as pool:
            results = [pool.apply(build_in_worker, (entry,)) for entry in registry.values()]
        assert results == [(None, "p", "2"), (None, "stand-in", "2")]


@pytest.mark.usefixtures("world_size")
class TestWiderGuardOfADecoratedCallablePickles:
    def test_function_guarded_again_for_more_variables(self) -> None:
        wider = single_instance_build(build_guarded, env_vars=("WORLD_SIZE", "RANK"))
        restored = pickle.loads(pickle.dumps(wider))
        assert is_guarded(restored, env_vars=("WORLD_SIZE", "RANK"))
        assert restored().seen_world_size is None

    def test_readme_registry_with_more_variables_holding_a_decorated_class(self) -> None:
        registry: GuardedRegistry[str, Any] = GuardedRegistry(
            env_vars=("WORLD_SIZE", "LOCAL_WORLD_SIZE")
        )
        registry["model"] = DecoratedModel
        restored = pickle.loads(pickle.dumps(registry))
        assert is_guarded(restored["model"], env_vars=("WORLD_SIZE", "LOCAL_WORLD_SIZE"))
        assert restored["model"]("p").seen_world_size is None
        assert copy.deepcopy(registry)["model"]("p").seen_world_size is None

    def test_wider_guard_builds_in_a_spawned_worker(self) -> None:
        wider = single_instance_build(build_guarded, env_vars=("WORLD_SIZE", "RANK"))
        with multiprocessing.get_context("spawn").Pool(1) as pool:
            seen = pool.apply(build_in_worker, (wider,))
        assert seen == (None, "stand-in", "2")


@pytest.mark.usefixtures("world_size")
class TestWhatIsReachedThroughADecoratedClassPickles:
    @pytest.mark.parametrize("duplicate", DUPLICATORS, ids=DUPLICATOR_IDS)
    @pytest.mark.parametrize("name", ["from_pretrained", "from_static"])
    def test_class_and_static_method_constructors(
        self, name: str, duplicate: Callable[[Any], Any]
    ) -> None:
        restored = duplicate(getattr(DecoratedModel, name))
        assert is_guarded(restored)
        assert restored("p").seen_world_size is None

    def test_constructor_builds_in_a_spawned_worker(self) -> None:
        entry = functools.partial(DecoratedModel.from_pretrained, "p")
        with multiprocessing.get_context("spawn").Pool(1) as pool:
            seen = pool.apply(build_in_worker, (entry,))
        assert seen == (None, "p", "2")


class CustomMeta(type):
    """A metaclass, guarded in a test."""


class UsesCustomMeta(metaclass=CustomMeta):
    pass


class UsesABCMeta(abc.ABC):  # noqa: B024 -- only its metaclass matters here
    pass


class WithOwnReduceEx(StandInModel):
    def __reduce_ex__(self, protocol: Any) -> tuple[Any, ...]:
        return (WithOwnReduceEx, (self.model_path + "+own",))


class WithOwnReduce(StandInModel):
    def __reduce__(self) -> tuple[Any, ...]:
        return (WithOwnReduce, (self.model_path + "+reduce",))


class WithGetState(StandInModel):
    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "model_path": self.model_path + "+state"}


class Slotted:
    __slots__ = ("model_path",)

    def __init__(self, model_path: str) -> None:
        self.model_path = model_path


class SubOfDecorated(DecoratedModel):
    pass


class TestGuardingAClassHasNoGlobalSideEffects:
    @pytest.mark.parametrize("meta", [CustomMeta, abc.ABCMeta], ids=["custom", "ABCMeta"])
    def test_guarding_a_metaclass_keeps_its_classes_picklable(self, meta: type) -> None:
        single_instance_build(meta)
        for cls in (UsesCustomMeta, UsesABCMeta):
            assert pickle.loads(pickle.dumps(cls)) is cls
            assert copy.deepcopy(cls) is cls

    def test_nothing_is_registered_with_copyreg(self) -> None:
        before = dict(copyreg.dispatch_table)
        single_instance_build(type("Dynamic", (), {}))
        assert copyreg.dispatch_table == before

    def test_a_guarded_dynamic_class_is_freed(self) -> None:
        def make() -> weakref.ref[type]:
            cls = type("Dynamic", (StandInModel,), {})
            guarded: Any = single_instance_build(cls)
            guarded("p")
            copy.deepcopy(cls("p"))
            return weakref.ref(cls)

        ref = make()
        gc.collect()
        assert ref() is None

    @pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
    @pytest.mark.parametrize(
        ("cls", "path"),
        [
            (WithOwnReduceEx, "p+own"),
            (WithOwnReduce, "p+reduce"),
            (WithGetState, "p+state"),
            (StandInModel, "p"),
        ],
        ids=["own-reduce-ex", "own-reduce", "getstate", "plain"],
    )
    def test_classes_guarded_elsewhere_pickle_as_before(
        self, cls: type[StandInModel], path: str, protocol: int
    ) -> None:
        single_instance_build(cls)
        restored = pickle.loads(pickle.dumps(cls("p"), protocol=protocol))
        assert (type(restored), restored.model_path) == (cls, path)
        assert copy.deepcopy(cls("p")).model_path == path

    def test_slotted_class_guarded_elsewhere_pickles(self) -> None:
        single_instance_build(Slotted)
        restored = pickle.loads(pickle.dumps(Slotted("p")))
        assert (type(restored), restored.model_path) == (Slotted, "p")
        assert copy.copy(Slotted("q")).model_path == "q"

    @pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
    def test_instances_of_a_decorated_class_and_its_subclass_pickle(self, protocol: int) -> None:
        for cls in (DecoratedModel, SubOfDecorated):
            restored = pickle.loads(pickle.dumps(cls("p"), protocol=protocol))
            assert isinstance(restored, cls)
            assert restored.model_path == "p"
            assert copy.deepcopy(cls("q")).model_path == "q"
