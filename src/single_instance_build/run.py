"""``python -m single_instance_build.run``: run a script or module with Transformers guarded.

Usage: ``python -m single_instance_build.run [--env-var NAME]... (SCRIPT | -m MODULE) [ARGS...]``,
for example ``torchrun --nproc_per_node=2 -m single_instance_build.run eval.py --flag``.
The work is done by ``single_instance_build._launch.main``.
"""

import sys

from ._launch import main

if __name__ == "__main__":
    sys.exit(main())
