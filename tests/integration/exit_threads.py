"""Run a script as ``__main__`` and record the threads still alive when the interpreter exits.

Started by the tests through ``torchrun``: ``exit_threads.py REPORT_DIR SCRIPT [ARGS...]``.
An ``atexit`` handler, which runs before the interpreter is torn down, writes
the names of this process's threads (``/proc/self/task/*/comm``) to
``REPORT_DIR/rank<RANK>.json``. A torch.distributed thread still alive there
is torn down during interpreter finalization, which can abort the process.
"""

from __future__ import annotations

import atexit
import json
import os
import runpy
import sys
from pathlib import Path


def write_thread_names(report_dir: Path) -> None:
    tasks = Path("/proc/self/task")
    names = sorted((task / "comm").read_text().strip() for task in tasks.iterdir())
    report = {"rank": int(os.environ["RANK"]), "threads_at_exit": names}
    (report_dir / f"rank{os.environ['RANK']}.json").write_text(json.dumps(report))


if __name__ == "__main__":
    report_dir, script = Path(sys.argv[1]), sys.argv[2]
    atexit.register(write_thread_names, report_dir)
    sys.argv = sys.argv[2:]
    sys.path.insert(0, str(Path(script).resolve().parent))  # as python does for a script
    runpy.run_path(script, run_name="__main__")
