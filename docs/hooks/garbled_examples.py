"""Fail where the built HTML garbles an example: an MkDocs hook, and a command over a built site.

Markdown reads an unfenced ``>>>`` example as three nested quote blocks whose lines run
into one paragraph; ``x["key"]()`` in it becomes an empty link, and a reStructuredText
``::`` is shown as it is. None of that is a broken link, so ``mkdocs build --strict``
passed it. As a hook (mkdocs.yml), every problem found in a page is a warning, which
``--strict`` turns into a failed build. As a command, ``python
docs/hooks/garbled_examples.py SITE_DIR`` checks every HTML file of a built site and
exits 1 naming each problem: .ci/run runs it on the site it builds.
"""

from __future__ import annotations

import logging
import re
import sys
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

log = logging.getLogger("mkdocs.hooks.garbled_examples")

# Elements whose text is shown as it is written: an example belongs in one of these.
_VERBATIM = {"pre", "code", "script", "style", "textarea"}
# A role mkdocstrings left as text, such as :func:`guard_transformers`.
_ROLE = re.compile(r":(?:func|class|meth|mod|attr|data|exc|obj):`")


class _Scanner(HTMLParser):
    """Collects ``(line, problem)`` for every garbled example in one HTML document."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.problems: list[tuple[int, str]] = []
        self._verbatim = 0
        self._quotes = 0
        self._paragraph: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        line = self.getpos()[0]
        if tag in _VERBATIM:
            self._verbatim += 1
        elif tag == "blockquote":
            self._quotes += 1
            if self._quotes == 2:
                self.problems.append((line, "a quote block inside a quote block (a `>>>` line?)"))
        elif tag == "a" and dict(attrs).get("href", None) == "":
            self.problems.append((line, 'a link to nowhere (`x["key"]()` outside code?)'))
        elif tag == "p" and not self._verbatim:
            self._paragraph = []

    def handle_endtag(self, tag: str) -> None:
        if tag in _VERBATIM:
            self._verbatim = max(0, self._verbatim - 1)
        elif tag == "blockquote":
            self._quotes = max(0, self._quotes - 1)
        elif tag == "p" and self._paragraph is not None:
            if "".join(self._paragraph).rstrip().endswith("::"):
                line = self.getpos()[0]
                self.problems.append((line, "a paragraph ending in a reStructuredText `::`"))
            self._paragraph = None

    def handle_data(self, data: str) -> None:
        if self._verbatim:
            return
        if self._paragraph is not None:
            self._paragraph.append(data)
        line = self.getpos()[0]
        if ">>>" in data:
            self.problems.append((line, "`>>>` outside a code block"))
        if _ROLE.search(data):
            self.problems.append((line, "a Sphinx role shown as text"))


def problems(html: str) -> list[tuple[int, str]]:
    """Every garbled example in *html*, as ``(line, what)`` pairs in document order."""
    scanner = _Scanner()
    scanner.feed(html)
    scanner.close()
    return scanner.problems


def on_post_page(output: str, /, *, page: Any, config: Any) -> str:
    """Warn of each problem of the page: ``mkdocs build --strict`` then fails."""
    for line, what in problems(output):
        log.warning("%s: line %d of the built HTML: %s", page.file.src_uri, line, what)
    return output


def main(argv: list[str]) -> int:
    """Check every HTML file under the site folder *argv[0]*; 1 if any problem, 2 on misuse."""
    if len(argv) != 1 or not Path(argv[0]).is_dir():
        print("usage: python docs/hooks/garbled_examples.py SITE_DIR", file=sys.stderr)
        return 2
    site = Path(argv[0])
    found = 0
    pages = sorted(site.rglob("*.html"))
    for path in pages:
        for line, what in problems(path.read_text(encoding="utf-8")):
            print(f"{path.relative_to(site)}:{line}: {what}")
            found += 1
    if found:
        print(f"{found} garbled example(s) in the built HTML", file=sys.stderr)
        return 1
    print(f"no garbled example in {len(pages)} HTML pages")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
