"""MkDocs hook: show the Sphinx roles of the docstrings (``:func:`x```) as plain code.

The docstrings are written for ``help()`` and doctest too, where a role reads as
what it names; mkdocstrings leaves the role's name in front of the code.
"""

from __future__ import annotations

import re
from typing import Any

_ROLE = re.compile(r":(?:func|class|meth|mod|attr|data|exc):(<code>)")


def on_page_content(html: str, **kwargs: Any) -> str:
    """Drop the role's name, keep the code it marks."""
    return _ROLE.sub(r"\1", html)
