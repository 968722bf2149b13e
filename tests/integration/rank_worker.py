"""One rank of an integration launch: build a tiny model one way, measure, write a JSON report.

Started by the tests through ``torchrun``: ``rank_worker.py MODE MODEL_DIR REPORT_DIR``,
MODE being ``control`` (no guard), ``decorated`` or ``registry``. ``rank_worker.py
make-model MODEL_DIR`` saves the tiny model first, in a single process.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch.distributed.tensor import DTensor
from transformers import AutoModelForCausalLM

from single_instance_build import guard_registry, original_env, single_instance_build

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
SEEN: dict[str, Any] = {}  # what the factory saw while it ran


def make_model(model_dir: str) -> None:
    """Save the tiny Llama of the examples: one definition of it for them and the tests."""
    spec = importlib.util.spec_from_file_location("tiny_model", EXAMPLES / "tiny_model.py")
    assert spec is not None
    assert spec.loader is not None
    tiny_model = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tiny_model)
    tiny_model.make_tiny_model(Path(model_dir))


def record_what_the_factory_sees() -> None:
    SEEN["world_size"] = os.environ.get("WORLD_SIZE")
    SEEN["original_world_size"] = original_env("WORLD_SIZE")


def build_unguarded(path: str) -> Any:
    record_what_the_factory_sees()
    return AutoModelForCausalLM.from_pretrained(path, device_map="auto")


# The very factory of the control, decorated: the two runs differ only by the guard.
build_decorated = single_instance_build(build_unguarded)


class TinyVLM:
    """A VLMEvalKit-style wrapper: the registry holds partials of it, its __init__ loads."""

    def __init__(self, model_path: str, **kwargs: Any) -> None:
        record_what_the_factory_sees()
        SEEN["kwargs"] = kwargs
        self.model = AutoModelForCausalLM.from_pretrained(model_path, device_map="auto")


def build_through_registry(path: str) -> Any:
    supported_vlm: dict[str, Any] = {}
    for group in ({"tiny": partial(TinyVLM, model_path="not/yet/set")}, {"other": TinyVLM}):
        supported_vlm.update(group)
    guard_registry(supported_vlm)
    entry = supported_vlm["tiny"]
    if hasattr(entry, "keywords"):  # run.py's command-line override, in place
        entry.keywords["model_path"] = path
        entry.keywords["max_new_tokens"] = 8
    return entry().model


BUILDERS: dict[str, Callable[[str], Any]] = {
    "control": build_unguarded,
    "decorated": build_decorated,
    "registry": build_through_registry,
}


def main(mode: str, model_dir: str, report_dir: str) -> None:
    rank = int(os.environ["RANK"])
    before = os.environ.get("WORLD_SIZE")
    model = BUILDERS[mode](model_dir)
    after = os.environ.get("WORLD_SIZE")

    reference = AutoModelForCausalLM.from_pretrained(model_dir)  # no device_map: never sharded
    ids = torch.tensor([[1 + rank, 5, 9, 13, 2 + 3 * rank]])  # different data on every rank
    with torch.no_grad():
        logits, expected = model(ids).logits, reference(ids).logits
    if isinstance(logits, DTensor):
        logits = logits.full_tensor()
    q_proj = model.model.layers[0].self_attn.q_proj.weight
    report = {
        "rank": rank,
        "world_size_before": before,
        "world_size_after": after,
        "seen": SEEN,
        "parameters": sum(1 for _ in model.parameters()),
        "dtensor_parameters": sum(isinstance(p, DTensor) for p in model.parameters()),
        "q_proj_local_shape": list(
            (q_proj.to_local() if isinstance(q_proj, DTensor) else q_proj).shape
        ),
        "max_abs_logit_diff": float((logits - expected).abs().max()),
    }
    Path(report_dir, f"rank{rank}.json").write_text(json.dumps(report))


if __name__ == "__main__":
    if sys.argv[1] == "make-model":
        make_model(sys.argv[2])
    else:
        main(*sys.argv[1:4])
