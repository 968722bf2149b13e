"""Guard a VLMEvalKit-style registry of model factories, no torch needed.

Run it with ``python examples/vlm_registry.py``.

It builds a ``supported_VLM``-shaped registry from groups of
``functools.partial`` entries, as ``vlmeval/config.py`` does, guards it with
one ``guard_registry`` call, applies a command-line override through
``entry.keywords`` as ``run.py`` does, deep-copies an entry, and then builds
models while playing a torchrun process. Each stand-in model prints what it
saw while it was built.
"""

from __future__ import annotations

import copy
import os
from functools import partial
from typing import Any

from single_instance_build import GuardedRegistry, guard_registry, is_guarded, original_env


class StandInVLM:
    """Stands in for a model class whose __init__ loads weights, as VLMEvalKit's do."""

    def __init__(self, model_path: str, **kwargs: Any) -> None:
        self.model_path = model_path
        self.kwargs = kwargs
        print(
            f"    building {type(self).__name__}({model_path!r}, {kwargs}): "
            f"WORLD_SIZE={os.environ.get('WORLD_SIZE')}, "
            f"launcher's WORLD_SIZE={original_env('WORLD_SIZE')}"
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


def main() -> None:
    os.environ.setdefault("WORLD_SIZE", "2")  # as torchrun --nproc_per_node=2 sets it
    os.environ.setdefault("RANK", "0")

    supported_VLM: dict[str, Any] = {}  # noqa: N806 -- the name VLMEvalKit uses
    for group in (qwen_series, llava_series):
        supported_VLM.update(group)
    guard_registry(supported_VLM)  # one line, after the registry is built
    print(f"guarded {sum(map(is_guarded, supported_VLM.values()))} of {len(supported_VLM)} entries")

    # run.py-style override: edit the partial's keywords in place.
    entry = supported_VLM["Qwen-VL-Tiny"]
    if hasattr(entry, "keywords"):
        entry.keywords["model_path"] = "/models/local-qwen"
    print(f"entry.func is {entry.func.__name__} from module {entry.func.__module__}")

    # A deep copy is guarded too, and independent of the original.
    supported_VLM["Qwen-VL-Tiny-greedy"] = copy.deepcopy(supported_VLM["Qwen-VL-Tiny"])
    supported_VLM["Qwen-VL-Tiny-greedy"].keywords["temperature"] = 0

    # Entries registered later (plugins, update loops): a GuardedRegistry guards on the way in.
    plugins: GuardedRegistry[str, Any] = GuardedRegistry()
    plugins["llava-tiny-plugin"] = partial(LLaVA, model_path="plugin/llava")

    print(f"launcher environment: WORLD_SIZE={os.environ['WORLD_SIZE']}")
    for name in ("Qwen-VL-Tiny", "Qwen-VL-Tiny-greedy", "llava-tiny"):
        print(f"  supported_VLM[{name!r}]()")
        supported_VLM[name]()
    print("  plugins['llava-tiny-plugin']()")
    plugins["llava-tiny-plugin"]()
    print(f"afterwards: WORLD_SIZE={os.environ['WORLD_SIZE']}")


if __name__ == "__main__":
    main()
