"""Start-up activation: ``SINGLE_INSTANCE_BUILD`` in the environment guards Transformers.

The wheel installs ``single_instance_build.pth`` into site-packages, whose one
line ``site`` runs as every interpreter of that environment starts, on Python
3.10 to 3.17: it calls :func:`activate` unless the variable is off, and then
imports nothing. The wheel ships no PEP 829 ``.start`` file: on 3.15 any
``.start`` file makes ``site`` import :mod:`pkgutil`, :mod:`re` and
:mod:`enum` in every interpreter, switch on or off, about 1.7 times the
start-up of a bare environment (docs/versions.md). Python 3.18 ignores import
lines in ``.pth`` files; a ``.start`` file naming :func:`activate` is needed
from then on (tests/test_startup.py notices the version).

This module imports only :mod:`os`, :mod:`sys` and :mod:`._switch`, and the package's
``__init__`` is lazy. Set, the variable registers a hook through :mod:`._transformers` (stdlib-only
too): wrapt and the wrapper are imported when ``transformers.modeling_utils``
is, which is how console scripts, ``accelerate launch`` and multiprocessing
``spawn`` children, which cannot take ``python -m single_instance_build.run``,
get the guard.

Values, stripped and case-insensitive for the words: unset, empty, ``0``,
``false``, ``no``, ``off``: off. ``1``, ``true``, ``yes``, ``on``: hide
``WORLD_SIZE``. A comma-separated list of names (``WORLD_SIZE,LOCAL_WORLD_SIZE``):
hide those. Anything else (``ture``, ``y``, ``world_size``, ``2``) is a
mistyped switch: one line on stderr, and ``WORLD_SIZE`` is hidden anyway.
"""

from __future__ import annotations

import os
import sys

from ._switch import ENV_VAR, OFF, ON

TYPE_CHECKING = False  # typing itself costs start-up time; type checkers know this name
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import TextIO

__all__ = ["ENV_VAR", "OFF", "ON", "PTH_LINE", "activate", "names_from"]

_DEFAULT = ("WORLD_SIZE",)  # _names.DEFAULT_ENV_VARS, without importing it when not needed

#: The line of ``single_instance_build.pth``. ``site`` executes lines that
#: start with ``import``; ``os`` is already imported when it does.
PTH_LINE = (
    f'import os; os.environ.get("{ENV_VAR}", "").strip().lower() in {OFF!r} or '
    '__import__("single_instance_build._startup")._startup.activate()'
)


def names_from(value: str) -> tuple[str, ...]:
    """The names a value of ``SINGLE_INSTANCE_BUILD`` asks to hide; ``()`` for off.

    >>> names_from("1"), names_from("off"), names_from("")
    (('WORLD_SIZE',), (), ())
    >>> names_from("WORLD_SIZE, LOCAL_WORLD_SIZE")
    ('WORLD_SIZE', 'LOCAL_WORLD_SIZE')

    Raises:
        ValueError: the value is neither a switch word nor a list of names
            (upper-case ASCII letters, digits and ``_``).
    """
    word = value.strip().lower()
    if word in OFF:
        return ()
    if word in ON:
        return _DEFAULT
    from ._names import split_name_list

    try:
        return split_name_list(value)
    except ValueError:
        raise ValueError(
            "expected 1, true, yes or on; 0, false, no or off; or a comma-separated list "
            "of variable names in upper case (WORLD_SIZE,LOCAL_WORLD_SIZE)"
        ) from None


def activate(environ: Mapping[str, str] | None = None, stderr: TextIO | None = None) -> None:
    """Guard Transformers as ``SINGLE_INSTANCE_BUILD`` asks; what the ``.pth`` line calls.

    Callable with no arguments, as a PEP 829 entry point would be. A value
    that is neither a switch word nor a list of names is reported in one line
    on stderr, and ``WORLD_SIZE`` is guarded anyway: a typo must neither stop
    the interpreter nor leave the launch unguarded. Only the first call in a
    process acts: ``site`` runs ``.pth`` files twice in some virtual
    environments, 3.14's among them (coverage.py's ``process_startup`` guards
    against the same). Never raises.
    """
    value = (os.environ if environ is None else environ).get(ENV_VAR, "")
    if value.strip().lower() in OFF:
        return
    try:
        from . import _transformers

        if ENV_VAR in _transformers.status().origins:
            return
        try:
            names = names_from(value)
        except ValueError as error:
            from ._names import describe

            names = _DEFAULT
            print(
                f"single-instance-build: {ENV_VAR}={describe(value)} is neither a switch nor "
                f"a list of names ({error}); guarding {', '.join(names)} anyway",
                file=sys.stderr if stderr is None else stderr,
            )
        _transformers.activate(names, ENV_VAR)
    except Exception as error:  # an interpreter must start whatever happens here
        print(
            f"single-instance-build: {ENV_VAR} could not switch the guard on "
            f"({type(error).__name__}: {error})",
            file=sys.stderr if stderr is None else stderr,
        )
