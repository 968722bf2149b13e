"""A data-parallel evaluation script that knows nothing of single-instance-build.

It stands for code you don't own: it never imports this package. Fix its
launch without editing it, after ``pip install ".[torch]"``::

    torchrun --nproc_per_node=2 -m single_instance_build.run examples/unmodified_eval.py

or, where the launch line can't take ``-m`` (a console script, ``accelerate launch``),
through the environment::

    SINGLE_INSTANCE_BUILD=1 torchrun --nproc_per_node=2 examples/unmodified_eval.py

Plain ``torchrun --nproc_per_node=2 examples/unmodified_eval.py`` shows the failure.
It runs on the CPU, on one machine, and needs no download.

Every process loads one tiny Llama, made by rank 0 in a temporary folder, with
``device_map="auto"``, scores its own shard of a small evaluation set and rank 0
prints the report. The answer key is the model's own greedy prediction, computed
in one process when the model is made, so a correct data-parallel run scores
100%. Transformers 4.50.0 to 4.53.3 see torchrun's ``WORLD_SIZE`` in that load
and shard the model across the processes instead, and the scores come out
wrong without any error. Exit status 0 when every process had a full copy and
scored 100%, 1 otherwise.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

SAMPLES = 24  # divisible by 1, 2, 3, 4, 6 and 8 ranks
VOCAB = 128


def make_tiny_model(model_dir: Path) -> None:
    """Save a tiny random Llama and its answer key, computed in this one process."""
    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        vocab_size=VOCAB,
    )
    model = LlamaForCausalLM(config).eval()
    prompts = torch.randint(0, VOCAB, (SAMPLES, 6), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        answers = model(prompts).logits[:, -1].argmax(-1)
    model.save_pretrained(model_dir)
    samples = [
        {"prompt": p.tolist(), "answer": int(a)} for p, a in zip(prompts, answers, strict=True)
    ]
    (model_dir / "eval_set.json").write_text(json.dumps(samples))


def predict(model: Any, prompt: list[int]) -> int:
    with torch.no_grad():
        logits = model(torch.tensor([prompt])).logits
    if isinstance(logits, DTensor):
        logits = logits.full_tensor()
    return int(logits[0, -1].argmax())


def main() -> int:
    dist.init_process_group("gloo")
    rank, world_size = dist.get_rank(), dist.get_world_size()
    where: list[Any] = [tempfile.mkdtemp(prefix="unmodified-eval-") if rank == 0 else None]
    dist.broadcast_object_list(where, src=0)
    model_dir = Path(where[0])
    if rank == 0:
        make_tiny_model(model_dir)
    dist.barrier()

    model = AutoModelForCausalLM.from_pretrained(model_dir, device_map="auto").eval()
    samples = json.loads((model_dir / "eval_set.json").read_text())
    shard = samples[rank::world_size]
    report = {
        "rank": rank,
        "sharded": sum(isinstance(p, DTensor) for p in model.parameters()),
        "parameters": sum(1 for _ in model.parameters()),
        "samples": len(shard),
        "correct": sum(predict(model, s["prompt"]) == s["answer"] for s in shard),
    }
    reports: list[Any] = [None] * world_size
    dist.all_gather_object(reports, report)
    total = sum(r["correct"] for r in reports)
    sharded = any(r["sharded"] for r in reports)
    if rank == 0:
        print(f"evaluation on {world_size} processes")
        for r in reports:
            copy = (
                f"SHARDED ({r['sharded']} of {r['parameters']} parameters are DTensors)"
                if r["sharded"]
                else "full copy"
            )
            print(f"  rank {r['rank']}: {copy}, {r['correct']}/{r['samples']} correct")
        print(f"accuracy: {total}/{SAMPLES} = {total / SAMPLES:.1%} (a correct run scores 100%)")
        if sharded:
            print("FAILED: the model was sharded across the processes; the scores are wrong")
        elif total != SAMPLES:
            print("FAILED: every process had a full copy, yet the scores are wrong")
        else:
            print("OK: every process evaluated a full copy of the model")
    dist.barrier()
    if rank == 0:
        shutil.rmtree(model_dir, ignore_errors=True)
    dist.destroy_process_group()
    return 0 if total == SAMPLES and not sharded else 1


if __name__ == "__main__":
    sys.exit(main())
