"""A small, real data-parallel evaluation under torchrun, in the VLMEvalKit style.

Run it with ``torchrun --nproc_per_node=2 examples/data_parallel_eval.py``
after ``pip install ".[torch]"``; add ``--no-guard`` to see what goes wrong
without the guard. It runs on the CPU and needs no download.

Every process builds a full copy of one tiny Llama model through a guarded
model registry with ``device_map="auto"``, evaluates its own shard of a small
evaluation set, and rank 0 gathers the results and prints a report. The answer
key is the tiny model's own greedy prediction, computed once in a single
process when the model is made, so a correct data-parallel run scores 100%.
With ``--no-guard``, Transformers 4.50.0 to 4.53.3 see torchrun's
``WORLD_SIZE`` and shard the model across the processes instead; each process
then feeds its own samples through a model sharded with processes that feed
other samples, the outputs come out wrong without any error, and the script
exits with status 1.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from single_instance_build import GuardedRegistry, original_env

SAMPLES = 24  # divisible by 1, 2, 3, 4, 6 and 8 ranks
PROMPT_LENGTH = 6
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
    prompts = torch.randint(
        0, VOCAB, (SAMPLES, PROMPT_LENGTH), generator=torch.Generator().manual_seed(1)
    )
    with torch.no_grad():
        answers = model(prompts).logits[:, -1].argmax(-1)
    staging = Path(tempfile.mkdtemp(dir=model_dir.parent, prefix=model_dir.name + "."))
    model.save_pretrained(staging)
    samples = [
        {"index": i, "prompt": p.tolist(), "answer": int(a)}
        for i, (p, a) in enumerate(zip(prompts, answers, strict=True))
    ]
    (staging / "eval_set.json").write_text(json.dumps(samples))
    staging.rename(model_dir)  # atomic: other ranks never see half a model


class TinyVLM:
    """A VLMEvalKit-style model wrapper: its ``__init__`` loads the weights."""

    def __init__(self, model_path: str, **kwargs: Any) -> None:
        self.model = AutoModelForCausalLM.from_pretrained(model_path, device_map="auto", **kwargs)
        self.model.eval()
        # VLMEvalKit's wrappers look up the real world size while they are built.
        self.launch_world_size = original_env("WORLD_SIZE")

    @property
    def sharded_parameters(self) -> int:
        return sum(isinstance(p, DTensor) for p in self.model.parameters())

    def predict(self, prompt: list[int]) -> int:
        with torch.no_grad():
            logits = self.model(torch.tensor([prompt])).logits
        if isinstance(logits, DTensor):
            logits = logits.full_tensor()
        return int(logits[0, -1].argmax())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--no-guard", action="store_true", help="build without the guard, to see the failure"
    )
    parser.add_argument(
        "--model-dir",
        type=Path,
        default=Path(tempfile.gettempdir()) / "single-instance-build-tiny-llama",
        help="where the tiny model is made, or reused (default: %(default)s)",
    )
    args = parser.parse_args()

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    # Like VLMEvalKit's run.py: one process group for the whole evaluation.
    dist.init_process_group("gloo")
    rank, world_size = dist.get_rank(), dist.get_world_size()
    if rank == 0 and not args.model_dir.exists():
        make_tiny_model(args.model_dir)
    dist.barrier()

    registry: dict[str, Any] = {"tiny-llama": partial(TinyVLM, model_path=str(args.model_dir))}
    supported_VLM = registry if args.no_guard else GuardedRegistry(registry)  # noqa: N806
    model = supported_VLM["tiny-llama"]()

    samples = json.loads((args.model_dir / "eval_set.json").read_text())
    shard = samples[rank::world_size]
    correct = sum(model.predict(sample["prompt"]) == sample["answer"] for sample in shard)
    report = {
        "rank": rank,
        "sharded_parameters": model.sharded_parameters,
        "parameters": sum(1 for _ in model.model.parameters()),
        "samples": len(shard),
        "correct": correct,
        "world_size_after": os.environ.get("WORLD_SIZE"),
    }
    reports: list[Any] = [None] * world_size if rank == 0 else []
    dist.gather_object(report, reports if rank == 0 else None, dst=0)

    status = 0
    if rank == 0:
        guard = "off" if args.no_guard else "on"
        print(f"data-parallel evaluation on {world_size} processes, guard {guard}")
        for r in reports:
            copy = (
                f"SHARDED ({r['sharded_parameters']} of {r['parameters']} parameters are DTensors)"
                if r["sharded_parameters"]
                else "full copy"
            )
            print(f"  rank {r['rank']}: {copy}, {r['correct']}/{r['samples']} correct")
        total = sum(r["correct"] for r in reports)
        print(f"accuracy: {total}/{SAMPLES} = {total / SAMPLES:.1%} (a correct run scores 100%)")
        if any(r["sharded_parameters"] for r in reports) or total != SAMPLES:
            print("FAILED: the model was sharded across the processes; the scores are wrong")
            status = 1
        else:
            after = reports[0]["world_size_after"]
            print(f"OK: every process built a full copy; WORLD_SIZE is back to {after}")
    dist.destroy_process_group()
    return status


if __name__ == "__main__":
    sys.exit(main())
