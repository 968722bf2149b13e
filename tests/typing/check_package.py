"""Static checks: the lazy package still gives every public name its type.

The package's ``__init__`` imports its names on first use (PEP 562); type
checkers see them through its ``TYPE_CHECKING`` imports. Checked by
``mypy --strict`` and pyright; nothing here is executed by the test suite.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from typing_extensions import assert_type  # typing.assert_type is Python 3.11+

import single_instance_build as package
from single_instance_build import (
    DEFAULT_ENV_VARS,
    GuardedRegistry,
    guard_registry,
    guard_transformers,
    unguard_transformers,
)

assert_type(DEFAULT_ENV_VARS, tuple[str, ...])
assert_type(guard_transformers, Callable[..., None])  # type: ignore[assert-type]  # keyword-only
assert_type(unguard_transformers(), None)
assert_type(guard_transformers(env_vars="WORLD_SIZE"), None)
guard_transformers(env_vars=3)  # type: ignore[arg-type]
assert_type(package.is_guarded(print), bool)
assert_type(package.__version__, str)
assert_type(GuardedRegistry[str, Callable[[], int]]({"a": lambda: 1})["a"](), int)
assert_type(guard_registry, Callable[..., object])  # type: ignore[assert-type]  # overloaded
names: Iterable[str] = package.DEFAULT_ENV_VARS
misspelled = package.guard_transformer  # type: ignore[attr-defined]
