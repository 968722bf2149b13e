"""MkDocs hook: the site shows the package version, read from the one place it is written.

``__version__`` in ``src/single_instance_build/__init__.py`` is the version (hatch reads
it there too); the header and the footer of every page name it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

_INIT = Path(__file__).resolve().parents[2] / "src" / "single_instance_build" / "__init__.py"


def version() -> str:
    """The ``__version__`` string of the package source."""
    text = _INIT.read_text(encoding="utf-8")
    match = re.search(r'^__version__ = "([^"]+)"$', text, flags=re.MULTILINE)
    if match is None:
        raise ValueError(f"no __version__ line in {_INIT}")
    return match[1]


def on_config(config: Any, /) -> Any:
    """Put the version after the site's name, and in the footer."""
    config.site_name = f"{config.site_name} {version()}"
    config.copyright = f"single-instance-build {version()} · MIT licence"
    return config
