"""One rank of the guard-at-the-source launch: three loads in one process, each measured.

Started by the tests through ``torchrun``: ``source_worker.py MODEL_DIR REPORT_DIR``.
The cases run in this order, in one launch to save a launch each:

1. ``decorated``: a VLMEvalKit-shaped model class under ``@single_instance_build``.
   Its ``__init__`` plans devices from ``WORLD_SIZE`` before it loads, and the
   decorator hides the variable for the whole constructor: it reads 1 (the
   documented trade-off) and loads a full copy.
2. ``source``: after ``guard_transformers()``, the same class undecorated reads 2,
   plans as the launch intends, and still loads a full copy.
3. ``tp_plan``: under the same guard, an explicit ``tp_plan="auto"`` (Transformers
   takes it only without ``device_map``) asks for tensor parallelism itself, so the
   guard leaves the call alone and the model is sharded.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from transformers import AutoModelForCausalLM
from unmodified_load import measure, write_report

from single_instance_build import guard_transformers, single_instance_build

GPUS = 2  # of the node this class plans for: one per process of the launch


class PlannedVLM:
    """Like VLMEvalKit's InternVL-style wrappers: plan devices from the world size, then load.

    Their ``split_model()`` gives rank ``r`` of ``w`` processes the devices
    ``r, r + w, r + 2w, ...``, ``GPUS // w`` of them; with ``w`` read as 1,
    rank 1 claims devices 1 and 2, and device 2 does not exist.
    """

    def __init__(self, model_path: str) -> None:
        self.world_size = int(os.environ.get("WORLD_SIZE", 1))
        rank = int(os.environ.get("RANK", 0))
        self.devices = [rank + self.world_size * i for i in range(GPUS // self.world_size)]
        self.model = AutoModelForCausalLM.from_pretrained(model_path, device_map="auto")


DecoratedVLM = single_instance_build(PlannedVLM)


def main(model_dir: str, report_dir: str) -> None:
    rank = int(os.environ["RANK"])
    report: dict[str, Any] = {"rank": rank}

    vlm = DecoratedVLM(model_dir)
    report["decorated"] = {"world_size_read": vlm.world_size, "devices": vlm.devices}
    report["decorated"].update(measure(vlm.model, model_dir, rank))

    guard_transformers()
    vlm = PlannedVLM(model_dir)
    report["source"] = {"world_size_read": vlm.world_size, "devices": vlm.devices}
    report["source"].update(measure(vlm.model, model_dir, rank))

    model = AutoModelForCausalLM.from_pretrained(model_dir, tp_plan="auto")
    report["tp_plan"] = measure(model, model_dir, rank)
    report["world_size_after"] = os.environ.get("WORLD_SIZE")
    write_report(report_dir, report)


if __name__ == "__main__":
    main(*sys.argv[1:3])
