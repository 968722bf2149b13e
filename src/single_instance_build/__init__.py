"""Build one full model per process under torchrun: hide ``WORLD_SIZE`` while a model is built.

Transformers 4.50.0 to 4.53.3 turn ``from_pretrained(..., device_map="auto")``
into tensor parallelism whenever ``WORLD_SIZE`` is set, as torchrun sets it
in every process. Data-parallel evaluation then gets silently wrong results.
This package hides such variables while a model factory runs and restores
them exactly afterwards.
"""

from ._context import single_instance_env
from ._decorator import is_guarded, single_instance_build
from ._names import DEFAULT_ENV_VARS
from ._registry import GuardedRegistry, guard_registry
from ._scope import original_env
from ._transformers import guard_transformers, unguard_transformers

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_ENV_VARS",
    "GuardedRegistry",
    "guard_registry",
    "guard_transformers",
    "is_guarded",
    "original_env",
    "single_instance_build",
    "single_instance_env",
    "unguard_transformers",
]
