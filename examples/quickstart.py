"""Quick start, no torch needed: what a model factory sees under a torchrun-like launch.

Run it with ``python examples/quickstart.py``.

The script plays one torchrun process (it sets ``WORLD_SIZE`` and ``RANK``
where they are absent), builds a stand-in model through
``@single_instance_build`` and through ``single_instance_env``, and prints what
the factory saw and that the environment is back afterwards.
"""

from __future__ import annotations

import os

from single_instance_build import original_env, single_instance_build, single_instance_env


class StandInModel:
    """Stands in for a model whose loading code reads WORLD_SIZE, as Transformers does."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.seen_world_size = os.environ.get("WORLD_SIZE")
        self.seen_rank = os.environ.get("RANK")
        # Code that really needs the launcher's world size can still read it.
        self.launch_world_size = original_env("WORLD_SIZE")


@single_instance_build
def build_model(path: str) -> StandInModel:
    """Build the model with WORLD_SIZE hidden."""
    return StandInModel(path)


@single_instance_build(env_vars=("WORLD_SIZE", "RANK"))
def build_model_hiding_rank_too(path: str) -> StandInModel:
    """Build the model with WORLD_SIZE and RANK hidden."""
    return StandInModel(path)


def main() -> None:
    os.environ.setdefault("WORLD_SIZE", "2")  # what torchrun --nproc_per_node=2 sets
    os.environ.setdefault("RANK", "0")
    print(f"launcher environment:  WORLD_SIZE={os.environ['WORLD_SIZE']} RANK={os.environ['RANK']}")

    model = build_model("tiny-model")
    print(
        f"@single_instance_build:      factory saw WORLD_SIZE={model.seen_world_size}, "
        f"original_env gave {model.launch_world_size}"
    )

    model = build_model_hiding_rank_too("tiny-model")
    print(
        "@single_instance_build(...): factory saw "
        f"WORLD_SIZE={model.seen_world_size} RANK={model.seen_rank}"
    )

    with single_instance_env():
        model = StandInModel("tiny-model")
    print(f"single_instance_env():       factory saw WORLD_SIZE={model.seen_world_size}")

    print(f"afterwards:            WORLD_SIZE={os.environ['WORLD_SIZE']} RANK={os.environ['RANK']}")


if __name__ == "__main__":
    main()
