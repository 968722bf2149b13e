"""Guarding registries of model factories: guard_registry and GuardedRegistry."""

from __future__ import annotations

import copy
import functools
import multiprocessing
import os
import pickle
import sys
from collections import UserDict
from collections.abc import Callable, Iterator, MutableMapping
from typing import Any

import pytest

from single_instance_build import GuardedRegistry, guard_registry, is_guarded, single_instance_build

from support import StandInModel, build_guarded, build_in_worker, build_stand_in

Factory = Callable[..., Any]


def vlm_registry() -> dict[str, Any]:
    """A supported_VLM-shaped registry: groups of partials merged with update()."""
    qwen_series = {
        "Qwen-Tiny": functools.partial(StandInModel, model_path="Qwen/Tiny"),
        "Qwen-Tiny-Chat": functools.partial(StandInModel, model_path="Qwen/Tiny-Chat", chat=True),
    }
    llava_series = {"LLaVA-Tiny": functools.partial(StandInModel, model_path="llava/tiny")}
    supported: dict[str, Any] = {}
    for group in (qwen_series, llava_series):
        supported.update(group)
    supported["builder"] = build_stand_in
    return supported


def seen(entry: Factory, **kwargs: Any) -> str | None:
    model: StandInModel = entry(**kwargs)
    return model.seen_world_size


class NoisyMapping(MutableMapping[str, Any]):
    """A mapping that is not a dict, and whose writes can be made to fail."""

    def __init__(self, data: dict[str, Any], fail_on: str | None = None) -> None:
        self.data = data
        self.fail_on = fail_on

    def __getitem__(self, key: str) -> Any:
        return self.data[key]

    def __setitem__(self, key: str, value: Any) -> None:
        if key == self.fail_on:
            raise OSError(f"cannot write {key}")
        self.data[key] = value

    def __delitem__(self, key: str) -> None:
        del self.data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.data)

    def __len__(self) -> int:
        return len(self.data)


@pytest.mark.usefixtures("world_size")
class TestGuardRegistry:
    def test_every_entry_builds_with_variable_hidden(self) -> None:
        registry = guard_registry(vlm_registry())
        assert all(is_guarded(entry) for entry in registry.values())
        assert [seen(entry) for entry in registry.values()] == [None] * len(registry)
        assert os.environ["WORLD_SIZE"] == "2"

    def test_returns_the_same_mapping_with_the_same_keys(self) -> None:
        registry = vlm_registry()
        keys = list(registry)
        assert guard_registry(registry) is registry
        assert list(registry) == keys

    def test_env_vars_option(self) -> None:
        os.environ["RANK"] = "1"
        registry = guard_registry(vlm_registry(), env_vars=["WORLD_SIZE", "RANK"])
        model = registry["Qwen-Tiny"]()
        assert (model.seen_world_size, model.seen_rank) == (None, None)

    def test_guarding_twice_keeps_the_same_objects(self) -> None:
        registry = guard_registry(vlm_registry())
        entries = dict(registry)
        guard_registry(registry)
        assert all(registry[key] is entries[key] for key in registry)

    def test_guarding_for_more_variables_does_not_stack(self) -> None:
        registry = guard_registry(vlm_registry())
        original = registry["Qwen-Tiny"].__wrapped__
        guard_registry(registry, env_vars="RANK")
        assert registry["Qwen-Tiny"].__wrapped__ is original
        assert is_guarded(registry["Qwen-Tiny"], env_vars=["WORLD_SIZE", "RANK"])

    def test_already_decorated_entries_are_kept(self) -> None:
        decorated = single_instance_build(build_stand_in)
        registry = guard_registry({"decorated": decorated})
        assert registry["decorated"] is decorated

    @pytest.mark.parametrize("bad", [None, "Qwen/Tiny", {"class": "Qwen"}, 3], ids=repr)
    def test_non_callable_entry_raises_naming_its_key_and_changes_nothing(self, bad: Any) -> None:
        registry: dict[Any, Any] = vlm_registry()
        registry[("odd", "key")] = bad
        before = dict(registry)
        with pytest.raises(TypeError, match=r"registry entry \('odd', 'key'\) is not callable"):
            guard_registry(registry)
        assert registry == before
        assert all(registry[key] is before[key] for key in before)

    def test_generator_entry_raises_naming_its_key(self) -> None:
        def stream() -> Any:
            yield None

        with pytest.raises(TypeError, match="registry entry 'stream': cannot guard generator"):
            guard_registry({"stream": stream})

    def test_error_message_does_not_show_the_value(self) -> None:
        class Config:
            def __repr__(self) -> str:
                return "Config(key='sk-secret')"

        with pytest.raises(TypeError) as info:
            guard_registry({"api": Config()})
        assert "sk-secret" not in str(info.value)
        assert "Config" in str(info.value)

    def test_any_mutable_mapping_works(self) -> None:
        registry = guard_registry(NoisyMapping(vlm_registry()))
        assert seen(registry["LLaVA-Tiny"]) is None
        user_dict = guard_registry(UserDict(vlm_registry()))
        assert seen(user_dict["LLaVA-Tiny"]) is None

    def test_write_failing_half_way_rolls_back(self) -> None:
        data = vlm_registry()
        before = dict(data)
        with pytest.raises(OSError, match="cannot write LLaVA-Tiny"):
            guard_registry(NoisyMapping(data, fail_on="LLaVA-Tiny"))
        assert all(data[key] is before[key] for key in before)

    def test_bad_env_vars_raise_before_anything_changes(self) -> None:
        registry = vlm_registry()
        before = dict(registry)
        with pytest.raises(ValueError, match="non-empty str"):
            guard_registry(registry, env_vars="A=B")
        assert registry == before


@pytest.mark.usefixtures("world_size")
class TestGuardedPartial:
    """Code written for partials (VLMEvalKit's run.py) keeps working on guarded entries."""

    def test_reads_like_a_partial(self) -> None:
        entry = guard_registry(vlm_registry())["Qwen-Tiny-Chat"]
        assert isinstance(entry, functools.partial)
        assert hasattr(entry, "keywords")
        assert entry.func is StandInModel
        assert entry.func.__module__ == "support"
        assert entry.args == ()
        assert entry.keywords == {"model_path": "Qwen/Tiny-Chat", "chat": True}

    def test_editing_keywords_in_place_changes_the_next_build(self) -> None:
        entry = guard_registry(vlm_registry())["Qwen-Tiny"]
        entry.keywords["model_path"] = "/local/override"
        entry.keywords["max_new_tokens"] = 16
        model = entry()
        assert model.model_path == "/local/override"
        assert model.kwargs == {"max_new_tokens": 16}
        assert model.seen_world_size is None

    def test_call_keywords_override_partial_keywords(self) -> None:
        entry = guard_registry(vlm_registry())["Qwen-Tiny"]
        assert entry(model_path="other").model_path == "other"


@pytest.mark.usefixtures("world_size")
class TestCopyAndPickle:
    def test_module_level_decorated_function_pickles_by_reference(self) -> None:
        assert pickle.loads(pickle.dumps(build_guarded)) is build_guarded
        assert seen(pickle.loads(pickle.dumps(build_guarded))) is None

    def test_module_level_decorated_class_pickles_by_reference(self) -> None:
        assert pickle.loads(pickle.dumps(GuardedModel)) is GuardedModel

    @pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
    def test_entry_pickles_by_value_and_stays_guarded(self, protocol: int) -> None:
        entry = guard_registry(vlm_registry(), env_vars=("WORLD_SIZE", "RANK"))["Qwen-Tiny"]
        restored = pickle.loads(pickle.dumps(entry, protocol=protocol))
        assert restored is not entry
        assert is_guarded(restored, env_vars=("WORLD_SIZE", "RANK"))
        assert restored.keywords == entry.keywords
        assert seen(restored) is None

    @pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
    def test_instances_of_a_decorated_class_pickle(self, protocol: int) -> None:
        model = GuardedModel("p", dtype="bf16")
        restored = pickle.loads(pickle.dumps(model, protocol=protocol))
        assert type(restored) is type(model) is GuardedModel.__wrapped__  # type: ignore[attr-defined]
        assert isinstance(restored, GuardedModel)
        assert (restored.model_path, restored.kwargs) == ("p", {"dtype": "bf16"})
        assert restored.seen_world_size is None

    def test_instances_of_a_decorated_class_copy(self) -> None:
        model = GuardedModel("p", dtype="bf16")
        for duplicate in (copy.copy(model), copy.deepcopy(model)):
            assert type(duplicate) is type(model)
            assert duplicate.kwargs == {"dtype": "bf16"}

    def test_instance_whose_reduce_calls_its_class_is_rebuilt_through_the_guard(self) -> None:
        """Unpickling builds such an instance again, so the variables are hidden meanwhile."""
        model = RebuiltOnUnpickle("p")
        assert model.seen_world_size is None
        restored = pickle.loads(pickle.dumps(model))
        assert (restored.model_path, restored.seen_world_size) == ("p", None)

    def test_instances_of_a_class_guarded_elsewhere_pickle_by_its_own_name(self) -> None:
        guard_registry({"plain": StandInModel})
        restored = pickle.loads(pickle.dumps(StandInModel("p")))
        assert type(restored) is StandInModel

    def test_instances_pickle_when_init_is_decorated_instead_of_the_class(self) -> None:
        """The README's advice for classes whose instances must be pickled."""
        model = ModelWithGuardedInit("p")
        assert model.seen_world_size is None
        restored = pickle.loads(pickle.dumps(model))
        assert (type(restored), restored.model_path) == (ModelWithGuardedInit, "p")

    def test_callable_object_pickles_by_value(self) -> None:
        guarded = single_instance_build(Builder("x"))
        restored = pickle.loads(pickle.dumps(guarded))
        assert is_guarded(restored)
        assert restored().seen_world_size is None

    def test_copy_and_deepcopy_of_an_entry(self) -> None:
        entry = guard_registry(vlm_registry())["Qwen-Tiny"]
        shallow, deep = copy.copy(entry), copy.deepcopy(entry)
        for duplicate in (shallow, deep):
            assert duplicate is not entry
            assert is_guarded(duplicate)
            assert seen(duplicate) is None
        deep.keywords["model_path"] = "changed"
        assert entry.keywords["model_path"] == "Qwen/Tiny"

    def test_copy_of_a_decorated_function_is_itself(self) -> None:
        guarded = single_instance_build(build_stand_in)
        assert copy.copy(guarded) is guarded
        assert copy.deepcopy(guarded) is guarded

    def test_deepcopy_of_a_guarded_registry(self) -> None:
        registry = GuardedRegistry(vlm_registry(), env_vars=("WORLD_SIZE", "RANK"))
        duplicate = copy.deepcopy(registry)
        assert type(duplicate) is GuardedRegistry
        assert duplicate.env_vars == registry.env_vars
        assert duplicate.keys() == registry.keys()
        assert duplicate["Qwen-Tiny"] is not registry["Qwen-Tiny"]
        assert all(is_guarded(entry) for entry in duplicate.values())
        assert seen(duplicate["Qwen-Tiny"]) is None

    def test_deepcopy_of_a_dict_guarded_in_place(self) -> None:
        duplicate = copy.deepcopy(guard_registry(vlm_registry()))
        assert all(is_guarded(entry) for entry in duplicate.values())

    def test_pickle_of_a_guarded_registry(self) -> None:
        registry = GuardedRegistry(vlm_registry(), env_vars="RANK")
        restored = pickle.loads(pickle.dumps(registry))
        assert type(restored) is GuardedRegistry
        assert restored.env_vars == ("RANK",)
        assert restored["Qwen-Tiny"].keywords == {"model_path": "Qwen/Tiny"}

    def test_entry_built_in_a_spawned_worker_hides_variable_there(self) -> None:
        entry = guard_registry(vlm_registry())["Qwen-Tiny"]
        with multiprocessing.get_context("spawn").Pool(1) as pool:
            seen_in_worker, path, after = pool.apply(build_in_worker, (entry,))
        assert (seen_in_worker, path, after) == (None, "Qwen/Tiny", "2")


class Builder:
    """A picklable callable object."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __call__(self) -> StandInModel:
        return StandInModel(self.path)


@single_instance_build
class GuardedModel(StandInModel):
    """A module-level decorated class."""


@single_instance_build
class RebuiltOnUnpickle(StandInModel):
    """A module-level decorated class whose __reduce__ calls the class again."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.model_path,))


class ModelWithGuardedInit:
    """A class whose __init__, not the class itself, is decorated."""

    @single_instance_build
    def __init__(self, model_path: str) -> None:
        self.model_path = model_path
        self.seen_world_size = os.environ.get("WORLD_SIZE")


class TestGuardedRegistry:
    def test_is_a_dict(self) -> None:
        registry = GuardedRegistry(vlm_registry())
        assert isinstance(registry, dict)
        assert registry.keys() == vlm_registry().keys()

    @pytest.mark.parametrize(
        "add",
        [
            lambda r, f: r.__setitem__("new", f),
            lambda r, f: r.update({"new": f}),
            lambda r, f: r.update([("new", f)]),
            lambda r, f: r.update(new=f),
            lambda r, f: r.setdefault("new", f),
            lambda r, f: r.__ior__({"new": f}),
        ],
        ids=["setitem", "update-mapping", "update-pairs", "update-keywords", "setdefault", "ior"],
    )
    @pytest.mark.usefixtures("world_size")
    def test_every_way_in_guards_the_value(
        self, add: Callable[[GuardedRegistry[str, Factory], Factory], object]
    ) -> None:
        registry: GuardedRegistry[str, Factory] = GuardedRegistry()
        add(registry, functools.partial(StandInModel, "new"))
        assert is_guarded(registry["new"])
        assert seen(registry["new"]) is None

    def test_constructor_update_loop_as_in_vlmevalkit(self) -> None:
        registry: GuardedRegistry[str, Factory] = GuardedRegistry()
        for group in ({"a": build_stand_in}, {"b": StandInModel}):
            registry.update(group)
        assert all(is_guarded(entry) for entry in registry.values())

    def test_or_and_ror_return_guarded_registries(self) -> None:
        registry = GuardedRegistry({"a": build_stand_in}, env_vars="RANK")
        for merged in (registry | {"b": StandInModel}, {"b": StandInModel} | registry):
            assert type(merged) is GuardedRegistry
            assert merged.env_vars == ("RANK",)
            assert is_guarded(merged["b"], env_vars="RANK")
        assert "b" not in registry

    def test_fromkeys_guards(self) -> None:
        registry = GuardedRegistry.fromkeys(["a", "b"], build_stand_in)
        assert type(registry) is GuardedRegistry
        assert is_guarded(registry["a"])

    def test_copy_keeps_settings_and_entries(self) -> None:
        registry = GuardedRegistry({"a": build_stand_in}, env_vars=("WORLD_SIZE", "RANK"))
        duplicate = registry.copy()
        assert type(duplicate) is GuardedRegistry
        assert duplicate.env_vars == ("WORLD_SIZE", "RANK")
        assert duplicate["a"] is registry["a"]

    @pytest.mark.parametrize(
        "add",
        [
            lambda r: r.__setitem__("bad", 3),
            lambda r: r.update({"good": build_stand_in, "bad": 3}),
            lambda r: r.update([("good", build_stand_in), ("bad", 3)]),
            lambda r: r.update(good=build_stand_in, bad=3),
            lambda r: r.setdefault("bad", 3),
            lambda r: r.setdefault("bad"),
            lambda r: r.__ior__({"good": build_stand_in, "bad": 3}),
            lambda r: GuardedRegistry[str, Any]({"good": build_stand_in, "bad": 3}),
        ],
        ids=[
            "setitem",
            "update-mapping",
            "update-pairs",
            "update-keywords",
            "setdefault",
            "setdefault-no-default",
            "ior",
            "constructor",
        ],
    )
    def test_non_callable_raises_naming_key_and_adds_nothing(
        self, add: Callable[[GuardedRegistry[str, Any]], object]
    ) -> None:
        registry: GuardedRegistry[str, Any] = GuardedRegistry({"kept": build_stand_in})
        with pytest.raises(TypeError, match="registry entry 'bad' is not callable"):
            add(registry)
        assert list(registry) == ["kept"]

    def test_bad_env_vars_raise(self) -> None:
        with pytest.raises(TypeError, match="env_vars"):
            GuardedRegistry(env_vars=3)  # type: ignore[call-overload]

    def test_repr_shows_settings(self) -> None:
        assert repr(GuardedRegistry(env_vars="RANK")) == "GuardedRegistry({}, env_vars=('RANK',))"

    def test_update_keeps_dict_errors_for_malformed_pairs(self) -> None:
        registry: GuardedRegistry[str, Any] = GuardedRegistry()
        with pytest.raises(ValueError, match="length"):
            registry.update([("a", build_stand_in, "extra")])  # type: ignore[list-item]
        assert registry == {}


def stream_tokens(api_key: str) -> Any:
    """A generator function: it cannot be guarded."""
    yield api_key


class BrokenRepr:
    def __repr__(self) -> str:
        raise RuntimeError("repr failed")


class WriteOnceMapping(NoisyMapping):
    """A mapping whose writes fail for one key, and whose rollback writes fail too."""

    def __init__(self, data: dict[str, Any], fail_on: str) -> None:
        super().__init__(data, fail_on)
        self.written: set[str] = set()

    def __setitem__(self, key: str, value: Any) -> None:
        if key in self.written:
            raise KeyError(f"{key} is write-once")
        super().__setitem__(key, value)
        self.written.add(key)


class TestErrorsNeverShowValues:
    def test_partial_of_a_generator_function_error_hides_its_keywords(self) -> None:
        entry = functools.partial(stream_tokens, api_key="sk-secret-123")
        for make in (guard_registry, GuardedRegistry):
            with pytest.raises(TypeError, match="cannot guard generator function") as info:
                make({"stream": entry})
            message = str(info.value)
            assert "sk-secret-123" not in message
            assert "test_registry.stream_tokens" in message
            assert "registry entry 'stream'" in message

    def test_non_callable_error_names_the_type_only(self) -> None:
        with pytest.raises(TypeError, match="of type str") as info:
            GuardedRegistry[str, Any]({"api": "sk-secret-123"})
        assert "sk-secret-123" not in str(info.value)


class TestSmallRegistryPoints:
    def test_key_whose_repr_raises_gives_the_documented_type_error(self) -> None:
        with pytest.raises(TypeError, match="BrokenRepr whose repr"):
            guard_registry({BrokenRepr(): 3})
        with pytest.raises(TypeError, match="BrokenRepr whose repr"):
            GuardedRegistry[Any, Any]({BrokenRepr(): 3})

    def test_failed_rollback_keeps_the_original_error_and_reports_both(self) -> None:
        data = vlm_registry()
        with pytest.raises(OSError, match="cannot write LLaVA-Tiny") as info:
            guard_registry(WriteOnceMapping(data, fail_on="LLaVA-Tiny"))
        if sys.version_info >= (3, 11):
            report = "\n".join(info.value.__notes__)
        else:  # pragma: no cover -- Python 3.10 has no notes
            assert isinstance(info.value.__context__, RuntimeError)
            report = str(info.value.__context__)
        assert "'Qwen-Tiny', 'Qwen-Tiny-Chat'" in report
        assert "KeyError" in report
        assert "may be partly guarded" in report

    @pytest.mark.usefixtures("world_size")
    def test_keyword_entries_as_dict_takes_them(self) -> None:
        registry: GuardedRegistry[str, Factory] = GuardedRegistry(a=build_stand_in)
        assert list(registry) == ["a"]
        merged: GuardedRegistry[str, Factory] = GuardedRegistry(
            {"b": StandInModel}, a=build_stand_in
        )
        assert list(merged) == ["b", "a"]
        assert all(is_guarded(entry) for entry in merged.values())
        assert seen(registry["a"]) is None
