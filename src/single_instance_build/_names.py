"""Validation of environment variable names, done once when a guard is created.

Every public entry point turns its ``env_vars`` argument into a tuple of checked
names here, so that bad input fails before any factory runs and before the
environment is touched. A checked name is a plain ``str`` in the one spelling
the operating system gives it, so later bookkeeping runs no user code (no
``__hash__`` or ``__eq__`` of a ``str`` subclass) and cannot fail to encode it.
"""

from __future__ import annotations

import sys

TYPE_CHECKING = False  # typing itself costs start-up time; type checkers know this name
if TYPE_CHECKING:
    from collections.abc import Iterable
else:  # the same class: collections.abc would import all of collections at start-up
    from _collections_abc import Iterable

DEFAULT_ENV_VARS: tuple[str, ...] = ("WORLD_SIZE",)
"""The variables hidden where no ``env_vars`` argument is given: ``("WORLD_SIZE",)``.

Transformers 4.50.0 to 4.53.3 switch ``from_pretrained(..., device_map="auto")``
to tensor parallelism when ``WORLD_SIZE`` is set, as every launcher sets it.
Pass ``env_vars`` to hide more, only where needed: hiding ``LOCAL_WORLD_SIZE``
too breaks model code that plans its devices from it.
"""

_EXPECTED_NAME = "a non-empty str without '=' or NUL"
# os.environ encodes names this way on POSIX; a name it cannot encode fails
# only once the variable is read or written, which is too late.
_ENCODING = sys.getfilesystemencoding()


def describe(value: object) -> str:
    """``repr(value)`` for a message, or its type where the repr fails or is long."""
    try:
        text = str.__repr__(value) if isinstance(value, str) else repr(value)
    except Exception:  # a repr that raises must not replace the real error
        return f"a {type(value).__qualname__} object"
    if len(text) > 80:
        return f"{text[:60]}... (a {type(value).__qualname__} of {len(text)} characters)"
    return text


def check_name(name: object) -> str:
    r"""Return *name* as the plain ``str`` that names its variable in ``os.environ``.

    Spellings the OS does not tell apart (``"X_\xc9"`` and its
    surrogate-escaped bytes ``"X_\udcc3\udc89"`` under UTF-8) give the same
    name; a ``str`` subclass gives a plain ``str``.

    >>> check_name("WORLD_SIZE")
    'WORLD_SIZE'

    Raises:
        TypeError: *name* is not a ``str``.
        ValueError: *name* is empty, contains ``=`` or a NUL character, or
            cannot be encoded for the OS (a lone surrogate such as ``"\ud800"``).
    """
    if not isinstance(name, str):
        raise TypeError(
            f"environment variable name must be {_EXPECTED_NAME}, "
            f"got {describe(name)} of type {type(name).__qualname__}"
        )
    try:
        encoded = str.encode(name, _ENCODING, "surrogateescape")
    except UnicodeEncodeError:
        raise ValueError(
            f"environment variable name must be {_EXPECTED_NAME} that the OS can encode "
            f"({_ENCODING}), got {describe(name)}"
        ) from None
    if not encoded or b"=" in encoded or b"\x00" in encoded:
        raise ValueError(
            f"environment variable name must be {_EXPECTED_NAME}, got {describe(name)}"
        )
    return encoded.decode(_ENCODING, "surrogateescape")


def normalize_env_vars(env_vars: object) -> tuple[str, ...]:
    """Turn one name or an iterable of names into a tuple of unique, checked names.

    Order is kept and duplicates (also two spellings of one OS name) are dropped.

    >>> normalize_env_vars("WORLD_SIZE")
    ('WORLD_SIZE',)
    >>> normalize_env_vars(["WORLD_SIZE", "RANK", "WORLD_SIZE"])
    ('WORLD_SIZE', 'RANK')

    Raises:
        TypeError: *env_vars* is neither a ``str`` nor an iterable, or holds a
            non-``str``.
        ValueError: a name is malformed, or *env_vars* names no variable at all.
    """
    if env_vars is DEFAULT_ENV_VARS:  # checked once, below: the common case costs nothing
        return DEFAULT_ENV_VARS
    if isinstance(env_vars, str):
        return (check_name(env_vars),)
    if isinstance(env_vars, bytes | bytearray) or not isinstance(env_vars, Iterable):
        raise TypeError(
            "env_vars must be a variable name (str) or an iterable of names, "
            f"got {describe(env_vars)} of type {type(env_vars).__qualname__}"
        )
    names = tuple(dict.fromkeys([check_name(name) for name in env_vars]))
    if not names:
        raise ValueError(f"env_vars must name at least one variable, got {describe(env_vars)}")
    return names


_EXPECTED_SOURCE_NAME = "upper-case ASCII letters, digits and _, not starting with a digit"


def check_source_names(env_vars: object) -> tuple[str, ...]:
    """Checked names for the guard at the source, which may carry them to child processes.

    ``guard_transformers(env_vars=...)``, the launcher's ``--env-var`` and the
    ``SINGLE_INSTANCE_BUILD`` variable share this one grammar: names as shells
    and launchers spell them (``WORLD_SIZE``), which a comma-separated value
    can carry. Upper case only, so that a mistyped switch (``ture``, ``y``,
    ``world_size``) is never taken for the name of a variable.

    >>> check_source_names(["WORLD_SIZE", "LOCAL_WORLD_SIZE"])
    ('WORLD_SIZE', 'LOCAL_WORLD_SIZE')

    Raises:
        TypeError: as :func:`normalize_env_vars`.
        ValueError: as :func:`normalize_env_vars`, or a name outside the grammar.
    """
    names = normalize_env_vars(env_vars)
    for name in names:
        if not (name.isascii() and name.isidentifier() and name == name.upper()):
            raise ValueError(
                f"variable name for the guard at the source must be {_EXPECTED_SOURCE_NAME}, "
                f"got {describe(name)}"
            )
    return names


def split_name_list(value: str) -> tuple[str, ...]:
    """The checked names of a comma-separated list, as ``SINGLE_INSTANCE_BUILD`` gives them.

    >>> split_name_list("WORLD_SIZE, LOCAL_WORLD_SIZE")
    ('WORLD_SIZE', 'LOCAL_WORLD_SIZE')

    Raises:
        ValueError: an empty item, or a name outside :func:`check_source_names`'s grammar.
    """
    return check_source_names([item.strip() for item in value.split(",")])
