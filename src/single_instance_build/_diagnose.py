"""The diagnosis command: is this process, or this Transformers version, affected?

``python -m single_instance_build`` and the ``single-instance-build`` console
script run :func:`main`. It reads the installed Transformers version from the
package metadata (it never imports Transformers) and the names of launcher
variables set in this process (never their values).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import metadata
from typing import TextIO

__all__ = ["LAUNCHER_VARIABLES", "Diagnosis", "diagnose", "is_affected_version", "main"]

#: Transformers releases that turn ``device_map="auto"`` into tensor
#: parallelism when ``WORLD_SIZE`` is set: 4.50.0 up to, not including, 4.54.0.
FIRST_AFFECTED = (4, 50, 0)
FIRST_FIXED = (4, 54, 0)

#: Variables torchrun (torch.distributed.run) sets in every process it starts.
LAUNCHER_VARIABLES = (
    "WORLD_SIZE",
    "RANK",
    "LOCAL_RANK",
    "LOCAL_WORLD_SIZE",
    "GROUP_RANK",
    "GROUP_WORLD_SIZE",
    "ROLE_RANK",
    "ROLE_WORLD_SIZE",
    "ROLE_NAME",
    "MASTER_ADDR",
    "MASTER_PORT",
    "TORCHELASTIC_RUN_ID",
    "TORCHELASTIC_RESTART_COUNT",
    "TORCHELASTIC_MAX_RESTARTS",
)

EXIT_NOT_AFFECTED = 0
EXIT_AFFECTED_NOW = 1
# 2 is argparse's own status for bad arguments.
EXIT_AFFECTED_UNDER_LAUNCHER = 3

_ADVICE = (
    "what to do: decorate the model factory with @single_instance_build, guard the model "
    "registry with guard_registry(...), or upgrade transformers to 4.54 or later.\n"
)

_RELEASE = re.compile(r"^\s*v?(\d+)\.(\d+)(?:\.(\d+))?")


def _release(version: str) -> tuple[int, int, int] | None:
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
    release = _release(version)
    if release is None:
        return None
    return FIRST_AFFECTED <= release < FIRST_FIXED


def _read_world_size(value: str | None) -> tuple[bool, bool]:
    """(whether an affected version switches on *value*, whether it is an integer).

    Transformers tests ``int(os.environ.get("WORLD_SIZE", 0))``: any non-zero
    integer switches, and a value that is not an integer makes it raise.
    """
    try:
        return int(value if value is not None else 0) != 0, True
    except ValueError:
        return True, False


@dataclass(frozen=True)
class Diagnosis:
    """What :func:`diagnose` found. Holds variable names, never values."""

    transformers_version: str | None
    affected_version: bool | None
    launcher_variables: tuple[str, ...]
    world_size_switches: bool
    world_size_is_integer: bool

    @property
    def exit_status(self) -> int:
        """0: not affected; 1: affected now; 3: affected version, no launcher here."""
        if not self.affected_version:
            return EXIT_NOT_AFFECTED
        if self.world_size_switches:
            return EXIT_AFFECTED_NOW
        return EXIT_AFFECTED_UNDER_LAUNCHER


def diagnose(transformers_version: str | None = None) -> Diagnosis:
    """Inspect this process: the installed (or given) Transformers version, launcher variables."""
    if transformers_version is None:
        try:
            transformers_version = metadata.version("transformers")
        except metadata.PackageNotFoundError:
            transformers_version = None
    switches, is_integer = _read_world_size(os.environ.get("WORLD_SIZE"))
    return Diagnosis(
        transformers_version=transformers_version,
        affected_version=(
            None if transformers_version is None else is_affected_version(transformers_version)
        ),
        launcher_variables=tuple(name for name in LAUNCHER_VARIABLES if name in os.environ),
        world_size_switches=switches,
        world_size_is_integer=is_integer,
    )


def report(diagnosis: Diagnosis, out: TextIO) -> None:
    """Write a human-readable report of *diagnosis*."""
    version = diagnosis.transformers_version
    if version is None:
        out.write("transformers: not installed\n")
    elif diagnosis.affected_version is None:
        out.write(f"transformers: {version} (cannot read a release number from it)\n")
    elif diagnosis.affected_version:
        out.write(
            f"transformers: {version}, AFFECTED: from_pretrained(..., device_map='auto') "
            "switches to tensor parallelism when WORLD_SIZE is set (4.50.0 to 4.53.x)\n"
        )
    else:
        out.write(f"transformers: {version}, not affected (the bug is in 4.50.0 to 4.53.x)\n")

    names = ", ".join(diagnosis.launcher_variables) or "none"
    out.write(f"launcher variables set in this process: {names}\n")
    if not diagnosis.world_size_is_integer:
        out.write(
            "WORLD_SIZE is set but is not an integer: with an affected version, "
            "from_pretrained(..., device_map='auto') raises ValueError\n"
        )

    status = diagnosis.exit_status
    if status == EXIT_AFFECTED_NOW:
        out.write(
            "verdict: THIS PROCESS IS AFFECTED. A model built here with device_map='auto' is "
            "sharded across the processes of the launch.\n" + _ADVICE
        )
    elif status == EXIT_AFFECTED_UNDER_LAUNCHER:
        out.write(
            "verdict: not affected in this process (WORLD_SIZE is not set), but processes "
            "started by torchrun will be.\n" + _ADVICE
        )
    else:
        out.write("verdict: not affected. The guard is harmless here and needs no change.\n")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="single-instance-build",
        description=(
            "Tell whether this process, or a given Transformers version, is affected by "
            "the automatic tensor parallelism of Transformers 4.50.0 to 4.53.x, which "
            "shards a model across torchrun's processes when WORLD_SIZE is set. Run it "
            "as it is, or under torchrun to check a launch. Variable values are never "
            "printed."
        ),
        epilog=(
            "exit status: 0 not affected; 1 this process is affected (an affected version "
            "and a non-zero WORLD_SIZE); 2 usage error; 3 the version is affected, but "
            "WORLD_SIZE is not set here, so only processes started by torchrun are."
        ),
    )
    parser.add_argument(
        "--transformers-version",
        metavar="VERSION",
        help="check this version instead of the installed one",
    )
    return parser


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    """Run the diagnosis command and return its exit status."""
    args = _parser().parse_args(argv)
    diagnosis = diagnose(args.transformers_version)
    report(diagnosis, sys.stdout if out is None else out)
    return diagnosis.exit_status
