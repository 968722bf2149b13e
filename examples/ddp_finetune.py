"""Data-parallel fine-tuning (DDP) of a model loaded with ``device_map="auto"``, under torchrun.

Run it with ``torchrun --nproc_per_node=2 examples/ddp_finetune.py`` after
``pip install ".[torch]"``; add ``--no-guard`` to see what goes wrong without
the guard. It runs on the CPU with the gloo backend, on one machine, and needs
no download: rank 0 makes a tiny random Llama in a temporary folder.

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
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor
from torch.nn.parallel import DistributedDataParallel
from torch.nn.utils import parameters_to_vector
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from single_instance_build import guard_transformers

VOCAB = 128


def make_tiny_model(model_dir: Path) -> None:
    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        vocab_size=VOCAB,
    )
    LlamaForCausalLM(config).save_pretrained(model_dir)


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
        losses.append(float(loss))
    return losses


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
    if not args.no_guard:
        guard_transformers()  # the whole fix: from_pretrained no longer sees WORLD_SIZE

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    dist.init_process_group("gloo")
    rank, world_size = dist.get_rank(), dist.get_world_size()
    where: list[Any] = [tempfile.mkdtemp(prefix="ddp-finetune-") if rank == 0 else None]
    dist.broadcast_object_list(where, src=0)
    model_dir = Path(where[0], "tiny-llama")
    if rank == 0:
        make_tiny_model(model_dir)
    dist.barrier()

    model = AutoModelForCausalLM.from_pretrained(model_dir, device_map="auto")
    report: dict[str, Any] = {
        "rank": rank,
        "parameters": sum(1 for _ in model.parameters()),
        "sharded": sum(isinstance(p, DTensor) for p in model.parameters()),
        "world_size_after": os.environ.get("WORLD_SIZE"),
    }
    try:
        report["losses"] = train(model, rank, args.steps)
    except RuntimeError as error:
        report["error"] = f"{type(error).__name__}: {str(error).splitlines()[0]}"
    reports: list[Any] = [None] * world_size
    dist.all_gather_object(reports, report)
    drift: float | None = None
    if not any("error" in r for r in reports):  # every rank trained: compare the replicas
        weights = parameters_to_vector(model.parameters()).detach()
        rank0_weights = weights.clone()
        dist.broadcast(rank0_weights, src=0)
        drift = float((weights - rank0_weights).abs().max())
        drifts: list[Any] = [None] * world_size
        dist.all_gather_object(drifts, drift)
        drift = max(drifts)

    verdict, status = verdict_of(reports, drift, args.steps)
    if rank == 0:
        guard = "off" if args.no_guard else "on"
        print(f"DDP fine-tuning on {world_size} processes, guard {guard}")
        for r in reports:
            copy = (
                f"SHARDED ({r['sharded']} of {r['parameters']} parameters are DTensors)"
                if r["sharded"]
                else "full copy"
            )
            outcome = (
                f"DDP failed: {r['error']}"
                if "error" in r
                else f"loss {r['losses'][0]:.3f} -> {r['losses'][-1]:.3f} in {args.steps} steps"
            )
            print(f"  rank {r['rank']}: {copy}, {outcome}")
        print(verdict)
    dist.barrier()
    if rank == 0:
        shutil.rmtree(where[0], ignore_errors=True)
    dist.destroy_process_group()
    return status


if __name__ == "__main__":
    sys.exit(main())
