"""Which Transformers releases switch to tensor parallelism, read from version strings.

The diagnosis command compares a version's release numbers with the affected
range, and reads ``WORLD_SIZE`` and the variables of a launch the way the
affected releases do.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

__all__ = [
    "FIRST_AFFECTED",
    "FIRST_FIXED",
    "PROCESS_GROUP_VARIABLES",
    "is_affected_version",
    "process_group_gaps",
    "read_world_size",
    "release",
]

#: Transformers releases that turn ``device_map="auto"`` into tensor
#: parallelism when ``WORLD_SIZE`` is set: 4.50.0 up to, not including, 4.54.0.
FIRST_AFFECTED = (4, 50, 0)
FIRST_FIXED = (4, 54, 0)


_RELEASE = re.compile(r"^\s*v?(\d+)\.(\d+)(?:\.(\d+))?")


def release(version: str) -> tuple[int, int, int] | None:
    """The (major, minor, micro) release of a version string, or None if it has none."""
    match = _RELEASE.match(version)
    if match is None:
        return None
    major, minor, micro = match.groups()
    return int(major), int(minor), int(micro or 0)


def is_affected_version(version: str) -> bool | None:
    """Whether a Transformers version switches to tensor parallelism on ``WORLD_SIZE``.

    Compares the release numbers only, so ``4.54.0.dev0`` counts as 4.54.0.

    >>> is_affected_version("4.53.3"), is_affected_version("4.54.0"), is_affected_version("4.49")
    (True, False, False)
    >>> is_affected_version("main") is None
    True
    """
    found = release(version)
    if found is None:
        return None
    return FIRST_AFFECTED <= found < FIRST_FIXED


def read_world_size(value: str | None) -> tuple[bool, bool]:
    """(whether an affected version switches on *value*, whether it is an integer)."""
    # Transformers tests int(os.environ.get("WORLD_SIZE", 0)): a value that is not an
    # integer makes it raise.
    try:
        return int(value if value is not None else 0) != 0, True
    except ValueError:
        return True, False


#: What the affected releases read to start torch.distributed's process group
#: themselves (``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, then the ``env://``
#: rendezvous's ``MASTER_ADDR`` and ``MASTER_PORT``), and whether each must be
#: an integer. A launcher such as torchrun sets them all.
PROCESS_GROUP_VARIABLES = (
    ("RANK", True),
    ("LOCAL_RANK", True),
    ("MASTER_ADDR", False),
    ("MASTER_PORT", True),
)


def process_group_gaps(environ: Mapping[str, str]) -> tuple[str, ...]:
    """The variables that keep the affected releases from starting the process group.

    A switched ``from_pretrained`` then raises ``OSError`` ("We tried to
    initialize torch.distributed for you, but it failed"). ``WORLD_SIZE`` is
    among them when it is negative.

    >>> process_group_gaps({"WORLD_SIZE": "2", "RANK": "0", "MASTER_PORT": "x"})
    ('LOCAL_RANK', 'MASTER_ADDR', 'MASTER_PORT')
    """
    gaps = []
    for name, integer in PROCESS_GROUP_VARIABLES:
        value = environ.get(name)
        if value is None or (integer and not _is_integer(value)):
            gaps.append(name)
    world_size = environ.get("WORLD_SIZE", "0")
    if _is_integer(world_size) and int(world_size) < 0:
        gaps.append("WORLD_SIZE")
    return tuple(gaps)


def _is_integer(value: str) -> bool:
    try:
        int(value)
    except ValueError:
        return False
    return True
