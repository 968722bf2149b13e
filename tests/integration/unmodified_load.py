"""An unmodified rank script: load with ``device_map="auto"``, measure, write a JSON report.

It stands for code a user does not own, so it never imports this package: whatever
guards it comes from outside (``python -m single_instance_build.run``,
``SINGLE_INSTANCE_BUILD=1``, or an entry point that calls ``guard_transformers()``).
Started by the tests through ``torchrun``: ``unmodified_load.py MODEL_DIR REPORT_DIR``.
Each rank writes ``REPORT_DIR/rank<RANK>.json`` and exits 0, even when the load raises
(Transformers 4.50.0 does on a CPU-only torch): the report says what happened, and the
test judges it. It runs unchanged on every Transformers version of the matrix.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import torch
import transformers
from torch.distributed.tensor import DTensor
from transformers import AutoModelForCausalLM


def measure(model: Any, model_dir: str, rank: int) -> dict[str, Any]:
    """DTensor count, local shape of one weight, and logits against an unsharded reference."""
    reference = AutoModelForCausalLM.from_pretrained(model_dir)  # no device_map: never sharded
    ids = torch.tensor([[1 + rank, 5, 9, 13, 2 + 3 * rank]])  # different data on every rank
    with torch.no_grad():
        logits, expected = model(ids).logits, reference(ids).logits
    if isinstance(logits, DTensor):
        logits = logits.full_tensor()
    q_proj = model.model.layers[0].self_attn.q_proj.weight
    return {
        "parameters": sum(1 for _ in model.parameters()),
        "dtensor_parameters": sum(isinstance(p, DTensor) for p in model.parameters()),
        "q_proj_local_shape": list(
            (q_proj.to_local() if isinstance(q_proj, DTensor) else q_proj).shape
        ),
        "max_abs_logit_diff": float((logits - expected).abs().max()),
    }


def write_report(report_dir: str, report: dict[str, Any]) -> None:
    rank = report["rank"]
    staging = Path(report_dir, f".rank{rank}.json")
    staging.write_text(json.dumps(report))
    staging.rename(Path(report_dir, f"rank{rank}.json"))  # a test never reads half a report


def main(model_dir: str, report_dir: str) -> None:
    rank = int(os.environ["RANK"])
    report: dict[str, Any] = {
        "rank": rank,
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "world_size_before": os.environ.get("WORLD_SIZE"),
        "argv": sys.argv,
        "file": __file__,
        "path0": sys.path[0],
    }
    try:
        model = AutoModelForCausalLM.from_pretrained(model_dir, device_map="auto")
    except Exception as error:  # the matrix records what each version does
        report["error"] = f"{type(error).__name__}: {(str(error).splitlines() or [''])[0][:300]}"
    else:
        report.update(measure(model, model_dir, rank))
    report["world_size_after"] = os.environ.get("WORLD_SIZE")
    # Whether something outside this script imported the package (start-up activation).
    report["package_imported"] = "single_instance_build" in sys.modules
    write_report(report_dir, report)


if __name__ == "__main__":
    main(*sys.argv[1:3])
