"""lm-evaluation-harness's HF model with ``parallelize=True``, scored on local requests.

Runs in the lm-eval venv of ``test_lm_eval.py``, which has ``lm_eval`` and
Transformers 4.53.3. Three commands:

- ``lm_eval_worker.py make-tokenizer MODEL_DIR``: save a word-level tokenizer beside
  the tiny Llama (no hub), one token per word of the 128-word vocabulary.
- ``lm_eval_worker.py score MODEL_DIR REPORT_DIR``: one rank of a torchrun launch, or
  the single plain process of the reference (no launcher: rank 0 of 1). It builds
  ``HFLM(pretrained=MODEL_DIR, parallelize=True)``, counts the DTensor parameters,
  and scores its own shard of the questions with ``HFLM.loglikelihood``, as
  lm-eval's evaluator does on each rank of a data-parallel run. (On GPUs, HFLM
  takes its rank and world size from Accelerate and the evaluator gives each rank
  its shard; on the CPU it never splits the data, so the worker splits it itself.)

Every question has the same number of tokens, so that the ranks of a sharded model
run collectives of the same shapes and finish, with whatever numbers they give.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

VOCAB = 128  # of the tiny Llama: 3 special tokens and 125 words
WORDS = [f"w{i}" for i in range(VOCAB - 3)]
QUESTIONS = 12
CHOICES = 4
CONTEXT_WORDS = 5
CPU_MEMORY = 2**30  # bytes


def make_tokenizer(model_dir: str) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2} | {word: 3 + i for i, word in enumerate(WORDS)}
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, unk_token="<unk>", bos_token="<s>", eos_token="</s>"
    )
    wrapped.save_pretrained(model_dir)


def questions() -> list[tuple[str, list[str]]]:
    """Fixed pseudo-random questions: a context of words, and one-word choices."""
    import random

    rng = random.Random(7)
    return [
        (" ".join(rng.sample(WORDS, CONTEXT_WORDS)), [f" {w}" for w in rng.sample(WORDS, CHOICES)])
        for _ in range(QUESTIONS)
    ]


def score(model_dir: str, report_dir: str) -> None:
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM
    from torch.distributed.tensor import DTensor

    rank = int(os.environ.get("RANK", "0"))
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    lm = HFLM(
        pretrained=model_dir,
        parallelize=True,
        max_cpu_memory=CPU_MEMORY,  # without GPUs, the one device parallelize=True can use
        device="cpu",  # its default, "cuda", is for a single process without Accelerate
        batch_size=1,
    )
    parameters = list(lm.model.parameters())
    mine = list(range(QUESTIONS))[rank::world_size]  # this rank's shard of the questions
    every = questions()
    requests = [
        Instance(
            request_type="loglikelihood",
            doc={"question": index},
            arguments=(every[index][0], choice),
            idx=position,
        )
        for index in mine
        for position, choice in enumerate(every[index][1])
    ]
    results = lm.loglikelihood(requests, disable_tqdm=True)
    report: dict[str, Any] = {
        "rank": rank,
        "parameters": len(parameters),
        "dtensor_parameters": sum(isinstance(p, DTensor) for p in parameters),
        "loglikelihoods": {
            str(index): [float(results[CHOICES * k + c][0]) for c in range(CHOICES)]
            for k, index in enumerate(mine)
        },
        "world_size_after": os.environ.get("WORLD_SIZE"),
        "package_imported": "single_instance_build" in sys.modules,
    }
    staging = Path(report_dir, f".rank{rank}.json")
    staging.write_text(json.dumps(report))
    staging.rename(Path(report_dir, f"rank{rank}.json"))


if __name__ == "__main__":
    if sys.argv[1] == "make-tokenizer":
        make_tokenizer(sys.argv[2])
    else:
        score(sys.argv[2], sys.argv[3])
