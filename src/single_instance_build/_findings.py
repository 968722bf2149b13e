"""What the diagnosis finds in this process, and the verdict it draws from it.

:func:`diagnose` reads the installed Transformers version from the package
metadata (it never imports Transformers), the names of the launcher variables
set in this process (never their values) and the state of the guard at the
source. :class:`Diagnosis` holds the findings and says what a
``from_pretrained(..., device_map="auto")`` really does here.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import metadata
from typing import Any

from ._import_hook import finders_ahead, waiting_for
from ._startup import ENV_VAR as STARTUP_VARIABLE
from ._startup import OFF as STARTUP_OFF_VALUES
from ._transformers import MODULE as GUARDED_MODULE
from ._transformers import status as guard_status
from ._versions import is_affected_version, process_group_gaps, read_world_size

__all__ = ["LAUNCHER_VARIABLES", "STARTUP_OFF_VALUES", "Diagnosis", "diagnose"]

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
    guard_installed: bool = False  # False until transformers.modeling_utils is imported
    # Whether the guard is in place, or will be when Transformers is imported: not
    # imported yet, the import hook still in sys.meta_path with no finder ahead of
    # it, and wrapt works.
    guard_ready: bool = False
    # Whether transformers.modeling_utils is imported (then the guard is in place or never is)
    # and whether the import hook still waits for it in sys.meta_path.
    transformers_imported: bool = False
    import_hook_waiting: bool = False
    # Finders ahead of the import hook in sys.meta_path, by class name: one of them can
    # import transformers.modeling_utils without asking it (typeguard's import hook does).
    finders_ahead: tuple[str, ...] = ()
    # False under python -S: site, and so the .pth file that reads SINGLE_INSTANCE_BUILD, never ran.
    site_ran: bool = True
    # How a switched from_pretrained goes on: the variables that keep the affected
    # releases from starting the process group (then it raises), and WORLD_SIZE=1.
    process_group_gaps: tuple[str, ...] = ()
    world_size_is_one: bool = False

    @property
    def exit_status(self) -> int:
        """0: not affected; 1: affected now; 3: affected version, no launcher here; 4: unknown."""
        if self.transformers_version is not None and self.affected_version is None:
            return EXIT_UNKNOWN
        if not self.affected_version or (self.guard_ready and "WORLD_SIZE" in self.guard_names):
            return EXIT_NOT_AFFECTED
        if self.world_size_switches:
            return EXIT_AFFECTED_NOW
        return EXIT_AFFECTED_UNDER_LAUNCHER

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
        if status == EXIT_AFFECTED_NOW and self.process_group_gaps:
            *first, last = self.process_group_gaps
            gaps = f"{', '.join(first)} and {last}" if first else last
            return (
                "verdict: THIS PROCESS IS AFFECTED. from_pretrained(..., device_map='auto') "
                "raises OSError here: it switches to tensor parallelism and tries to start "
                f"torch.distributed's process group, but {gaps} "
                f"{'are' if first else 'is'} unset or unusable (a launcher such as torchrun "
                "sets them)."
            )
        if status == EXIT_AFFECTED_NOW and self.world_size_is_one:
            return (
                "verdict: THIS PROCESS IS AFFECTED. A model built here with device_map='auto' "
                "is loaded as tensor parallel over this one process (its parameters "
                "DTensors), not spread over the visible devices."
            )
        if status == EXIT_AFFECTED_NOW:
            return (
                "verdict: THIS PROCESS IS AFFECTED. A model built here with device_map='auto' "
                "is sharded across the processes of the launch when every process loads it; "
                "a load in some processes only waits for the others until the process "
                "group's timeout."
            )
        why = "is set but reads as 0" if "WORLD_SIZE" in self.launcher_variables else "is not set"
        return (
            f"verdict: not affected in this process (WORLD_SIZE {why}), but processes "
            "started by torchrun will be."
        )

    @classmethod
    def from_json(cls, findings: dict[str, Any]) -> Diagnosis:
        """The diagnosis that ``dataclasses.asdict`` turned into JSON."""
        tuples = (
            "launcher_variables", "guard_names", "guard_origins", "process_group_gaps",
            "finders_ahead",
        )  # fmt: skip
        return cls(**{**findings, **{key: tuple(findings.get(key, ())) for key in tuples}})


def diagnose(transformers_version: str | None = None) -> Diagnosis:
    """Inspect this process: the installed (or given) Transformers version, launcher variables."""
    if transformers_version is None:
        try:
            transformers_version = metadata.version("transformers")
        except metadata.PackageNotFoundError:
            transformers_version = None
    world_size = os.environ.get("WORLD_SIZE")
    switches, is_integer = read_world_size(world_size)
    guard = guard_status()
    imported = GUARDED_MODULE in sys.modules
    waiting = waiting_for(GUARDED_MODULE)
    ahead = finders_ahead(GUARDED_MODULE) if waiting and not imported else ()
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
        startup_variable_on=startup_variable_on(os.environ),
        site_ran=not sys.flags.no_site,
        guard_installed=guard.installed,
        guard_ready=guard.installed
        or (bool(guard.names) and not imported and waiting and not ahead and _can_install()),
        transformers_imported=imported,
        import_hook_waiting=waiting,
        finders_ahead=ahead,
        process_group_gaps=process_group_gaps(os.environ) if switches and is_integer else (),
        world_size_is_one=is_integer and world_size is not None and int(world_size) == 1,
    )


def _can_install() -> bool:
    """Whether the wrapper, and so wrapt, can be imported when Transformers is."""
    try:
        from . import _from_pretrained  # noqa: F401
    except Exception:  # missing or broken: the start-up hook then says so in one line
        return False
    return True


def startup_variable_on(environ: Mapping[str, str]) -> bool:
    """Whether ``SINGLE_INSTANCE_BUILD`` asks for the guard: set, and not an off value."""
    return environ.get(STARTUP_VARIABLE, "").strip().lower() not in STARTUP_OFF_VALUES
