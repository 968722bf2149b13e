"""A Ray Train job: ``TorchTrainer`` with 2 CPU workers fine-tunes the tiny Llama, guarded or not.

Run by tests/integration/test_ray.py with the interpreter of its Ray venv:

- ``ray_train_job.py make-model MODEL_DIR`` saves the tiny Llama of the examples;
- ``ray_train_job.py train MODEL_DIR REPORT_DIR ADDRESS WAY`` is the driver. ADDRESS is
  ``local`` (``ray.init`` starts a cluster of its own, sized for 2 cores, under
  ``$RAY_JOB_TEMP_DIR``) or the ``HOST:PORT`` of a running head. WAY is how the
  driver asks for the guard: ``none``, ``runtime-env`` (``runtime_env={"env_vars":
  {"SINGLE_INSTANCE_BUILD": "1"}}``), ``helper`` (``single_instance_build.ray_runtime_env()``)
  or ``loop`` (``guard_transformers()`` at the top of ``train_loop_per_worker``).
  Whatever the environment gives the driver (``SINGLE_INSTANCE_BUILD``, the
  launcher) comes on top.

Each worker loads the model with ``device_map="auto"`` and, beside it, a reference
loaded with ``WORLD_SIZE`` popped by hand; wraps each in DDP
(``ray.train.torch.prepare_model``) and trains both 3 steps on in-memory data;
then writes ``rankN.json``: DTensor counts, both losses, or DDP's error.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path
from typing import Any

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
STEPS = 3


def make_model(model_dir: str) -> None:
    spec = importlib.util.spec_from_file_location("tiny_model", EXAMPLES / "tiny_model.py")
    assert spec is not None
    assert spec.loader is not None
    tiny_model = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tiny_model)
    tiny_model.make_tiny_model(Path(model_dir))


def train(model: Any, rank: int) -> list[float]:
    """DDP through Ray Train, 3 SGD steps on this rank's own in-memory batch: the losses."""
    import ray.train.torch
    import torch

    model = ray.train.torch.prepare_model(model)  # DDP: raises on a sharded model
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    ids = torch.tensor([[1 + rank, 5, 9, 13, 2 + 3 * rank, 7]])
    losses = []
    for _ in range(STEPS):
        loss = model(input_ids=ids, labels=ids).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss))
    return losses


def train_loop_per_worker(config: dict[str, Any]) -> None:
    if config["way"] == "loop":
        from single_instance_build import guard_transformers

        guard_transformers()
    import ray.train
    from torch.distributed.tensor import DTensor
    from transformers import AutoModelForCausalLM

    rank = ray.train.get_context().get_world_rank()
    report: dict[str, Any] = {
        "rank": rank,
        "world_size": os.environ.get("WORLD_SIZE"),
        "switch_set": "SINGLE_INSTANCE_BUILD" in os.environ,  # a name, never its value
        "package_imported": "single_instance_build" in sys.modules,
    }
    model = AutoModelForCausalLM.from_pretrained(config["model_dir"], device_map="auto")
    report["parameters"] = sum(1 for _ in model.parameters())
    report["dtensor_parameters"] = sum(isinstance(p, DTensor) for p in model.parameters())
    world_size = os.environ.pop("WORLD_SIZE")  # the manual fix, for the reference
    try:
        reference = AutoModelForCausalLM.from_pretrained(config["model_dir"], device_map="auto")
    finally:
        os.environ["WORLD_SIZE"] = world_size
    report["reference_dtensor_parameters"] = sum(
        isinstance(p, DTensor) for p in reference.parameters()
    )
    report["reference_losses"] = train(reference, rank)
    try:
        report["losses"] = train(model, rank)
    except Exception as error:  # DDP's "mixed torch.Tensor and DTensor" on a sharded model
        report["error"] = f"{type(error).__name__}: {error}"
    Path(config["report_dir"], f"rank{rank}.json").write_text(json.dumps(report))


def driver(model_dir: str, report_dir: str, address: str, way: str) -> None:
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    options: dict[str, Any] = {"log_to_driver": False}
    if address == "local":  # a cluster of this driver's own, for a 2-core machine
        options.update(
            num_cpus=2,
            object_store_memory=80 * 1024**2,
            include_dashboard=False,
            _temp_dir=os.environ["RAY_JOB_TEMP_DIR"],
        )
    else:
        options["address"] = address
    if way == "runtime-env":
        options["runtime_env"] = {"env_vars": {"SINGLE_INSTANCE_BUILD": "1"}}
    elif way == "helper":
        from single_instance_build import ray_runtime_env

        options["runtime_env"] = ray_runtime_env()
    ray.init(**options)
    try:
        trainer = TorchTrainer(
            train_loop_per_worker,
            train_loop_config={"model_dir": model_dir, "report_dir": report_dir, "way": way},
            scaling_config=ScalingConfig(
                num_workers=2, use_gpu=False, resources_per_worker={"CPU": 1}
            ),
            run_config=RunConfig(storage_path=str(Path(report_dir, "ray-results"))),
        )
        trainer.fit()
    finally:
        ray.shutdown()


if __name__ == "__main__":
    if sys.argv[1] == "make-model":
        make_model(sys.argv[2])
    else:
        driver(*sys.argv[2:6])
