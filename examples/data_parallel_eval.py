"""A small, real data-parallel evaluation under torchrun, in the VLMEvalKit style.

Run it with ``torchrun --nproc_per_node=2 examples/data_parallel_eval.py``
after ``pip install ".[torch]"``; add ``--no-guard`` to see what goes wrong
without the guard. It runs on the CPU and needs no download. Started without
torchrun, it says how to start it and exits with status 2.

Every process builds a full copy of one tiny Llama model with
``device_map="auto"`` through a model registry guarded by one line (in
``build_model``, first below), evaluates its own shard of a small evaluation
set, and rank 0 gathers the results and prints a report ending in a one-line
verdict. The answer key is the tiny model's own greedy prediction, so a
correct data-parallel run scores 100%.

With ``--no-guard``, Transformers 4.50.0 to 4.53.3 see torchrun's
``WORLD_SIZE`` and shard the model across the processes instead, and the
script exits with status 1. How that shows depends on the launch:

- 2 processes: each process feeds its own samples through a model sharded
  with processes that feed other samples; the scores come out wrong without
  any error.
- 3 processes: the model's 4 attention heads do not divide by 3, so the
  sharded model crashes on every rank; the report says so.
- 1 process: ``WORLD_SIZE=1`` is enough to switch, so the model is still
  sharded, over one process. The scores are right, since one process holds
  every shard, but no process built the plain full copy it asked for.

The tiny model (made by ``tiny_model.py``, beside this script) goes to a new
private temporary folder per machine, removed at the end. ``--model-dir``
keeps it in a folder of your choice instead, reused by later runs only when
its manifest (each file's SHA-256) matches; any other existing folder there
is refused, never overwritten.
"""

from __future__ import annotations

import argparse
import os
import sys
from functools import partial
from pathlib import Path
from typing import Any

import torch.distributed as dist
from tiny_model import (
    ModelDirError,
    exit_unless_torchrun,
    one_line,
    print_report,
    process_group,
    score,
    shared_model_dir,
    verdict,
)
from transformers import AutoModelForCausalLM

from single_instance_build import GuardedRegistry, original_env


def build_model(model_dir: Path, guard: bool) -> TinyVLM:
    """Build the model as VLMEvalKit does: a registry of partials, one entry called by name."""
    registry: dict[str, Any] = {"tiny-llama": partial(TinyVLM, model_path=str(model_dir))}

    # THE GUARD, the one line this example is about. Entries of a GuardedRegistry
    # build with WORLD_SIZE hidden, so from_pretrained(device_map="auto") loads one
    # full copy in each process; WORLD_SIZE is back as soon as the entry returns.
    supported_VLM = GuardedRegistry(registry) if guard else registry  # noqa: N806

    model: TinyVLM = supported_VLM["tiny-llama"]()
    return model


class TinyVLM:
    """A VLMEvalKit-style model wrapper: its ``__init__`` loads the weights."""

    def __init__(self, model_path: str, **kwargs: Any) -> None:
        self.model = AutoModelForCausalLM.from_pretrained(model_path, device_map="auto", **kwargs)
        self.model.eval()
        # VLMEvalKit's wrappers look up the real world size while they are built.
        self.launch_world_size = original_env("WORLD_SIZE")


def evaluate(model_dir: Path, rank: int, world_size: int, guard: bool) -> dict[str, Any]:
    """Build the model and score this rank's shard: this rank's report, errors included."""
    try:
        report = score(build_model(model_dir, guard).model, model_dir, rank, world_size)
    except Exception as error:  # reported by rank 0 in one line, not as N tracebacks
        report = {"rank": rank, "sharded": None, "error": one_line(error)}
    report["world_size_after"] = os.environ.get("WORLD_SIZE")
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--no-guard", action="store_true", help="build without the guard, to see the failure"
    )
    parser.add_argument(
        "--model-dir",
        type=Path,
        help="keep the tiny model in this folder, made if absent and reused if its manifest "
        "matches (default: a new temporary folder, removed at the end)",
    )
    args = parser.parse_args()
    exit_unless_torchrun()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    # Like VLMEvalKit's run.py: one process group for the whole evaluation.
    with process_group() as (rank, world_size):
        try:
            with shared_model_dir(args.model_dir) as model_dir:
                report = evaluate(model_dir, rank, world_size, guard=not args.no_guard)
                reports: list[Any] = [None] * world_size if rank == 0 else []
                dist.gather_object(report, reports if rank == 0 else None, dst=0)
        except ModelDirError as error:  # the same on every rank
            if rank == 0:
                print(f"error: {error}", file=sys.stderr)
            return 2
    if rank != 0:
        return 0
    after = reports[0]["world_size_after"]
    line, status = verdict(
        reports, world_size, f"OK: every process built a full copy; WORLD_SIZE is back to {after}"
    )
    processes = f"{world_size} process{'es' if world_size > 1 else ''}"
    guard = "off" if args.no_guard else "on"
    print_report(f"data-parallel evaluation on {processes}, guard {guard}", reports, line)
    return status


if __name__ == "__main__":
    sys.exit(main())
