"""Where the diagnosis command runs under a launcher, and how its local ranks compare notes.

Under ``torchrun --nproc_per_node=N -m single_instance_build`` every process
runs the diagnosis. Local rank 0 writes the one report of the node, and a line
for each other local rank whose findings differ (``_diagnose`` writes them:
this module knows nothing of what the findings are). The other local ranks hand it
their findings as small JSON files in the per-rank folders that torchrun makes
for each launch (the folder of ``TORCHELASTIC_ERROR_FILE``, private to the user
and new for every launch attempt), so nothing is shared between launches or
users and nothing needs cleaning up.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FILE_NAME = "single-instance-build-diagnosis.json"


@dataclass(frozen=True)
class Launch:
    """This process's place in a launch: its ranks and, under torchrun, the exchange folder."""

    rank: int
    local_rank: int
    local_world_size: int
    #: The launch attempt's folder, holding one sub-folder per local rank; None
    #: where the launcher is not torchrun and the ranks cannot compare notes.
    exchange: Path | None

    def header(self) -> str:
        """The first line of local rank 0's report."""
        processes = f"process{'es' if self.local_world_size > 1 else ''}"
        return (
            f"under a launcher: the report of local rank 0 (rank {self.rank}) for its "
            f"{self.local_world_size} local {processes}; every process exits 0\n"
        )

    def post(self, findings: Mapping[str, Any]) -> bool:
        """Leave *findings* for local rank 0; False where there is nowhere to leave them."""
        if self.exchange is None:
            return False
        target = self.exchange / str(self.local_rank) / FILE_NAME
        partial = target.with_suffix(".partial")
        try:
            partial.write_text(json.dumps(dict(findings)), encoding="utf-8")
            partial.replace(target)  # atomic: local rank 0 never reads half a file
        except OSError:  # the folder went away: say it on this rank instead
            return False
        return True

    def collect(self, timeout: float) -> dict[int, dict[str, Any] | None]:
        """The findings of the other local ranks, None for a rank silent for *timeout* seconds."""
        assert self.exchange is not None
        found: dict[int, dict[str, Any] | None] = dict.fromkeys(
            range(1, self.local_world_size), None
        )
        deadline = time.monotonic() + timeout
        while True:
            for local_rank, findings in found.items():
                path = self.exchange / str(local_rank) / FILE_NAME
                if findings is None and path.is_file():
                    found[local_rank] = json.loads(path.read_text(encoding="utf-8"))
            if all(f is not None for f in found.values()) or time.monotonic() >= deadline:
                return found
            time.sleep(0.05)


def _int(name: str, environ: Mapping[str, str]) -> int | None:
    try:
        return int(environ[name])
    except (KeyError, ValueError):
        return None


def current_launch(environ: Mapping[str, str] = os.environ) -> Launch | None:
    """The launch this process belongs to, or None when no launcher set ``LOCAL_RANK``."""
    local_rank = _int("LOCAL_RANK", environ)
    if local_rank is None:
        return None
    local_world_size = _int("LOCAL_WORLD_SIZE", environ) or local_rank + 1
    rank = _int("RANK", environ)
    exchange = None
    error_file = environ.get("TORCHELASTIC_ERROR_FILE")
    if error_file:
        # torchrun's layout: <launch attempt>/<local rank>/error.json
        rank_folder = Path(error_file).parent
        if rank_folder.name == str(local_rank) and rank_folder.is_dir():
            exchange = rank_folder.parent
    return Launch(
        rank=local_rank if rank is None else rank,
        local_rank=local_rank,
        local_world_size=local_world_size,
        exchange=exchange,
    )
