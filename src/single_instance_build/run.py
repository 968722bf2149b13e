"""``python -m single_instance_build.run``: run a program with Transformers guarded.

Usage: ``python -m single_instance_build.run [--env-var NAMES]... [--local-rank=N] (SCRIPT |
DIR | ZIPAPP | -m MODULE) [ARGS...]``, for example ``torchrun --nproc_per_node=2 -m
single_instance_build.run eval.py --flag``. The work is done by
``single_instance_build._launch.main``.
"""

from ._launch import launch

if __name__ == "__main__":
    launch()
