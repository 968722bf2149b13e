"""Which Transformers releases switch to tensor parallelism, read from version strings.

The diagnosis command compares a version's release numbers with the affected
range, and reads ``WORLD_SIZE`` the way the affected releases do.
"""

from __future__ import annotations

import re

__all__ = ["FIRST_AFFECTED", "FIRST_FIXED", "is_affected_version", "read_world_size", "release"]

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
