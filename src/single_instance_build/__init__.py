"""Build one full model per process under torchrun: hide ``WORLD_SIZE`` while a model is built.

Transformers 4.50.0 to 4.53.3 turn ``from_pretrained(..., device_map="auto")``
into tensor parallelism whenever ``WORLD_SIZE`` is set, as torchrun sets it
in every process. Data-parallel evaluation then gets silently wrong results.
This package hides such variables while a model factory runs and restores
them exactly afterwards.

The names below are imported on first use (PEP 562): the ``.pth`` line, when
``SINGLE_INSTANCE_BUILD`` is on, imports ``single_instance_build._startup`` in
processes of the environment, and that must not load wrapt and every module here.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing itself costs start-up time; type checkers know this name
if TYPE_CHECKING:
    from ._context import single_instance_env
    from ._decorator import is_guarded, single_instance_build
    from ._names import DEFAULT_ENV_VARS
    from ._ray import ray_runtime_env
    from ._ray_worker import ray_worker_setup
    from ._registry import GuardedRegistry, guard_registry
    from ._scope import original_env
    from ._transformers import guard_transformers, unguard_transformers

__version__ = "0.2.0"

__all__ = [
    "DEFAULT_ENV_VARS",
    "GuardedRegistry",
    "guard_registry",
    "guard_transformers",
    "is_guarded",
    "original_env",
    "ray_runtime_env",
    "ray_worker_setup",
    "single_instance_build",
    "single_instance_env",
    "unguard_transformers",
]

# Where each public name lives: its first lookup imports that module and keeps the name here.
_HOMES = {
    "DEFAULT_ENV_VARS": "_names",
    "GuardedRegistry": "_registry",
    "guard_registry": "_registry",
    "guard_transformers": "_transformers",
    "is_guarded": "_decorator",
    "original_env": "_scope",
    "ray_runtime_env": "_ray",
    "ray_worker_setup": "_ray_worker",
    "single_instance_build": "_decorator",
    "single_instance_env": "_context",
    "unguard_transformers": "_transformers",
}

if not TYPE_CHECKING:  # type checkers see the imports above, and flag a misspelled name

    def __getattr__(name: str) -> object:
        home = _HOMES.get(name)
        if home is None:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        from importlib import import_module

        value = getattr(import_module(f"{__name__}.{home}"), name)
        globals()[name] = value  # later lookups find it at once
        return value

    def __dir__() -> list[str]:
        return sorted({*globals(), *__all__})
