"""The tiny model the torchrun examples share, its folder, and the launch around it.

Not an example to run: ``data_parallel_eval.py``, ``unmodified_eval.py`` and
``ddp_finetune.py`` import it from beside them (``python`` and ``torchrun`` put a
script's folder first on ``sys.path``). It never imports single_instance_build,
so ``unmodified_eval.py`` stays a script that knows nothing of the package.

The model is a tiny random Llama (2 layers, 4 attention heads, 21 parameters),
saved with an evaluation set whose answer key is the model's own greedy
prediction, computed once in a single process: a correct data-parallel run
scores 100%. A folder appears whole or not at all (written beside it, then
renamed into place) and carries a manifest of each file's SHA-256. A folder
asked for by name is reused only when its manifest matches; any other existing
folder is refused, never overwritten.
"""

from __future__ import annotations

import gc
import hashlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor, _collective_utils, _redistribute
from torch.distributed.tensor.debug import _clear_sharding_prop_cache
from transformers import LlamaConfig, LlamaForCausalLM

SAMPLES = 24  # divisible by 1, 2, 3, 4, 6 and 8 ranks
PROMPT_LENGTH = 6
VOCAB = 128
MANIFEST = "single-instance-build-example.json"
MADE_BY = "single-instance-build examples/tiny_model.py, tiny Llama v1"
TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


class ModelDirError(ValueError):
    """A model folder refused, or one that cannot be made; the message says which and why."""


def make_tiny_model(model_dir: Path) -> None:
    """Save the tiny Llama, its answer key and a manifest into *model_dir*, made whole.

    If another process made the folder first, its folder is kept when its
    manifest matches (ModelDirError otherwise).
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
    """Raise ModelDirError unless *model_dir* is a whole model that this module made."""
    try:
        manifest = json.loads((model_dir / MANIFEST).read_text())
    except (OSError, ValueError):
        manifest = None
    if not isinstance(manifest, dict) or manifest.get("made_by") != MADE_BY:
        raise ModelDirError(
            f"--model-dir {str(model_dir)!r} exists but holds no manifest of this example "
            f"({MANIFEST}): choose another folder, or remove this one if it is yours"
        )
    try:
        hashes: dict[str, str] | None = file_hashes(model_dir)
    except OSError:  # a sub-folder, say: not what make_tiny_model writes
        hashes = None
    if manifest.get("sha256") != hashes:
        raise ModelDirError(
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


def exit_unless_torchrun() -> None:
    """Outside a torchrun launch, say how to start the script and exit with status 2."""
    missing = [name for name in TORCHRUN_VARIABLES if name not in os.environ]
    if missing:
        print(
            f"not started by torchrun ({', '.join(missing)} not set): this example runs "
            f"several processes, so start it with\n  torchrun --nproc_per_node=2 {sys.argv[0]}",
            file=sys.stderr,
        )
        sys.exit(2)


@contextmanager
def process_group(timeout: timedelta = timedelta(minutes=2)) -> Iterator[tuple[int, int]]:
    """Join torchrun's gloo process group for the block: ``(rank, world_size)``.

    The short *timeout* ends a run whose ranks wait for each other in vain
    instead of hanging it. On the way out, whatever happens, the group is
    destroyed and really freed (see :func:`free_device_meshes`), so no thread
    of it is left for the interpreter's exit. Hold no sharded model past the
    block: build and use it in a function called inside.
    """
    dist.init_process_group("gloo", timeout=timeout)
    try:
        yield dist.get_rank(), dist.get_world_size()
    finally:
        dist.destroy_process_group()
        free_device_meshes()


def free_device_meshes() -> None:
    """Drop the DeviceMeshes that torch's DTensor caches keep after their model is gone.

    A model that Transformers sharded leaves its DeviceMesh in these caches,
    and the mesh holds the gloo process group. So ``destroy_process_group``
    alone leaves the group and its threads alive until the interpreter exits,
    and tearing them down there sometimes kills the process with SIGABRT
    ("terminate called without an active exception") after its work is done.
    The caches are private to torch: this is for the torch of the ``[torch]`` extra.
    """
    _clear_sharding_prop_cache()
    _redistribute.clear_redistribute_planner_cache()
    _redistribute._gen_transform_infos.cache_clear()
    _collective_utils.MeshTopoInfo.build_from_mesh.cache_clear()
    gc.collect()  # the mesh is in reference cycles: free it, and the group, now


@contextmanager
def shared_model_dir(requested: Path | None) -> Iterator[Path]:
    """The model folder, prepared by local rank 0 of each machine, for every rank.

    A temporary folder (*requested* None) is removed at the end, once every
    rank is done with it.

    Raises:
        ModelDirError: on every rank, when *requested* is refused or cannot be made.
    """
    node, local_rank = os.environ.get("GROUP_RANK", "0"), int(os.environ.get("LOCAL_RANK", "0"))
    prepared: tuple[str, str | None, str | None] | None = None
    if local_rank == 0:
        try:
            prepared = (node, str(prepare_model_dir(requested)), None)
        except ModelDirError as error:  # a folder it refuses
            prepared = (node, None, str(error))
        except OSError as error:  # a folder it cannot write
            where = "a temporary folder" if requested is None else str(requested)
            prepared = (node, None, f"cannot make the model in {where}: {error}")
    everyone: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, prepared)
    _, path, problem = next(p for p in everyone if p is not None and p[0] == node)
    if problem is not None:
        raise ModelDirError(problem)
    model_dir = Path(path)
    try:
        yield model_dir
        dist.barrier()  # every rank is done with the model before it is removed
    finally:  # after an error too: torchrun stops the other ranks when one fails
        if requested is None and local_rank == 0:
            shutil.rmtree(model_dir.parent, ignore_errors=True)


def sharded_parameters(model: Any) -> int:
    """How many of *model*'s parameters are DTensors: 0 for a full copy."""
    return sum(isinstance(p, DTensor) for p in model.parameters())


def describe_copy(sharded: int | None, parameters: int) -> str:
    """What a rank holds, in the words of the reports."""
    if sharded is None:
        return "build failed"
    if sharded:
        return f"SHARDED ({sharded} of {parameters} parameters are DTensors)"
    return "full copy"


def one_line(error: BaseException) -> str:
    """*error* as one short line, for a report that gathers every rank's."""
    first_line = (str(error).strip().splitlines() or [""])[0]
    return f"{type(error).__name__}: {first_line[:120]}"


def score(model: Any, model_dir: Path, rank: int, world_size: int) -> dict[str, Any]:
    """Evaluate this rank's shard of the evaluation set with *model*: this rank's report."""
    report: dict[str, Any] = {
        "rank": rank,
        "sharded": sharded_parameters(model),
        "parameters": sum(1 for _ in model.parameters()),
        "error": None,
    }
    samples = json.loads((model_dir / "eval_set.json").read_text())[rank::world_size]
    report["samples"] = len(samples)
    try:
        report["correct"] = sum(predict(model, s["prompt"]) == s["answer"] for s in samples)
    except RuntimeError as error:  # a sharded model that cannot run: reported, not raised
        report["error"] = one_line(error)
    return report


def predict(model: Any, prompt: list[int]) -> int:
    """The model's greedy next token after *prompt*."""
    with torch.no_grad():
        logits = model(torch.tensor([prompt])).logits
    if isinstance(logits, DTensor):
        logits = logits.full_tensor()
    return int(logits[0, -1].argmax())


def print_report(title: str, reports: list[dict[str, Any]], verdict: str) -> None:
    """Print the gathered reports of an evaluation: a line per rank, the accuracy, the verdict."""
    print(title)
    for r in reports:
        copy = describe_copy(r["sharded"], r.get("parameters", 0))
        outcome = (
            f"crashed: {r['error']}" if r["error"] else f"{r['correct']}/{r['samples']} correct"
        )
        print(f"  rank {r['rank']}: {copy}, {outcome}")
    total = sum(r["correct"] for r in reports if not r["error"])
    print(f"accuracy: {total}/{SAMPLES} = {total / SAMPLES:.1%} (a correct run scores 100%)")
    print(verdict)


def verdict(reports: list[dict[str, Any]], world_size: int, ok: str) -> tuple[str, int]:
    """The last line of an evaluation's report, *ok* if all is well, and the exit status."""
    sharded = any(r["sharded"] for r in reports)
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
    return ok, 0
