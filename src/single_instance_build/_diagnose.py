"""The diagnosis command: is this process, or this Transformers version, affected?

``python -m single_instance_build`` and the ``single-instance-build`` console
script run :func:`main`. It writes what :func:`diagnose` (``_findings``) finds:
the Transformers version, the names of launcher variables (never their values),
the guard at the source and the verdict. Under a launcher, local rank 0 writes
the node's one report (see ``_ranks``).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Mapping, Sequence
from typing import TextIO

from ._findings import (
    EXIT_AFFECTED_NOW,
    EXIT_AFFECTED_UNDER_LAUNCHER,
    EXIT_NOT_AFFECTED,
    EXIT_UNDER_LAUNCHER,
    EXIT_UNKNOWN,
    EXIT_USAGE,
    LAUNCHER_VARIABLES,
    Diagnosis,
    diagnose,
)
from ._launch import ORIGIN as LAUNCHER_ORIGIN
from ._ranks import current_launch
from ._startup import ENV_VAR as STARTUP_VARIABLE
from ._versions import is_affected_version, release

__all__ = [
    "LAUNCHER_VARIABLES",
    "Diagnosis",
    "diagnose",
    "is_affected_version",
    "main",
    "report",
    "report_others",
]

#: How long local rank 0 waits for the other local ranks' findings, in seconds.
RANK_TIMEOUT = 30.0

#: The exit status outside a launcher, and what it means: ``--help`` and the
#: README's table both say exactly this.
EXIT_STATUSES = {
    EXIT_NOT_AFFECTED: (
        "not affected: Transformers is absent or outside the range, or the guard at the source "
        "hides `WORLD_SIZE` in this process (`ACTIVE`, or `ARMED` until Transformers is imported)"
    ),
    EXIT_AFFECTED_NOW: (
        "this process is affected: an affected version and a `WORLD_SIZE` that is not 0; "
        "the verdict says what `from_pretrained(..., device_map='auto')` then does: shards "
        "the model across the launch's processes, or, outside a launch, raises"
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

# Short steps, a line each, to read in a terminal: the zero-edit options first.
_ADVICE = """\
what to do, one of these:
  - no code change: launch the script through -m single_instance_build.run
      torchrun --nproc_per_node=N -m single_instance_build.run SCRIPT [ARGS]
      a module:         ... -m single_instance_build.run -m MODULE [ARGS]
      a console script: ... -m single_instance_build.run "$(command -v TOOL)"
      accelerate launch takes -m single_instance_build.run the same way
  - a launcher that cannot take -m: set SINGLE_INSTANCE_BUILD=1 for the job
  - in code: call guard_transformers() at the top of the entry point
  - in code: decorate the model factory with @single_instance_build,
    or guard the model registry with guard_registry(...)
  - or upgrade transformers to 4.54 or later
"""


def _report_guard(diagnosis: Diagnosis, out: TextIO) -> None:
    """The guard at the source in this process: ACTIVE, ARMED, BROKEN or not active, and why."""
    if diagnosis.guard_names:
        if diagnosis.guard_installed:
            state, when = "ACTIVE", ""
        elif diagnosis.guard_ready:
            state, when = "ARMED", " once transformers.modeling_utils is imported"
        elif diagnosis.transformers_imported:
            state = "NOT IN PLACE"
            when = (
                ": transformers.modeling_utils is imported, and its "
                "PreTrainedModel.from_pretrained is not the guard"
            )
        elif not diagnosis.import_hook_waiting:
            state, when = "NOT IN PLACE", ": its import hook was taken out of sys.meta_path"
        elif diagnosis.finders_ahead:
            state = "BYPASSABLE"
            when = (
                f": {', '.join(diagnosis.finders_ahead)} "
                f"{'is' if len(diagnosis.finders_ahead) == 1 else 'are'} ahead of its import "
                "hook in sys.meta_path and can import transformers.modeling_utils past it "
                "(call guard_transformers() after installing that finder)"
            )
        else:
            state, when = "BROKEN", " never: wrapt cannot be imported"
        out.write(
            f"guard at the source: {state} in this process, hiding "
            f"{', '.join(diagnosis.guard_names)} in from_pretrained(..., device_map='auto')"
            f"{when}; switched on by {' and '.join(diagnosis.guard_origins)}\n"
        )
    else:
        out.write("guard at the source: not active in this process\n")
    # The launcher sets the variable itself, for its children, and guards in-process.
    switched_on_by_it = {STARTUP_VARIABLE, LAUNCHER_ORIGIN} & set(diagnosis.guard_origins)
    if diagnosis.startup_variable_on and not switched_on_by_it and not diagnosis.site_ran:
        out.write(
            f"{STARTUP_VARIABLE} is set but did not switch the guard on: python -S skips "
            "site-packages' .pth files, which read it (drop -S, or call guard_transformers())\n"
        )
    elif diagnosis.startup_variable_on and not switched_on_by_it:
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


def report_others(
    diagnosis: Diagnosis,
    others: Mapping[int, Diagnosis | None] | None,
    local_world_size: int,
    timeout: float,
    out: TextIO,
) -> None:
    """After local rank 0's report: a line for each other local rank whose findings differ.

    *others* maps the other local ranks to their findings (None: not heard
    from within *timeout* seconds); None where the ranks could not compare notes.
    """
    if others is None:
        if local_world_size > 1:
            out.write("the other local ranks print one line each\n")
        return
    differing = 0
    for local_rank, other in sorted(others.items()):
        if other is None:
            out.write(f"local rank {local_rank}: no findings within {timeout:g} s\n")
        elif other != diagnosis:
            differing += 1
            names = ", ".join(other.launcher_variables) or "none"
            out.write(
                f"local rank {local_rank} DIFFERS: transformers {other.transformers_version}, "
                f"launcher variables {names}; {other.verdict}\n"
            )
    if others and not differing and all(other is not None for other in others.values()):
        ranks = "local rank 1" if len(others) == 1 else f"local ranks 1 to {len(others)}"
        out.write(f"{ranks}: the same findings\n")
