"""``python -m single_instance_build``: the diagnosis command."""

import sys

from ._diagnose import main

if __name__ == "__main__":
    sys.exit(main())
