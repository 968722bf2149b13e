"""One rank of a launch where only rank 0 loads a model: a judge or verifier model.

Started by the tests through ``torchrun``: ``one_rank_worker.py [--timeout=SECONDS]
MODEL_DIR REPORT_DIR``. Like the user code it stands for, it never imports this package
and starts no process group. The other ranks load nothing and write their report;
rank 0 waits for those reports, so the others have done their part, then loads the
model with ``device_map="auto"``. Each rank writes ``REPORT_DIR/rank<RANK>.json``
and exits 0, rank 0 even when its load raises: the test judges the report.

Unguarded, Transformers 4.53.3 turns rank 0's load into tensor parallelism and calls
``torch.distributed.init_process_group(backend, rank, world_size)`` with no timeout,
so torch's default applies: 30 minutes for gloo (``default_pg_timeout``; no
environment variable changes it). Rank 0 then waits for ranks that never join. With
``--timeout``, the worker shortens that default before the load, so that a test
sees the whole wait end in seconds; the report keeps torch's own default.
"""

from __future__ import annotations

import argparse
import os
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch.distributed
import torch.distributed.distributed_c10d as c10d
from torch.distributed.tensor import DTensor
from transformers import AutoModelForCausalLM
from unmodified_load import write_report


def causes(error: BaseException) -> list[str]:
    """The error and the chain of its causes, one ``Type: first line`` each."""
    chain: list[str] = []
    current: BaseException | None = error
    while current is not None and len(chain) < 8:
        chain.append(f"{type(current).__name__}: {(str(current).splitlines() or [''])[0][:300]}")
        current = current.__cause__ or current.__context__
    return chain


def wait_for(paths: list[Path], limit: float = 120.0) -> None:
    """Return once every file in *paths* exists; TimeoutError after *limit* seconds."""
    deadline = time.monotonic() + limit
    while not all(path.exists() for path in paths):
        if time.monotonic() > deadline:
            raise TimeoutError(f"the other ranks wrote no report in {limit:.0f} s")
        time.sleep(0.05)


def main(model_dir: str, report_dir: str, timeout_seconds: float | None = None) -> None:
    rank = int(os.environ["RANK"])
    report: dict[str, Any] = {
        "rank": rank,
        "default_pg_timeout_seconds": c10d.default_pg_timeout.total_seconds(),
    }
    if timeout_seconds is not None:
        c10d.default_pg_timeout = timedelta(seconds=timeout_seconds)
    if rank == 0:
        world_size = int(os.environ["WORLD_SIZE"])
        others = [Path(report_dir, f"rank{r}.json") for r in range(1, world_size)]
        wait_for(others)  # nothing the other ranks do from now on joins a process group
        start = time.perf_counter()
        try:
            model = AutoModelForCausalLM.from_pretrained(model_dir, device_map="auto")
        except Exception as error:  # what the test judges: the wait, then this error
            report["error"] = causes(error)
        else:
            report["parameters"] = sum(1 for _ in model.parameters())
            report["dtensor_parameters"] = sum(isinstance(p, DTensor) for p in model.parameters())
        report["load_seconds"] = time.perf_counter() - start
    report["process_group_started"] = torch.distributed.is_initialized()
    write_report(report_dir, report)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--timeout", type=float, help="the process-group timeout, in seconds")
    parser.add_argument("model_dir")
    parser.add_argument("report_dir")
    arguments = parser.parse_args()
    main(arguments.model_dir, arguments.report_dir, arguments.timeout)
