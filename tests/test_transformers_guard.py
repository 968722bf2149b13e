"""guard_transformers() hides WORLD_SIZE inside Transformers' from_pretrained, and only there.

These tests use the real Transformers of the [torch] extra and a tiny Llama
saved to a temporary directory; no torchrun. Without torchrun, a visible
``WORLD_SIZE=2`` makes ``from_pretrained(..., device_map="auto")`` of
Transformers 4.50.0 to 4.53.3 try to start tensor parallelism and raise
``OSError`` (``RANK`` is unset): that is the control every guarded load is
compared with. The torchrun proof is in ``tests/integration``.
"""

from __future__ import annotations

import copy
import functools
import inspect
import os
import pickle
import random
import threading
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import pytest

from single_instance_build import (
    _from_pretrained,
    guard_transformers,
    is_guarded,
    single_instance_env,
    unguard_transformers,
)
from single_instance_build import _transformers as source

from support import require, run_isolated

pytestmark = pytest.mark.transformers


@pytest.fixture(scope="module")
def tf() -> ModuleType:
    require("torch", "transformers", "accelerate")
    import transformers.modeling_utils

    module: ModuleType = transformers
    return module


@pytest.fixture(scope="module")
def tiny_model(tf: ModuleType, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A tiny random Llama saved once for the module; no download."""
    import torch

    torch.manual_seed(0)
    config = tf.LlamaConfig(
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        vocab_size=32,
    )
    path = tmp_path_factory.mktemp("tiny-llama")
    tf.LlamaForCausalLM(config).save_pretrained(path)
    return str(path)


@pytest.fixture(autouse=True)
def _unguard() -> Iterator[None]:
    yield
    unguard_transformers()


@pytest.fixture
def original(tf: ModuleType) -> Any:
    """The classmethod object Transformers put in PreTrainedModel.__dict__."""
    found = vars(tf.PreTrainedModel)["from_pretrained"]
    assert isinstance(found, classmethod), "a previous test left a guard installed"
    return found


@pytest.fixture
def recording(tf: ModuleType) -> Any:
    """A Llama class that records WORLD_SIZE as its __init__ and its callers see it."""

    base: Any = tf.LlamaForCausalLM

    class RecordingLlama(base):  # type: ignore[misc]  # subclassing Any: transformers is untyped
        seen_in_init: list[str | None] = []  # noqa: RUF012 -- a record, by design
        seen_by_caller: list[str | None] = []  # noqa: RUF012

        def __init__(self, config: Any, *args: Any, **kwargs: Any) -> None:
            self.seen_in_init.append(os.environ.get("WORLD_SIZE"))
            super().__init__(config, *args, **kwargs)

        @classmethod
        def from_pretrained(cls, *args: Any, **kwargs: Any) -> Any:
            """An override calling super(), as some model classes have."""
            cls.seen_by_caller.append(os.environ.get("WORLD_SIZE"))
            return super().from_pretrained(*args, **kwargs)

    return RecordingLlama


def sharded_parameters(model: Any) -> int:
    from torch.distributed.tensor import DTensor

    return sum(isinstance(p, DTensor) for p in model.parameters())


@pytest.mark.usefixtures("world_size")
class TestControl:
    def test_unguarded_device_map_auto_switches_to_tensor_parallelism(
        self, tf: ModuleType, tiny_model: str
    ) -> None:
        """If this fails, the installed Transformers no longer has the heuristic."""
        with pytest.raises(OSError, match=r"initialize torch\.distributed"):
            tf.AutoModelForCausalLM.from_pretrained(tiny_model, device_map="auto")


@pytest.mark.usefixtures("world_size")
class TestHidesOnlyInsideFromPretrainedWithDeviceMapAuto:
    def test_auto_model_loads_full_copy_and_variable_is_back_afterwards(
        self, tf: ModuleType, tiny_model: str
    ) -> None:
        guard_transformers()
        model = tf.AutoModelForCausalLM.from_pretrained(tiny_model, device_map="auto")
        assert sharded_parameters(model) == 0
        assert os.environ["WORLD_SIZE"] == "2"

    def test_caller_outside_from_pretrained_sees_real_value(
        self, tf: ModuleType, tiny_model: str
    ) -> None:
        """A VLMEvalKit-style wrapper plans devices from WORLD_SIZE, then loads."""

        class Wrapper:
            def __init__(self, path: str) -> None:
                self.world_size = int(os.environ.get("WORLD_SIZE", 1))
                self.model = tf.AutoModelForCausalLM.from_pretrained(path, device_map="auto")

        guard_transformers()
        wrapper = Wrapper(tiny_model)
        assert wrapper.world_size == 2
        assert sharded_parameters(wrapper.model) == 0

    def test_override_calling_super_is_guarded_but_its_own_code_sees_value(
        self, recording: Any, tiny_model: str
    ) -> None:
        guard_transformers()
        recording.from_pretrained(tiny_model, device_map="auto")
        assert recording.seen_by_caller == ["2"]

    def test_model_init_inside_from_pretrained_sees_variable_hidden(
        self, recording: Any, tiny_model: str
    ) -> None:
        """The documented limit: the model's own __init__ runs inside the guarded call."""
        guard_transformers()
        recording.from_pretrained(tiny_model, device_map="auto")
        assert recording.seen_in_init == [None]

    @pytest.mark.parametrize(
        "kwargs", [{}, {"device_map": "cpu"}, {"device_map": {"": "cpu"}}], ids=repr
    )
    def test_call_that_cannot_switch_runs_untouched(
        self, recording: Any, tiny_model: str, kwargs: dict[str, Any]
    ) -> None:
        guard_transformers()
        recording.from_pretrained(tiny_model, **kwargs)
        assert recording.seen_in_init == ["2"]

    def test_explicit_tp_plan_runs_untouched(self, tf: ModuleType, tiny_model: str) -> None:
        """Transformers compares tp_plan with "auto" inside from_pretrained: the probe records."""
        seen: list[str | None] = []

        class Probe(str):
            __hash__ = str.__hash__

            def __ne__(self, other: object) -> bool:
                seen.append(os.environ.get("WORLD_SIZE"))
                return str.__ne__(self, other)

        guard_transformers()
        with pytest.raises(OSError, match=r"initialize torch\.distributed"):  # no torchrun here
            tf.LlamaForCausalLM.from_pretrained(tiny_model, tp_plan=Probe("auto"))
        assert seen
        assert set(seen) == {"2"}

    def test_composes_with_an_enclosing_scope(self, recording: Any, tiny_model: str) -> None:
        guard_transformers()
        with single_instance_env():
            recording.from_pretrained(tiny_model, device_map="auto")
            assert "WORLD_SIZE" not in os.environ
        assert recording.seen_in_init == [None]
        assert os.environ["WORLD_SIZE"] == "2"


@pytest.mark.usefixtures("world_size")
class TestReboundOsEnviron:
    def test_load_hides_variable_from_the_os_environ_current_at_the_call(
        self, tf: ModuleType, tiny_model: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """os.environ replaced by a plain dict (a test's monkeypatch): Transformers reads that."""
        replacement = dict(os.environ)
        monkeypatch.setattr(os, "environ", replacement)
        guard_transformers()
        model = tf.AutoModelForCausalLM.from_pretrained(tiny_model, device_map="auto")
        assert sharded_parameters(model) == 0
        assert replacement["WORLD_SIZE"] == "2"


class TestCanSwitch:
    @pytest.mark.parametrize(
        ("kwargs", "expected"),
        [
            ({"device_map": "auto"}, True),
            ({"device_map": "auto", "tp_plan": None, "device_mesh": None}, True),
            ({}, False),
            ({"device_map": None}, False),
            ({"device_map": "cpu"}, False),
            ({"device_map": {"": 0}}, False),
            ({"device_map": "auto", "tp_plan": "auto"}, False),
            ({"device_map": "auto", "tp_size": 2}, False),
            ({"device_map": "auto", "device_mesh": object()}, False),
            ({"device_map": "auto", "distributed_config": object()}, False),
        ],
        ids=repr,
    )
    def test_only_device_map_auto_without_parallelism_asked_for(
        self, kwargs: dict[str, Any], expected: bool
    ) -> None:
        assert _from_pretrained.can_switch(kwargs) is expected


class TestInstallation:
    def test_replaces_the_class_dict_entry_and_puts_identical_original_back(
        self, tf: ModuleType, original: Any
    ) -> None:
        guard_transformers()
        installed = vars(tf.PreTrainedModel)["from_pretrained"]
        assert installed is not original
        assert installed.__wrapped__ is original
        unguard_transformers()
        assert vars(tf.PreTrainedModel)["from_pretrained"] is original

    def test_is_guarded_true_on_base_and_model_classes_once_applied(self, tf: ModuleType) -> None:
        assert not is_guarded(tf.LlamaForCausalLM.from_pretrained)
        guard_transformers()
        assert is_guarded(tf.PreTrainedModel.from_pretrained)
        assert is_guarded(tf.LlamaForCausalLM.from_pretrained)
        assert is_guarded(tf.LlamaForCausalLM.from_pretrained, env_vars="WORLD_SIZE")
        assert not is_guarded(tf.LlamaForCausalLM.from_pretrained, env_vars="RANK")

    def test_repeated_calls_keep_one_wrapper_and_guard_the_union(
        self, tf: ModuleType, original: Any
    ) -> None:
        guard_transformers()
        first = vars(tf.PreTrainedModel)["from_pretrained"]
        guard_transformers(env_vars="RANK")
        guard_transformers()
        assert vars(tf.PreTrainedModel)["from_pretrained"] is first
        assert first.__wrapped__ is original
        assert source.status().names == ("WORLD_SIZE", "RANK")
        assert is_guarded(tf.LlamaForCausalLM.from_pretrained, env_vars=["WORLD_SIZE", "RANK"])

    def test_method_captured_while_guarded_hides_nothing_after_unguard(
        self, tf: ModuleType
    ) -> None:
        guard_transformers()
        captured = tf.LlamaForCausalLM.from_pretrained
        unguard_transformers()
        assert not is_guarded(captured)

    def test_unguard_when_not_guarded_does_nothing(self, tf: ModuleType, original: Any) -> None:
        unguard_transformers()
        assert vars(tf.PreTrainedModel)["from_pretrained"] is original

    def test_concurrent_guard_and_unguard_leave_one_layer_or_the_original(
        self, tf: ModuleType, original: Any
    ) -> None:
        barrier = threading.Barrier(8)
        errors: list[BaseException] = []

        def worker(seed: int) -> None:
            chooser = random.Random(seed)
            barrier.wait()
            try:
                for _ in range(200):
                    if chooser.random() < 0.6:
                        guard_transformers(env_vars=chooser.choice(["WORLD_SIZE", "RANK"]))
                    else:
                        unguard_transformers()
                    tf.LlamaForCausalLM.from_pretrained  # noqa: B018 -- binds concurrently
            except BaseException as error:  # pragma: no cover - reported below
                errors.append(error)

        threads = [threading.Thread(target=worker, args=(seed,)) for seed in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert not errors
        guard_transformers()
        installed = vars(tf.PreTrainedModel)["from_pretrained"]
        assert installed.__wrapped__ is original  # one layer, around the original
        unguard_transformers()
        assert vars(tf.PreTrainedModel)["from_pretrained"] is original


class TestGuardedMethodKeepsItsFace:
    def test_signature_self_and_ismethod_unchanged(self, tf: ModuleType, original: Any) -> None:
        before = tf.LlamaForCausalLM.from_pretrained
        guard_transformers()
        after = tf.LlamaForCausalLM.from_pretrained
        assert inspect.signature(after) == inspect.signature(before)
        assert after.__self__ is tf.LlamaForCausalLM
        assert inspect.ismethod(after)
        assert after.__name__ == "from_pretrained"
        assert after.__doc__ == before.__doc__

    def test_repr_is_the_bound_method_repr(self, tf: ModuleType, original: Any) -> None:
        before = repr(tf.LlamaForCausalLM.from_pretrained)
        guard_transformers()
        assert repr(tf.LlamaForCausalLM.from_pretrained) == before
        assert before.startswith("<bound method PreTrainedModel.from_pretrained of <class ")

    @pytest.mark.parametrize(
        "copier",
        [
            lambda obj: pickle.loads(pickle.dumps(obj)),
            copy.deepcopy,
            copy.copy,
        ],
        ids=["pickle", "deepcopy", "copy"],
    )
    def test_bound_method_and_registry_partial_copy_and_pickle(
        self, tf: ModuleType, tiny_model: str, copier: Any
    ) -> None:
        guard_transformers()
        method = tf.LlamaForCausalLM.from_pretrained
        entry = functools.partial(tf.AutoModelForCausalLM.from_pretrained, tiny_model)
        copied_method = copier(method)
        copied_entry = copier(entry)
        assert copied_method == method
        assert is_guarded(copied_method)
        assert copied_entry.func == entry.func
        assert copied_entry.args == (tiny_model,)


class TestGuardedWhileAnotherThreadImports:
    def test_guard_called_during_the_import_of_modeling_utils_is_installed(
        self, tf: ModuleType
    ) -> None:
        """In a fresh interpreter: the module is in sys.modules, half executed, when guarded."""
        out = run_isolated(
            """
            import sys, threading, time
            from single_instance_build import guard_transformers, is_guarded

            MODULE = "transformers.modeling_utils"
            importer = threading.Thread(target=__import__, args=(MODULE,))
            importer.start()
            while True:  # in sys.modules, PreTrainedModel not defined yet
                module = sys.modules.get(MODULE)
                if module is not None and not hasattr(module, "PreTrainedModel"):
                    break
                time.sleep(0.0005)
            guard_transformers()
            importer.join()
            from transformers import LlamaForCausalLM, PreTrainedModel
            for cls in (PreTrainedModel, LlamaForCausalLM):
                print(is_guarded(cls.from_pretrained))
            """,
            timeout=180,
        )
        assert out.split() == ["True", "True"]
