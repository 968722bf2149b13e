"""One rank of a training job, as an engine runs it: HF Trainer, PEFT, TRL, spawn, DeepSpeed.

Runs in the venv of ``test_engines.py``. Started as user code is, by the engine's own
launcher: ``engine_worker.py JOB MODEL_DIR REPORT_DIR [--reference] [--guard-call]``,
where JOB is

- ``trainer``: ``transformers.Trainer`` on a model loaded with ``device_map="auto"``;
- ``peft``: the same with a LoRA adapter (``peft.get_peft_model``) on the model;
- ``trl``: TRL's ``SFTTrainer`` on a model loaded with ``device_map="auto"``, then its
  ``GRPOTrainer`` loading the model itself with ``model_init_kwargs={"device_map": "auto"}``;
- ``spawn``: ``torch.multiprocessing.spawn`` of 2 workers, with ``WORLD_SIZE``,
  ``MASTER_ADDR`` and ``MASTER_PORT`` set by this script as users do, each worker
  training the model with ``DistributedDataParallel`` itself.

Each run is recorded by name: the DTensor parameters of the model as the engine
trains it and its losses, or the error it raised. With ``--reference`` each job runs
twice: as written, then with ``WORLD_SIZE`` popped by hand around the load, which is
what the guard should amount to. ``--guard-call`` calls ``guard_transformers()`` first
(in each spawned worker for ``spawn``); otherwise whatever guards the job comes from
outside (the launcher or ``SINGLE_INSTANCE_BUILD``). A leading ``--local_rank=N`` or
``--local-rank=N`` (DeepSpeed's launcher and ``torch.distributed.launch`` put one
there) is taken as plain Python scripts take it.

Every rank writes ``rankN.json`` only when its work is done, and before the process
group ends: a rank that aborts at exit afterwards (gloo's ``terminate called without
an active exception`` on torch 2.13) has reported already.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor

PACKAGE_IMPORTED_AT_START = "single_instance_build" in sys.modules  # by the launcher or .pth
VOCAB = 128  # of the tiny Llama; lm_eval_worker.py's tokenizer: 3 special tokens, 125 words
STEPS = 3
LOGGED = ("loss", "grad_norm", "reward", "entropy")  # the numbers of a step that training makes
Run = dict[str, Any]


@contextmanager
def world_size_popped_by_hand(reference: bool) -> Iterator[None]:
    """For the reference: the load without ``WORLD_SIZE``, put back as it was afterwards."""
    saved = os.environ.pop("WORLD_SIZE") if reference else None
    try:
        yield
    finally:
        if saved is not None:
            os.environ["WORLD_SIZE"] = saved


def load(model_dir: str, reference: bool) -> Any:
    from transformers import AutoModelForCausalLM

    with world_size_popped_by_hand(reference):
        return AutoModelForCausalLM.from_pretrained(model_dir, device_map="auto")


def counted(model: Any) -> Run:
    parameters = list(model.parameters())
    return {
        "parameters": len(parameters),
        "dtensor_parameters": sum(isinstance(p, DTensor) for p in parameters),
    }


def logged(log_history: list[dict[str, Any]]) -> list[dict[str, float]]:
    """The numbers of each training step, without timings."""
    return [
        {key: value for key, value in entry.items() if key in LOGGED}
        for entry in log_history
        if "loss" in entry
    ]


def token_rows(rows: int, length: int, seed: int) -> list[list[int]]:
    generator = torch.Generator().manual_seed(seed)
    rows_of_tokens: list[list[int]] = torch.randint(
        3, VOCAB, (rows, length), generator=generator
    ).tolist()
    return rows_of_tokens


def common_arguments(output_dir: str) -> dict[str, Any]:
    return {
        "output_dir": output_dir,
        "max_steps": STEPS,
        "per_device_train_batch_size": 2,
        "learning_rate": 1e-3,
        "logging_steps": 1,
        "report_to": "none",
        "save_strategy": "no",
        "use_cpu": True,
        "seed": 0,
        "disable_tqdm": True,
        "dataloader_num_workers": 0,
    }


def train_with_trainer(model: Any, output_dir: str) -> list[dict[str, float]]:
    from transformers import Trainer, TrainingArguments

    dataset = [{"input_ids": row, "labels": row} for row in token_rows(16, 8, seed=3)]
    trainer = Trainer(
        model=model, args=TrainingArguments(**common_arguments(output_dir)), train_dataset=dataset
    )
    trainer.train()
    return logged(trainer.state.log_history)


def trainer_job(model_dir: str, output_dir: str, reference: bool) -> dict[str, Run]:
    model = load(model_dir, reference)
    run = counted(model)
    return {"trainer": attempt(run, lambda: train_with_trainer(model, output_dir))}


def peft_job(model_dir: str, output_dir: str, reference: bool) -> dict[str, Run]:
    from peft import LoraConfig, get_peft_model

    model = load(model_dir, reference)
    run = counted(model)

    def train() -> list[dict[str, float]]:
        torch.manual_seed(0)  # LoRA's A matrices start random: the same ones in every run
        lora = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
        run["lora_dtensor_parameters"] = counted(lora)["dtensor_parameters"]
        return train_with_trainer(lora, output_dir)

    return {"peft": attempt(run, train)}


def sentences(count: int, words: int, seed: int) -> list[str]:
    return [" ".join(f"w{t - 3}" for t in row) for row in token_rows(count, words, seed)]


def trl_job(model_dir: str, output_dir: str, reference: bool) -> dict[str, Run]:
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer, SFTConfig, SFTTrainer

    model = load(model_dir, reference)
    sft: Run = counted(model)

    def train_sft(model: Any) -> list[dict[str, float]]:
        trainer = SFTTrainer(
            model=model,
            args=SFTConfig(**common_arguments(output_dir), max_length=16),
            train_dataset=Dataset.from_dict({"text": sentences(16, 8, seed=4)}),
            processing_class=AutoTokenizer.from_pretrained(model_dir),
        )
        trainer.train()
        return logged(trainer.state.log_history)

    attempt(sft, partial(train_sft, model))
    del model  # and the DeviceMesh of its shards, before GRPO
    free_memory()

    def reward(completions: list[str], **kwargs: Any) -> list[float]:
        return [float(len(completion.split())) for completion in completions]

    def train_grpo(run: Run, model_init_kwargs: bool) -> list[dict[str, float]]:
        # With model_init_kwargs, TRL loads the model: they reach from_pretrained. The
        # reference loads it by hand, without WORLD_SIZE, and hands it over.
        by_trl = model_init_kwargs and not reference
        config = GRPOConfig(
            **common_arguments(output_dir),
            num_generations=2,
            max_prompt_length=8,
            max_completion_length=4,
            model_init_kwargs={"device_map": "auto"} if by_trl else None,
        )
        trainer = GRPOTrainer(
            model=model_dir if by_trl else load(model_dir, reference),
            reward_funcs=reward,
            args=config,
            train_dataset=Dataset.from_dict({"prompt": sentences(8, 4, seed=5)}),
            # The word-level tokenizer's default inputs include token_type_ids, which
            # generate() refuses for a Llama.
            processing_class=AutoTokenizer.from_pretrained(
                model_dir, padding_side="left", model_input_names=["input_ids", "attention_mask"]
            ),
        )
        run.update(counted(trainer.model))
        try:
            trainer.train()
            return logged(trainer.state.log_history)
        finally:
            del trainer
            free_memory()

    runs = {"sft": sft}
    for name, model_init_kwargs in [("grpo", False), ("grpo_model_init_kwargs", True)]:
        runs[name] = {}
        attempt(runs[name], partial(train_grpo, runs[name], model_init_kwargs))
    return runs


def attempt(run: Run, train: Callable[[], list[dict[str, float]]]) -> Run:
    """Train into *run*: its logged steps, or the error that stopped it."""
    try:
        run["steps"] = train()
    except Exception as error:  # the DDP error of a sharded model, among others: reported
        run["error"] = f"{type(error).__name__}: {(str(error).strip().splitlines() or [''])[0]}"
    return run


def free_memory() -> None:
    """Drop the DeviceMeshes a sharded model leaves in torch's caches (tiny_model.py)."""
    from torch.distributed.tensor import _collective_utils, _redistribute
    from torch.distributed.tensor.debug import _clear_sharding_prop_cache

    _clear_sharding_prop_cache()
    _redistribute.clear_redistribute_planner_cache()
    _redistribute._gen_transform_infos.cache_clear()
    _collective_utils.MeshTopoInfo.build_from_mesh.cache_clear()
    gc.collect()


JOBS: dict[str, Callable[[str, str, bool], dict[str, Run]]] = {
    "trainer": trainer_job,
    "peft": peft_job,
    "trl": trl_job,
}


def guard_in_this_process() -> None:
    from single_instance_build import guard_transformers

    guard_transformers()


def run_jobs(job: str, model_dir: str, reference: bool) -> dict[str, Any]:
    """This rank's report: the job as written, then (*reference*) with WORLD_SIZE popped."""
    report: dict[str, Any] = {
        "rank": int(os.environ["RANK"]),
        "world_size": os.environ.get("WORLD_SIZE"),
        "package_imported_at_start": PACKAGE_IMPORTED_AT_START,
        "argv": sys.argv[1:],
    }
    with tempfile.TemporaryDirectory() as output_dir:
        report["runs"] = JOBS[job](model_dir, output_dir, False)
        free_memory()
        if reference:
            report["reference"] = JOBS[job](model_dir, output_dir, True)
    report["package_imported_at_end"] = "single_instance_build" in sys.modules
    report["world_size_after"] = os.environ.get("WORLD_SIZE")
    return report


def write_report(report: dict[str, Any], report_dir: str) -> None:
    staging = Path(report_dir, f".rank{report['rank']}.json")
    staging.write_text(json.dumps(report))
    staging.rename(Path(report_dir, f"rank{report['rank']}.json"))


def ddp_steps(model: Any, rank: int) -> list[dict[str, float]]:
    from torch.nn.parallel import DistributedDataParallel

    ddp = DistributedDataParallel(model)
    optimizer = torch.optim.AdamW(ddp.parameters(), lr=1e-3)
    batch = torch.tensor(token_rows(2, 8, seed=10 + rank))
    steps = []
    for _ in range(STEPS):
        loss = ddp(input_ids=batch, labels=batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        steps.append({"loss": loss.item()})
    return steps


def spawned(rank: int, model_dir: str, report_dir: str, reference: bool, guard: bool) -> None:
    """One worker of ``torch.multiprocessing.spawn``: WORLD_SIZE came from the parent."""
    if guard:
        guard_in_this_process()
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank))
    dist.init_process_group("gloo")
    try:
        report: dict[str, Any] = {
            "rank": rank,
            "world_size": os.environ.get("WORLD_SIZE"),
            "package_imported_at_start": PACKAGE_IMPORTED_AT_START,
        }
        for name, by_hand in [("runs", False), ("reference", True)][: 1 + reference]:
            model = load(model_dir, by_hand)
            run = counted(model)
            report[name] = {"spawn": attempt(run, partial(ddp_steps, model, rank))}
            del model
            free_memory()
        report["package_imported_at_end"] = "single_instance_build" in sys.modules
        report["world_size_after"] = os.environ.get("WORLD_SIZE")
        write_report(report, report_dir)
        dist.barrier()  # every rank has reported before either can end
    finally:
        dist.destroy_process_group()
        free_memory()


def spawn_job(model_dir: str, report_dir: str, reference: bool, guard: bool) -> None:
    import torch.multiprocessing as mp

    # Set by hand, as spawn users do: no launcher is involved.
    os.environ.update(WORLD_SIZE="2", MASTER_ADDR="127.0.0.1")
    mp.spawn(spawned, args=(model_dir, report_dir, reference, guard), nprocs=2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None)
    parser.add_argument("job", choices=[*JOBS, "spawn"])
    parser.add_argument("model_dir")
    parser.add_argument("report_dir")
    parser.add_argument("--reference", action="store_true")
    parser.add_argument("--guard-call", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.job == "spawn":
        spawn_job(args.model_dir, args.report_dir, args.reference, args.guard_call)
        return
    if args.guard_call:
        guard_in_this_process()
    report = run_jobs(args.job, args.model_dir, args.reference)
    report["local_rank_option"] = args.local_rank
    write_report(report, args.report_dir)
    if dist.is_initialized():  # by the engine: every rank has reported before either ends
        dist.barrier()
        dist.destroy_process_group()
    free_memory()


if __name__ == "__main__":
    main()
