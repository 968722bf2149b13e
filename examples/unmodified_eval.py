"""A data-parallel evaluation script that knows nothing of single-instance-build.

It stands for code you don't own: it never imports this package. Fix its
launch without editing it, after ``pip install ".[torch]"``::

    torchrun --nproc_per_node=2 -m single_instance_build.run examples/unmodified_eval.py

or through the environment, for a launch line that can't carry ``-m``::

    SINGLE_INSTANCE_BUILD=1 torchrun --nproc_per_node=2 examples/unmodified_eval.py

Plain ``torchrun --nproc_per_node=2 examples/unmodified_eval.py`` shows the failure.
It runs on the CPU and needs no download.

Every process loads one tiny Llama (``tiny_model.py``, beside this script, makes
it in a temporary folder on each machine; it doesn't import this package either) with
``device_map="auto"``, scores its own shard of a small evaluation set and rank 0
prints the report. The answer key is the model's own greedy prediction, computed
in one process when the model is made, so a correct data-parallel run scores
100%. Transformers 4.50.0 to 4.53.3 see torchrun's ``WORLD_SIZE`` in that load
and shard the model across the processes instead, and the scores come out
wrong without any error. Exit status 0 when every process had a full copy and
scored 100%, 1 otherwise.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch.distributed as dist
from tiny_model import (
    exit_unless_torchrun,
    print_report,
    process_group,
    score,
    shared_model_dir,
    verdict,
)
from transformers import AutoModelForCausalLM


def evaluate(model_dir: Path, rank: int, world_size: int) -> dict[str, Any]:
    """Load the model as any script does and score this rank's shard: this rank's report."""
    model = AutoModelForCausalLM.from_pretrained(model_dir, device_map="auto").eval()
    return score(model, model_dir, rank, world_size)


def main() -> int:
    exit_unless_torchrun()
    with process_group() as (rank, world_size), shared_model_dir(None) as model_dir:
        reports: list[Any] = [None] * world_size
        dist.all_gather_object(reports, evaluate(model_dir, rank, world_size))
    line, status = verdict(
        reports, world_size, "OK: every process evaluated a full copy of the model"
    )
    if rank == 0:
        print_report(f"evaluation on {world_size} processes", reports, line)
    return status


if __name__ == "__main__":
    sys.exit(main())
