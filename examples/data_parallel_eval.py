"""A small, real data-parallel evaluation under torchrun, in the VLMEvalKit style.

Run it with ``torchrun --nproc_per_node=2 examples/data_parallel_eval.py``
after ``pip install ".[torch]"``; add ``--no-guard`` to see what goes wrong
without the guard. It runs on the CPU and needs no download. Started without
torchrun, it says how to start it and exits with status 2.

Every process builds a full copy of one tiny Llama model through a guarded
model registry with ``device_map="auto"``, evaluates its own shard of a small
evaluation set, and rank 0 gathers the results and prints a report ending in
a one-line verdict. The answer key is the tiny model's own greedy prediction,
computed once in a single process when the model is made, so a correct
data-parallel run scores 100%.

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

The tiny model goes to a new private temporary folder per machine, removed at
the end. ``--model-dir`` keeps it in a folder of your choice instead, reused
by later runs only when its manifest (each file's SHA-256) matches; any other
existing folder there is refused, never overwritten.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
from datetime import timedelta
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
MANIFEST = "single-instance-build-example.json"
MADE_BY = "single-instance-build examples/data_parallel_eval.py, tiny Llama v1"
TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def make_tiny_model(model_dir: Path) -> None:
    """Save a tiny random Llama, its answer key and a manifest, computed in this one process.

    The folder appears whole or not at all: it is written beside *model_dir*
    and renamed into place. If another process got there first, its folder is
    kept when its manifest matches (ValueError otherwise).
    """
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
    staging = Path(tempfile.mkdtemp(dir=model_dir.parent, prefix=model_dir.name + ".partial-"))
    try:
        model.save_pretrained(staging)
        samples = [
            {"index": i, "prompt": p.tolist(), "answer": int(a)}
            for i, (p, a) in enumerate(zip(prompts, answers, strict=True))
        ]
        (staging / "eval_set.json").write_text(json.dumps(samples))
        manifest = {"made_by": MADE_BY, "sha256": file_hashes(staging)}
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=1))  # last: marks it whole
        try:
            staging.rename(model_dir)  # atomic; replaces nothing but an empty folder
        except OSError:
            if not model_dir.is_dir():
                raise
            check_model_dir(model_dir)  # another process made it first
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def file_hashes(folder: Path) -> dict[str, str]:
    """The SHA-256 of every file in *folder* but the manifest, by name."""
    return {
        path.name: hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.iterdir())
        if path.name != MANIFEST
    }


def check_model_dir(model_dir: Path) -> None:
    """Raise ValueError unless *model_dir* is a whole model this script made."""
    try:
        manifest = json.loads((model_dir / MANIFEST).read_text())
    except (OSError, ValueError):
        manifest = None
    if not isinstance(manifest, dict) or manifest.get("made_by") != MADE_BY:
        raise ValueError(
            f"--model-dir {str(model_dir)!r} exists but holds no manifest of this example "
            f"({MANIFEST}): choose another folder, or remove this one if it is yours"
        )
    try:
        hashes: dict[str, str] | None = file_hashes(model_dir)
    except OSError:  # a sub-folder, say: not what this script writes
        hashes = None
    if manifest.get("sha256") != hashes:
        raise ValueError(
            f"--model-dir {str(model_dir)!r}: its files do not match its manifest (changed, or "
            "written by hand); remove the folder and run again to make it afresh"
        )


def prepare_model_dir(requested: Path | None) -> Path:
    """The model folder: *requested*, checked or made; else a new private temporary one."""
    if requested is None:
        model_dir = Path(tempfile.mkdtemp(prefix="single-instance-build-example-")) / "model"
        make_tiny_model(model_dir)
        return model_dir
    if requested.exists():
        check_model_dir(requested)
    else:
        make_tiny_model(requested)
    return requested


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


def evaluate(model_dir: Path, rank: int, world_size: int, guard: bool) -> dict[str, Any]:
    """Build the model as VLMEvalKit does and score this rank's shard: this rank's report."""
    report: dict[str, Any] = {"rank": rank, "sharded_parameters": None, "error": None}
    try:
        registry: dict[str, Any] = {"tiny-llama": partial(TinyVLM, model_path=str(model_dir))}
        supported_VLM = GuardedRegistry(registry) if guard else registry  # noqa: N806
        model = supported_VLM["tiny-llama"]()
        report["sharded_parameters"] = model.sharded_parameters
        report["parameters"] = sum(1 for _ in model.model.parameters())
        samples = json.loads((model_dir / "eval_set.json").read_text())
        shard = samples[rank::world_size]
        report["samples"] = len(shard)
        report["correct"] = sum(model.predict(s["prompt"]) == s["answer"] for s in shard)
    except Exception as error:  # reported by rank 0 in one line, not as N tracebacks
        first_line = (str(error).strip().splitlines() or [""])[0]
        report["error"] = f"{type(error).__name__}: {first_line[:120]}"
    report["world_size_after"] = os.environ.get("WORLD_SIZE")
    return report


def describe(report: dict[str, Any]) -> str:
    """One rank's line of the report."""
    sharded = report["sharded_parameters"]
    if sharded is None:
        copy = "build failed"
    elif sharded:
        copy = f"SHARDED ({sharded} of {report['parameters']} parameters are DTensors)"
    else:
        copy = "full copy"
    if report["error"]:
        return f"  rank {report['rank']}: {copy}, crashed: {report['error']}"
    return f"  rank {report['rank']}: {copy}, {report['correct']}/{report['samples']} correct"


def verdict(reports: list[dict[str, Any]], world_size: int) -> tuple[str, int]:
    """The last line of the report, and the exit status."""
    sharded = any(r["sharded_parameters"] for r in reports)
    crashed = [r for r in reports if r["error"]]
    if crashed:
        ranks = ", ".join(str(r["rank"]) for r in crashed)
        what = (
            "the model was sharded across the processes, and the sharded model"
            if sharded
            else "the evaluation"
        )
        plural = "s" if len(crashed) > 1 else ""
        return f"FAILED: {what} crashed on rank{plural} {ranks}: {crashed[0]['error']}", 1
    total = sum(r["correct"] for r in reports)
    if sharded and total != SAMPLES:
        return "FAILED: the model was sharded across the processes; the scores are wrong", 1
    if sharded:
        why = "one process holds every shard" if world_size == 1 else "chance"
        return (
            f"FAILED: the model was sharded (tensor parallel over {world_size} process"
            f"{'es' if world_size > 1 else ''}), not built as one full copy per process; the "
            f"scores are right only because {why}",
            1,
        )
    if total != SAMPLES:
        return "FAILED: every process built a full copy, but the scores are wrong", 1
    after = reports[0]["world_size_after"]
    return f"OK: every process built a full copy; WORLD_SIZE is back to {after}", 0


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
    missing = [name for name in TORCHRUN_VARIABLES if name not in os.environ]
    if missing:
        print(
            f"not started by torchrun ({', '.join(missing)} not set): this example runs "
            "several processes, so start it with\n"
            f"  torchrun --nproc_per_node=2 {sys.argv[0]}",
            file=sys.stderr,
        )
        return 2

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    # Like VLMEvalKit's run.py: one process group for the whole evaluation. A short
    # timeout, so that a rank stuck in a collective ends the run instead of hanging it.
    dist.init_process_group("gloo", timeout=timedelta(minutes=2))
    rank, world_size = dist.get_rank(), dist.get_world_size()
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    node = os.environ.get("GROUP_RANK", "0")

    # Local rank 0 of each machine prepares the model; the others learn where it is.
    prepared: tuple[str, str | None, str | None] | None = None
    if local_rank == 0:
        try:
            prepared = (node, str(prepare_model_dir(args.model_dir)), None)
        except ValueError as error:
            prepared = (node, None, str(error))
    everyone: list[Any] = [None] * world_size
    dist.all_gather_object(everyone, prepared)
    _, path, problem = next(p for p in everyone if p is not None and p[0] == node)

    status = 2
    if problem is not None:
        if rank == 0:
            print(f"error: {problem}", file=sys.stderr)
    else:
        model_dir = Path(path)
        report = evaluate(model_dir, rank, world_size, guard=not args.no_guard)
        reports: list[Any] = [None] * world_size if rank == 0 else []
        dist.gather_object(report, reports if rank == 0 else None, dst=0)
        status = 0
        if rank == 0:
            print(
                f"data-parallel evaluation on {world_size} process{'es' if world_size > 1 else ''}"
                f", guard {'off' if args.no_guard else 'on'}"
            )
            for r in reports:
                print(describe(r))
            total = sum(r["correct"] for r in reports if not r["error"])
            print(
                f"accuracy: {total}/{SAMPLES} = {total / SAMPLES:.1%} (a correct run scores 100%)"
            )
            line, status = verdict(reports, world_size)
            print(line)
        dist.barrier()  # every rank is done with the model before it is removed
        if args.model_dir is None and local_rank == 0:
            shutil.rmtree(model_dir.parent)
    dist.destroy_process_group()
    return status if rank == 0 else 0


if __name__ == "__main__":
    sys.exit(main())
