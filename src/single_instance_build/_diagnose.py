"""The diagnosis command: is this process, or this Transformers version, affected?

``python -m single_instance_build`` and the ``single-instance-build`` console
script run :func:`main`. It reads the installed Transformers version from the
package metadata (it never imports Transformers) and the names of launcher
variables set in this process (never their values). Under a launcher, local
rank 0 writes the node's one report (see ``_ranks``).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import metadata
from typing import Any, TextIO

from ._launch import ORIGIN as LAUNCHER
from ._ranks import current_launch, report_others
from ._startup import ENV_VAR as STARTUP_VARIABLE
from ._transformers import status as guard_status
from ._versions import is_affected_version, read_world_size, release

__all__ = ["LAUNCHER_VARIABLES", "Diagnosis", "diagnose", "is_affected_version", "main"]

#: Variables torchrun (torch.distributed.run) sets in every process it starts.
LAUNCHER_VARIABLES = (
    "WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "GROUP_WORLD_SIZE",
    "ROLE_RANK", "ROLE_WORLD_SIZE", "ROLE_NAME", "MASTER_ADDR", "MASTER_PORT",
    "TORCHELASTIC_RUN_ID", "TORCHELASTIC_RESTART_COUNT", "TORCHELASTIC_MAX_RESTARTS",
)  # fmt: skip

EXIT_NOT_AFFECTED = 0
EXIT_AFFECTED_NOW = 1
EXIT_USAGE = 2  # argparse's own status for bad arguments
EXIT_AFFECTED_UNDER_LAUNCHER = 3
EXIT_UNKNOWN = 4
EXIT_UNDER_LAUNCHER = 0  # every process, whatever the verdict: see EXIT_STATUS_HELP

#: How long local rank 0 waits for the other local ranks' findings, in seconds.
RANK_TIMEOUT = 30.0

#: The exit status outside a launcher, and what it means: ``--help`` and the
#: README's table both say exactly this.
EXIT_STATUSES = {
    EXIT_NOT_AFFECTED: (
        "not affected: Transformers is absent or outside the range, or the guard at the source "
        "is active in this process"
    ),
    EXIT_AFFECTED_NOW: (
        "this process is affected: an affected version and a `WORLD_SIZE` that is a non-zero "
        "integer (sharded under a launcher; without one, `from_pretrained` raises `OSError`) "
        "or not an integer (`from_pretrained` raises `ValueError`)"
    ),
    EXIT_USAGE: "usage error, including a `--transformers-version` without a release number",
    EXIT_AFFECTED_UNDER_LAUNCHER: (
        "the version is affected, but `WORLD_SIZE` is not set here (or is 0): processes "
        "started by `torchrun` will be"
    ),
    EXIT_UNKNOWN: "cannot tell: the installed Transformers version has no release number",
}
UNDER_LAUNCHER_HELP = (
    "Under a launcher (`LOCAL_RANK` set), every process exits 0 whatever the verdict (a usage "
    "error still exits 2), so `torchrun` reports no failure and exits 0 too: local rank 0 "
    "prints its node's one report, with a line "
    "for each local rank whose findings differ, and the verdict is in it. For the status in "
    "a script, simulate the launch instead: `WORLD_SIZE=2 single-instance-build`."
)

_ADVICE = (
    "what to do, without editing any code: launch with "
    "'torchrun --nproc_per_node=N -m single_instance_build.run SCRIPT [ARGS]' "
    "(or '-m single_instance_build.run -m MODULE'; 'accelerate launch' takes the same -m, "
    "and a console script runs as '-m single_instance_build.run \"$(command -v TOOL)\"'), "
    "or where no launch line can change, set SINGLE_INSTANCE_BUILD=1.\n"
    "in code: call guard_transformers() in the entry point, decorate the model factory with "
    "@single_instance_build or guard the model registry with guard_registry(...); "
    "or upgrade transformers to 4.54 or later.\n"
)


@dataclass(frozen=True)
class Diagnosis:
    """What :func:`diagnose` found. Holds variable names, never values."""

    transformers_version: str | None
    affected_version: bool | None
    launcher_variables: tuple[str, ...]
    world_size_switches: bool
    world_size_is_integer: bool
    # The guard at the source in this process: what it hides, what switched it on
    # (SINGLE_INSTANCE_BUILD at start-up, or a call), and whether that variable asks for it.
    guard_names: tuple[str, ...] = ()
    guard_origins: tuple[str, ...] = ()
    startup_variable_on: bool = False

    @property
    def exit_status(self) -> int:
        """0: not affected; 1: affected now; 3: affected version, no launcher here; 4: unknown."""
        if self.transformers_version is not None and self.affected_version is None:
            return EXIT_UNKNOWN
        if not self.affected_version or "WORLD_SIZE" in self.guard_names:
            return EXIT_NOT_AFFECTED
        if self.world_size_switches:
            return EXIT_AFFECTED_NOW
        return EXIT_AFFECTED_UNDER_LAUNCHER

    @property
    def launched(self) -> bool:
        """Whether a launcher set ``RANK`` and ``LOCAL_RANK``, as Transformers needs them."""
        return {"RANK", "LOCAL_RANK"} <= set(self.launcher_variables)

    @property
    def verdict(self) -> str:
        """The verdict in one line, the last line of the report."""
        status = self.exit_status
        if status == EXIT_UNKNOWN:
            return "verdict: CANNOT TELL without a release number; check the version by hand."
        if status == EXIT_NOT_AFFECTED and self.affected_version:
            return (
                "verdict: protected. This version is affected, but from_pretrained is guarded "
                "in this process: device_map='auto' loads a full copy."
            )
        if status == EXIT_NOT_AFFECTED:
            return "verdict: not affected. The guard is harmless here and needs no change."
        if status == EXIT_AFFECTED_NOW and not self.world_size_is_integer:
            return (
                "verdict: THIS PROCESS IS AFFECTED. WORLD_SIZE is set but is not an integer, "
                "so from_pretrained(..., device_map='auto') raises ValueError here."
            )
        if status == EXIT_AFFECTED_NOW and not self.launched:
            # Transformers starts the process group itself from RANK, LOCAL_RANK and
            # WORLD_SIZE, and raises OSError when that fails.
            return (
                "verdict: THIS PROCESS IS AFFECTED. WORLD_SIZE is set but no launcher started "
                "this process (RANK or LOCAL_RANK is not set), so "
                "from_pretrained(..., device_map='auto') raises OSError here: it tries to "
                "start a process group for tensor parallelism. If the program starts one "
                "itself, the model is sharded across its processes instead."
            )
        if status == EXIT_AFFECTED_NOW:
            return (
                "verdict: THIS PROCESS IS AFFECTED. A model built here with device_map='auto' "
                "is sharded across the processes of the launch."
            )
        why = "is set but reads as 0" if "WORLD_SIZE" in self.launcher_variables else "is not set"
        return (
            f"verdict: not affected in this process (WORLD_SIZE {why}), but processes "
            "started by torchrun will be."
        )

    @classmethod
    def from_json(cls, findings: dict[str, Any]) -> Diagnosis:
        """The diagnosis that ``dataclasses.asdict`` turned into JSON."""
        tuples = ("launcher_variables", "guard_names", "guard_origins")
        return cls(**{**findings, **{key: tuple(findings.get(key, ())) for key in tuples}})


def diagnose(transformers_version: str | None = None) -> Diagnosis:
    """Inspect this process: the installed (or given) Transformers version, launcher variables."""
    if transformers_version is None:
        try:
            transformers_version = metadata.version("transformers")
        except metadata.PackageNotFoundError:
            transformers_version = None
    switches, is_integer = read_world_size(os.environ.get("WORLD_SIZE"))
    guard = guard_status()
    startup_value = os.environ.get(STARTUP_VARIABLE, "").strip()
    return Diagnosis(
        transformers_version=transformers_version,
        affected_version=(
            None if transformers_version is None else is_affected_version(transformers_version)
        ),
        launcher_variables=tuple(name for name in LAUNCHER_VARIABLES if name in os.environ),
        world_size_switches=switches,
        world_size_is_integer=is_integer,
        guard_names=guard.names,
        guard_origins=guard.origins,
        startup_variable_on=startup_value not in ("", "0"),
    )


def _report_guard(diagnosis: Diagnosis, out: TextIO) -> None:
    """Whether the guard at the source is active in this process, and what switched it on."""
    if diagnosis.guard_names:
        out.write(
            f"guard at the source: ACTIVE in this process, hiding "
            f"{', '.join(diagnosis.guard_names)} in from_pretrained(..., device_map='auto'); "
            f"switched on by {' and '.join(diagnosis.guard_origins)}\n"
        )
    else:
        out.write("guard at the source: not active in this process\n")
    # The launcher sets the variable for the processes it starts, after this one's start-up.
    started_here = (
        STARTUP_VARIABLE in diagnosis.guard_origins or LAUNCHER in diagnosis.guard_origins
    )
    if diagnosis.startup_variable_on and not started_here:
        out.write(
            f"{STARTUP_VARIABLE} is set but did not switch the guard on: install the package "
            "in this Python's environment (on PYTHONPATH only, its .pth file is not run)\n"
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
    _report_guard(diagnosis, out)
    if not diagnosis.world_size_is_integer and not diagnosis.affected_version:
        out.write(
            "WORLD_SIZE is set but is not an integer: with an affected version, "
            "from_pretrained(..., device_map='auto') raises ValueError\n"
        )
    out.write(diagnosis.verdict + "\n")
    if diagnosis.exit_status in (EXIT_AFFECTED_NOW, EXIT_AFFECTED_UNDER_LAUNCHER):
        out.write(_ADVICE)


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
            "exit status: "
            + "; ".join(f"{status} {meaning}" for status, meaning in EXIT_STATUSES.items())
            + ". "
            + UNDER_LAUNCHER_HELP
        ).replace("`", ""),
    )
    parser.add_argument(
        "--transformers-version",
        metavar="VERSION",
        help="check this version (a release number such as 4.53.3) instead of the installed one",
    )
    return parser


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    """Run the diagnosis command and return its exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    version = args.transformers_version
    if version is not None and release(version) is None:
        parser.error(
            f"--transformers-version {version!r} has no release number; expected one such as 4.53.3"
        )
    out = sys.stdout if out is None else out
    diagnosis = diagnose(version)
    launch = current_launch()
    if launch is None:
        report(diagnosis, out)
        return diagnosis.exit_status
    if launch.local_rank != 0:
        if not launch.post(dataclasses.asdict(diagnosis)):
            out.write(f"rank {launch.rank} (local rank {launch.local_rank}): {diagnosis.verdict}\n")
        return EXIT_UNDER_LAUNCHER
    others = None
    if launch.exchange is not None:
        found = launch.collect(RANK_TIMEOUT)
        others = {
            rank: None if findings is None else Diagnosis.from_json(findings)
            for rank, findings in found.items()
        }
    out.write(launch.header())
    report(diagnosis, out)
    report_others(diagnosis, others, launch.local_world_size, RANK_TIMEOUT, out)
    return EXIT_UNDER_LAUNCHER
