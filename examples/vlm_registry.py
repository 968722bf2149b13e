"""Guard a VLMEvalKit-style registry of model factories, no torch needed.

Run it with ``python examples/vlm_registry.py``.

It builds a ``supported_VLM``-shaped registry from groups of
``functools.partial`` entries, as ``vlmeval/config.py`` does, guards it with
one ``guard_registry`` call, applies a command-line override through
``entry.keywords`` as ``run.py`` does, then shows that guarding costs no
capability: an entry and the whole registry copy and deep-copy, an entry
pickles and comes back guarded, and a ``multiprocessing`` pool with the
``spawn`` start method builds an entry in a worker, with the variable hidden
there. Finally it builds models while playing a torchrun process. Each
stand-in model prints what it saw while it was built; every other line is
computed from the objects it describes.
"""

from __future__ import annotations

import copy
import multiprocessing
import os
import pickle
from functools import partial
from typing import Any

from single_instance_build import GuardedRegistry, guard_registry, is_guarded, original_env


class StandInVLM:
    """Stands in for a model class whose __init__ loads weights, as VLMEvalKit's do."""

    def __init__(self, model_path: str, **kwargs: Any) -> None:
        self.model_path = model_path
        self.kwargs = kwargs
        self.seen_world_size = os.environ.get("WORLD_SIZE")
        self.seen_launcher_world_size = original_env("WORLD_SIZE")
        print(
            f"    building {type(self).__name__}({model_path!r}, {kwargs}) in process "
            f"{describe_process()}: WORLD_SIZE={self.seen_world_size}, "
            f"launcher's WORLD_SIZE={self.seen_launcher_world_size}",
            flush=True,  # a pool worker may be stopped before it flushes
        )


class QwenVL(StandInVLM):
    """A stand-in Qwen-VL wrapper."""


class LLaVA(StandInVLM):
    """A stand-in LLaVA wrapper."""


qwen_series = {
    "Qwen-VL-Tiny": partial(QwenVL, model_path="Qwen/Qwen-VL-Tiny"),
    "Qwen-VL-Tiny-Chat": partial(QwenVL, model_path="Qwen/Qwen-VL-Tiny-Chat", chat=True),
}
llava_series = {
    "llava-tiny": partial(LLaVA, model_path="liuhaotian/llava-tiny"),
}


def describe_process() -> str:
    return "main" if multiprocessing.parent_process() is None else "spawned worker"


def build_in_worker(factory: Any) -> tuple[str, str | None, str | None, str | None]:
    """Run in a pool worker: build with *factory*; what it saw, and WORLD_SIZE afterwards."""
    model = factory()
    return (
        describe_process(),
        model.seen_world_size,
        model.seen_launcher_world_size,
        os.environ.get("WORLD_SIZE"),
    )


def all_guarded(registry: dict[str, Any]) -> str:
    return f"{sum(map(is_guarded, registry.values()))} of {len(registry)} entries guarded"


def main() -> None:
    os.environ.setdefault("WORLD_SIZE", "2")  # as torchrun --nproc_per_node=2 sets it
    os.environ.setdefault("RANK", "0")

    supported_VLM: dict[str, Any] = {}  # noqa: N806 -- the name VLMEvalKit uses
    for group in (qwen_series, llava_series):
        supported_VLM.update(group)
    guard_registry(supported_VLM)  # one line, after the registry is built
    print(f"guard_registry(supported_VLM): {all_guarded(supported_VLM)}")

    # run.py-style override: edit the partial's keywords in place.
    entry = supported_VLM["Qwen-VL-Tiny"]
    if hasattr(entry, "keywords"):
        entry.keywords["model_path"] = "/models/local-qwen"
    print(f"entry.func is {entry.func.__name__}, entry.keywords is {entry.keywords}")

    # A deep copy of an entry is guarded too, and independent of the original.
    greedy = copy.deepcopy(entry)
    greedy.keywords["temperature"] = 0
    supported_VLM["Qwen-VL-Tiny-greedy"] = greedy
    print(
        f"copy.deepcopy(entry): guarded {is_guarded(greedy)}, its keywords "
        f"{greedy.keywords}, the original's still {entry.keywords}"
    )

    # The whole registry copies and deep-copies, entries still guarded.
    shallow, deep = copy.copy(supported_VLM), copy.deepcopy(supported_VLM)
    deep["Qwen-VL-Tiny"].keywords["model_path"] = "/elsewhere"
    same = all(shallow[name] is supported_VLM[name] for name in supported_VLM)
    new = all(deep[name] is not supported_VLM[name] for name in supported_VLM)
    print(f"copy.copy(supported_VLM): {all_guarded(shallow)}, the same entry objects: {same}")
    print(
        f"copy.deepcopy(supported_VLM): {all_guarded(deep)}, new entry objects: {new}; "
        f"editing one left the original's model_path {entry.keywords['model_path']!r}"
    )

    # An entry pickles by value and comes back guarded for the same variables.
    restored = pickle.loads(pickle.dumps(entry))
    print(
        f"pickle.loads(pickle.dumps(entry)): a new object {restored is not entry}, guarded for "
        f"WORLD_SIZE {is_guarded(restored, env_vars='WORLD_SIZE')}, keywords {restored.keywords}"
    )

    # Entries registered later (plugins, update loops): a GuardedRegistry guards on the way in.
    plugins: GuardedRegistry[str, Any] = GuardedRegistry()
    plugins["llava-tiny-plugin"] = partial(LLaVA, model_path="plugin/llava")

    print(f"launcher environment: WORLD_SIZE={os.environ['WORLD_SIZE']}")
    for name in ("Qwen-VL-Tiny", "Qwen-VL-Tiny-greedy", "llava-tiny"):
        print(f"  supported_VLM[{name!r}]()", flush=True)
        supported_VLM[name]()
    print("  plugins['llava-tiny-plugin']()", flush=True)
    plugins["llava-tiny-plugin"]()

    # A spawn pool pickles the entry, sends it to a new interpreter and builds it there.
    print("  spawn pool: pool.apply(build_in_worker, (supported_VLM['llava-tiny'],))", flush=True)
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        where, seen, launcher, after = pool.apply(build_in_worker, (supported_VLM["llava-tiny"],))
    print(
        f"    the {where} saw WORLD_SIZE={seen} while building (launcher's {launcher}), "
        f"and WORLD_SIZE={after} afterwards"
    )
    print(f"afterwards: WORLD_SIZE={os.environ['WORLD_SIZE']}")


if __name__ == "__main__":
    main()
