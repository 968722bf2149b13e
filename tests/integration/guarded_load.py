"""``unmodified_load.py`` with one line added to its entry point: ``guard_transformers()``.

Started by the version matrix through ``torchrun``: ``guarded_load.py MODEL_DIR REPORT_DIR``.
The guard is installed before Transformers is imported, so it applies through the
post-import hook, as it does in a user's entry point.
"""

from __future__ import annotations

import sys

from single_instance_build import guard_transformers

if __name__ == "__main__":
    guard_transformers()
    import unmodified_load  # Transformers is imported only now, guarded on import

    unmodified_load.main(*sys.argv[1:3])
