"""Static checks for the registry helpers. Checked by mypy --strict and pyright.

Lines marked ``# type: ignore[code]`` must be rejected.
"""

from __future__ import annotations

import functools
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from typing_extensions import assert_type

from single_instance_build import GuardedRegistry, guard_registry


class Model:
    def __init__(self, model_path: str) -> None:
        self.model_path = model_path


def build(model_path: str) -> Model:
    return Model(model_path)


# guard_registry returns the type it was given.
partials: dict[str, functools.partial[Model]] = {"m": functools.partial(Model, "p")}
assert_type(guard_registry(partials), dict[str, functools.partial[Model]])
assert_type(guard_registry(partials)["m"].keywords, dict[str, Any])
callables: dict[str, Callable[..., Any]] = {"m": build, "n": Model}
assert_type(guard_registry(callables, env_vars="RANK"), dict[str, Callable[..., Any]])
ordered: OrderedDict[str, Callable[..., Model]] = OrderedDict(m=build)
assert_type(guard_registry(ordered), OrderedDict[str, Callable[..., Model]])
guard_registry([build])  # type: ignore[type-var]
guard_registry(partials, env_vars=3)  # type: ignore[arg-type]

# GuardedRegistry infers its key and value types from its argument.
registry = GuardedRegistry({"m": functools.partial(Model, "p")})
assert_type(registry, GuardedRegistry[str, functools.partial[Model]])
assert_type(registry["m"], functools.partial[Model])
assert_type(registry["m"](), Model)
assert isinstance(registry, dict)
by_id: GuardedRegistry[int, Callable[[str], Model]]
by_id = GuardedRegistry([(1, build)], env_vars=("WORLD_SIZE", "RANK"))
assert_type(by_id[1]("p"), Model)
assert_type(by_id.env_vars, tuple[str, ...])
assert_type(registry.copy(), GuardedRegistry[str, functools.partial[Model]])

supported: GuardedRegistry[str, Callable[..., Any]] = GuardedRegistry()
supported["build"] = build
supported.update({"model": Model})
supported.update(partial=functools.partial(Model, "p"))
assert_type(supported | {"x": build}, GuardedRegistry[str, Callable[..., Any]])
supported["bad"] = 3  # type: ignore[assignment]
GuardedRegistry({"bad": 3})  # type: ignore[type-var]

# Keyword entries, as dict(name=factory) takes them, make str keys.
by_keyword = GuardedRegistry(m=functools.partial(Model, "p"))
assert_type(by_keyword, GuardedRegistry[str, functools.partial[Model]])
merged = GuardedRegistry({"m": Model}, n=Model)
assert_type(merged, GuardedRegistry[str, type[Model]])
GuardedRegistry({1: Model}, n=Model)  # type: ignore[arg-type]
