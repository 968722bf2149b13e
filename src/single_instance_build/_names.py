"""Validation of environment variable names, done once when a guard is created.

Every public entry point turns its ``env_vars`` argument into a tuple of checked
names here, so that bad input fails before any factory runs and before the
environment is touched.
"""

from __future__ import annotations

from collections.abc import Iterable

#: The variables hidden when no ``env_vars`` argument is given. Transformers
#: 4.50.0 to 4.53.3 switch ``device_map="auto"`` to tensor parallelism when
#: ``WORLD_SIZE`` is set.
DEFAULT_ENV_VARS: tuple[str, ...] = ("WORLD_SIZE",)

_EXPECTED_NAME = "a non-empty str without '=' or NUL"


def check_name(name: object) -> str:
    """Return *name* if it can name an environment variable.

    Raises:
        TypeError: *name* is not a ``str``.
        ValueError: *name* is empty or contains ``=`` or a NUL character.
    """
    if not isinstance(name, str):
        raise TypeError(
            f"environment variable name must be {_EXPECTED_NAME}, "
            f"got {name!r} of type {type(name).__name__}"
        )
    if not name or "=" in name or "\x00" in name:
        raise ValueError(f"environment variable name must be {_EXPECTED_NAME}, got {name!r}")
    return name


def normalize_env_vars(env_vars: object) -> tuple[str, ...]:
    """Turn one name or an iterable of names into a tuple of unique, checked names.

    Order is kept and duplicates are dropped.

    >>> normalize_env_vars("WORLD_SIZE")
    ('WORLD_SIZE',)
    >>> normalize_env_vars(["WORLD_SIZE", "RANK", "WORLD_SIZE"])
    ('WORLD_SIZE', 'RANK')

    Raises:
        TypeError: *env_vars* is neither a ``str`` nor an iterable, or holds a
            non-``str``.
        ValueError: a name is malformed, or *env_vars* names no variable at all.
    """
    if isinstance(env_vars, str):
        return (check_name(env_vars),)
    if isinstance(env_vars, bytes | bytearray) or not isinstance(env_vars, Iterable):
        raise TypeError(
            "env_vars must be a variable name (str) or an iterable of names, "
            f"got {env_vars!r} of type {type(env_vars).__name__}"
        )
    names = tuple(dict.fromkeys(check_name(name) for name in env_vars))
    if not names:
        raise ValueError(f"env_vars must name at least one variable, got {env_vars!r}")
    return names
