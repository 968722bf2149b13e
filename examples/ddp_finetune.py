"""Data-parallel fine-tuning (DDP) of a model loaded with ``device_map="auto"``, under torchrun.

Run it with ``torchrun --nproc_per_node=2 examples/ddp_finetune.py`` after
``pip install ".[torch]"``; add ``--no-guard`` to see what goes wrong without
the guard. It runs on the CPU with the gloo backend and needs no download:
the first process of each machine makes a tiny random Llama (``tiny_model.py``,
beside this script) in a temporary folder, removed at the end.

Every process loads the model with ``device_map="auto"``, as fine-tuning
scripts grown from inference code do, wraps it in
``DistributedDataParallel`` and trains a few steps on its own batch.
Transformers 4.50.0 to 4.53.3 see torchrun's ``WORLD_SIZE`` in that call and
shard the model across the processes as DTensors (Transformers issue 38771),
so DDP fails on every rank with ``RuntimeError: aten.cat.default got mixed
torch.Tensor and DTensor``. One line at the top of the entry point,
``guard_transformers()``, hides ``WORLD_SIZE`` from that one call only: each
process loads a full copy, and DDP, which needs the variable, still sees it.

Exit status 0 when it trained as data parallel (a full copy on every rank, the
loss falling, the replicas identical afterwards); 1 when it finds the model
sharded, or the training failed.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from tiny_model import (
    VOCAB,
    describe_copy,
    exit_unless_torchrun,
    process_group,
    sharded_parameters,
    shared_model_dir,
)
from torch.nn.parallel import DistributedDataParallel
from torch.nn.utils import parameters_to_vector
from transformers import AutoModelForCausalLM

from single_instance_build import guard_transformers


def train(model: Any, rank: int, steps: int) -> list[float]:
    """Train *steps* steps of DDP on this rank's own batch; the losses, first to last."""
    ddp = DistributedDataParallel(model)  # broadcasts rank 0's parameters to every rank
    optimizer = torch.optim.AdamW(ddp.parameters(), lr=1e-3)
    batch = torch.randint(0, VOCAB, (4, 16), generator=torch.Generator().manual_seed(rank))
    losses = []
    for _ in range(steps):
        loss = ddp(input_ids=batch, labels=batch).loss
        optimizer.zero_grad()
        loss.backward()  # DDP averages the gradients of all ranks here
        optimizer.step()
        losses.append(loss.item())  # a plain number: no graph kept, nothing to warn about
    return losses


def fine_tune(
    model_dir: Path, rank: int, world_size: int, steps: int
) -> tuple[list[Any], float | None]:
    """Load, train and compare: every rank's report, and how far the replicas drifted apart."""
    model = AutoModelForCausalLM.from_pretrained(model_dir, device_map="auto")
    report: dict[str, Any] = {
        "rank": rank,
        "parameters": sum(1 for _ in model.parameters()),
        "sharded": sharded_parameters(model),
        "world_size_after": os.environ.get("WORLD_SIZE"),
    }
    try:
        report["losses"] = train(model, rank, steps)
    except RuntimeError as error:
        report["error"] = f"{type(error).__name__}: {str(error).splitlines()[0]}"
    reports: list[Any] = [None] * world_size
    dist.all_gather_object(reports, report)
    if any("error" in r for r in reports):
        return reports, None
    # Every rank trained: compare the replicas with rank 0's.
    weights = parameters_to_vector(model.parameters()).detach()
    rank0_weights = weights.clone()
    dist.broadcast(rank0_weights, src=0)
    drifts: list[Any] = [None] * world_size
    dist.all_gather_object(drifts, (weights - rank0_weights).abs().max().item())
    return reports, max(drifts)


def verdict_of(reports: list[Any], drift: float | None, steps: int) -> tuple[str, int]:
    """The last line of the report and the exit status, the same on every rank."""
    if any(r["sharded"] for r in reports):
        return (
            'FAILED: from_pretrained(device_map="auto") sharded the model across the '
            "processes; DDP cannot train it as data parallel",
            1,
        )
    if drift is None:
        return "FAILED: the training raised on some rank", 1
    if drift != 0.0:
        return f"FAILED: the replicas differ after training (by up to {drift})", 1
    if not all(r["losses"][-1] < r["losses"][0] for r in reports):
        return "FAILED: the loss did not fall on every rank", 1
    return (
        f"OK: trained as data parallel; the {len(reports)} replicas are identical after "
        f"{steps} steps; WORLD_SIZE is {reports[0]['world_size_after']} again for DDP",
        0,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--no-guard", action="store_true", help="load without the guard, to see the failure"
    )
    parser.add_argument("--steps", type=int, default=5, help="training steps (default: 5)")
    args = parser.parse_args()
    exit_unless_torchrun()
    if not args.no_guard:
        guard_transformers()  # the whole fix: from_pretrained no longer sees WORLD_SIZE

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with process_group() as (rank, world_size), shared_model_dir(None) as model_dir:
        reports, drift = fine_tune(model_dir, rank, world_size, args.steps)
    verdict, status = verdict_of(reports, drift, args.steps)
    if rank == 0:
        print(
            f"DDP fine-tuning on {world_size} processes, guard {'off' if args.no_guard else 'on'}"
        )
        for r in reports:
            outcome = (
                f"DDP failed: {r['error']}"
                if "error" in r
                else f"loss {r['losses'][0]:.3f} -> {r['losses'][-1]:.3f} in {args.steps} steps"
            )
            print(f"  rank {r['rank']}: {describe_copy(r['sharded'], r['parameters'])}, {outcome}")
        print(verdict)
    return status


if __name__ == "__main__":
    sys.exit(main())
