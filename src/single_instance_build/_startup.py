"""Start-up activation: ``SINGLE_INSTANCE_BUILD`` in the environment guards Transformers.

The wheel installs ``single_instance_build.pth`` into site-packages. :mod:`site`
runs its one line as every interpreter of that environment starts; with the
variable unset, empty or ``0`` that line costs one environment lookup and
imports nothing. Otherwise it imports this module and calls :func:`activate`,
which calls ``guard_transformers()`` for the names the variable gives: ``1``
(or ``true``, ``yes``, ``on``) for the default ``WORLD_SIZE``, or a
comma-separated list of names. This is how console scripts, ``accelerate
launch`` and multiprocessing ``spawn`` children, which cannot take
``python -m single_instance_build.run``, get the guard.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Mapping
from typing import TextIO

from ._names import DEFAULT_ENV_VARS, normalize_env_vars
from ._transformers import activate as _activate_guard
from ._transformers import status as _status

__all__ = ["ENV_VAR", "PTH_LINE", "activate", "names_from"]

ENV_VAR = "SINGLE_INSTANCE_BUILD"
_OFF = ("", "0")  # what the .pth line itself tells apart, without importing anything
_ALSO_OFF = ("false", "no", "off")
_ON = ("1", "true", "yes", "on")
# A list names variables as shells spell them: "2" or "1,2" is a mistyped switch.
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

#: The line of ``single_instance_build.pth``. ``site`` executes lines that
#: start with ``import``; ``os`` is already imported when it does.
PTH_LINE = (
    f'import os; os.environ.get("{ENV_VAR}", "").strip() in {_OFF!r} or '
    '__import__("single_instance_build._startup")._startup.activate()'
)


def names_from(value: str) -> tuple[str, ...]:
    """The names a value of ``SINGLE_INSTANCE_BUILD`` asks to hide; ``()`` for off.

    >>> names_from("1"), names_from("0"), names_from("")
    (('WORLD_SIZE',), (), ())
    >>> names_from("WORLD_SIZE, LOCAL_WORLD_SIZE")
    ('WORLD_SIZE', 'LOCAL_WORLD_SIZE')

    Raises:
        ValueError: the value is neither a switch nor a list of valid names.
    """
    value = value.strip()
    if value in _OFF or value.lower() in _ALSO_OFF:
        return ()
    if value.lower() in _ON:
        return DEFAULT_ENV_VARS
    names = [name.strip() for name in value.split(",")]
    bad = [name for name in names if not _NAME.fullmatch(name)]
    if bad:
        raise ValueError(f"{bad[0]!r} is not a variable name (letters, digits and _)")
    return normalize_env_vars(names)


def activate(environ: Mapping[str, str] | None = None, stderr: TextIO | None = None) -> None:
    """Guard Transformers as ``SINGLE_INSTANCE_BUILD`` asks; never raises.

    A value that names no valid variable is reported in one line on stderr,
    and ``WORLD_SIZE`` is guarded anyway: a typo must neither stop the
    interpreter nor leave the launch unguarded. Only the first call in a
    process acts: ``site`` runs ``.pth`` files twice in some virtual
    environments (coverage.py's ``process_startup`` guards against the same).
    """
    if ENV_VAR in _status().origins:
        return
    value = (os.environ if environ is None else environ).get(ENV_VAR, "")
    try:
        names = names_from(value)
    except ValueError as error:
        print(
            f"single-instance-build: ignoring {ENV_VAR}={value!r} ({error}); expected 1 or "
            f"comma-separated variable names; guarding {', '.join(DEFAULT_ENV_VARS)}",
            file=sys.stderr if stderr is None else stderr,
        )
        names = DEFAULT_ENV_VARS
    if names:
        _activate_guard(names, ENV_VAR)
