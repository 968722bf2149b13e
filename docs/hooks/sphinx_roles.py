"""MkDocs hook: show the Sphinx roles of the docstrings (``:func:`x```) as code, linked.

The docstrings are written for ``help()`` and doctest too, where a role reads as
what it names; mkdocstrings leaves the role's name in front of the code. A role
naming an object documented on the same page links to it.
"""

from __future__ import annotations

import re
from typing import Any

_ROLE = re.compile(r":(?:func|class|meth|mod|attr|data|exc):<code>([\w.]+)</code>")


def on_page_content(html: str, **kwargs: Any) -> str:
    """Drop the role's name, keep the code it marks, and link it where the page has it."""
    anchors = set(re.findall(r'id="(single_instance_build\.[\w.]+)"', html))

    def replace(match: re.Match[str]) -> str:
        name = match[1].removeprefix("single_instance_build.")
        anchor = f"single_instance_build.{name}"
        if anchor in anchors:
            return f'<a href="#{anchor}"><code>{match[1]}</code></a>'
        return f"<code>{match[1]}</code>"

    return _ROLE.sub(replace, html)
