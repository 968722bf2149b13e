"""The documentation runs: module doctests, the README's and docs/'s code blocks and commands."""

from __future__ import annotations

import doctest
import importlib
import importlib.util
import pkgutil
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

import single_instance_build
from single_instance_build._diagnose import EXIT_STATUSES, UNDER_LAUNCHER_HELP

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
PAGES = sorted((ROOT / "docs").glob("*.md"))
MKDOCS = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
CI = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
PYPROJECT = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
DOCS_SITE = re.findall(r'^Documentation = "(.*)"$', PYPROJECT, flags=re.MULTILINE)[0]
REPO_FILES = re.findall(r'^Homepage = "(.*)"$', PYPROJECT, flags=re.MULTILINE)[0] + "/blob/main/"


def fenced_blocks(language: str, text: str = README) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", text, flags=re.MULTILINE | re.DOTALL)


def python_blocks() -> list[pytest.ParameterSet]:
    """Every Python block of the README and the docs, with its file and line as the test id."""
    blocks = []
    for path in [ROOT / "README.md", *PAGES]:
        text = path.read_text(encoding="utf-8")
        for match in re.finditer(r"^```python\n(.*?)^```", text, flags=re.MULTILINE | re.DOTALL):
            line = text.count("\n", 0, match.start()) + 1
            blocks.append(pytest.param(match.group(1), id=f"{path.relative_to(ROOT)}:{line}"))
    return blocks


def page(name: str) -> str:
    return (ROOT / "docs" / name).read_text(encoding="utf-8")


def docs_page(url_path: str) -> str:
    """The docs/ file behind a page of the site: ``diagnosis/`` is ``diagnosis.md``."""
    return f"{url_path.rstrip('/') or 'index'}.md"


def affected_section() -> str:
    """The README's "Is my job affected?" text that the site's page includes."""
    start, end = "<!-- --8<-- [start:affected] -->\n", "<!-- --8<-- [end:affected] -->"
    return README.split(start)[1].split(end)[0]


def hook(name: str) -> ModuleType:
    """A module of docs/hooks, imported from its file as MkDocs imports it."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "docs" / "hooks" / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def package_modules() -> list[ModuleType]:
    names = [info.name for info in pkgutil.iter_modules(single_instance_build.__path__)]
    return [single_instance_build] + [
        importlib.import_module(f"single_instance_build.{name}")
        for name in names
        if name != "__main__"
    ]


class TestDoctests:
    @pytest.mark.parametrize("module", package_modules(), ids=lambda module: module.__name__)
    def test_module_doctests_pass(self, module: ModuleType) -> None:
        result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
        assert result.failed == 0


class TestCodeBlocks:
    @pytest.mark.parametrize("code", python_blocks())
    def test_python_block_runs(self, code: str) -> None:
        completed = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
        )
        assert completed.returncode == 0, completed.stderr


class TestReadme:
    def test_readme_is_at_most_250_lines(self) -> None:
        assert len(README.splitlines()) <= 250

    def test_zero_edit_launch_line_comes_within_the_first_80_lines(self) -> None:
        first = "\n".join(README.splitlines()[:80])
        assert "torchrun --nproc_per_node=8 -m single_instance_build.run eval.py" in first

    def test_every_link_is_absolute_for_the_package_index(self) -> None:
        """The README is the wheel's long description: a relative link breaks there."""
        links = re.findall(r"\]\(([^)\s]+)", README)
        assert links
        assert [link for link in links if not link.startswith("https://")] == []

    def test_links_into_the_repository_point_to_files_that_exist(self) -> None:
        paths = re.findall(rf"\]\({re.escape(REPO_FILES)}([^)#\s]+)", README)
        assert paths
        assert [path for path in paths if not (ROOT / path).exists()] == []

    def test_links_into_the_docs_site_point_to_pages_that_exist(self) -> None:
        pages = re.findall(rf"\]\({re.escape(DOCS_SITE)}([^)#\s]*)", README)
        assert pages
        missing = [page for page in pages if not (ROOT / "docs" / docs_page(page)).is_file()]
        assert missing == []

    def test_the_long_description_is_the_readme_as_it_is(self) -> None:
        """No build hook rewrites it, so the README's own links are what the index shows."""
        assert re.search(r'^readme = "README.md"$', PYPROJECT, flags=re.MULTILINE)

    def test_affected_jobs_table_names_tests_that_exist(self) -> None:
        rows = [line for line in affected_section().splitlines() if line.startswith("| ")][2:]
        assert len(rows) == 5
        for row in rows:
            link = rf'\({re.escape(REPO_FILES)}(tests/\S+\.py) "([^"]+)"\)'
            path, names = re.findall(link, row)[0]
            source = (ROOT / path).read_text(encoding="utf-8")
            for name in names.split(", "):
                assert re.search(rf"^\s*(class|def) {name}\b", source, flags=re.MULTILINE), (
                    path,
                    name,
                )

    def test_affected_jobs_table_leads_with_the_symptom(self) -> None:
        header = next(line for line in affected_section().splitlines() if line.startswith("| "))
        assert header == "| what you see, unguarded | the job | proof |"

    def test_ci_runs_the_readme_test_command(self) -> None:
        commands = [line for block in fenced_blocks("bash") for line in block.splitlines()]
        test_command = next(line for line in commands if "pytest" in line)
        assert test_command in CI

    def test_install_clones_the_project_s_own_repository(self) -> None:
        homepage = re.findall(r'^Homepage = "(.*)"$', PYPROJECT, flags=re.MULTILINE)[0]
        install = README.split("## Install\n")[1].split("\n## ")[0]
        clone = f"git clone {homepage}.git\ncd {homepage.rsplit('/', 1)[1]}\npip install .  #"
        assert clone in install

    def test_sdist_ships_the_ci_script_this_test_reads(self) -> None:
        """The tests pass in the unpacked sdist only if it holds .ci/run."""
        section = PYPROJECT.split("[tool.hatch.build.targets.sdist]")[1].split("\n[")[0]
        assert '".ci/run"' in section

    def test_exit_status_table_is_the_one_of_the_command(self) -> None:
        section = page("diagnosis.md").split("## Exit status")[1].split("\n## ")[0]
        rows = re.findall(r"^\| (\d+) \| (.*) \|$", section, flags=re.MULTILINE)
        assert {int(status): meaning for status, meaning in rows} == EXIT_STATUSES
        assert " ".join(UNDER_LAUNCHER_HELP.split()) in " ".join(section.split())

    @pytest.mark.parametrize(
        ("script", "expected"),
        [
            (
                "quickstart.py",
                ["factory saw WORLD_SIZE=None", "afterwards:            WORLD_SIZE=2"],
            ),
            (
                "vlm_registry.py",
                [
                    "guard_registry(supported_VLM): 3 of 3 entries guarded",
                    "building QwenVL('/models/local-qwen', {}) in process main",
                    "QwenVL('/models/local-qwen', {'temperature': 0})",
                    "copy.copy(supported_VLM): 4 of 4 entries guarded, the same entry objects: "
                    "True",
                    "copy.deepcopy(supported_VLM): 4 of 4 entries guarded, new entry objects: True",
                    "pickle.loads(pickle.dumps(entry)): a new object True, guarded for WORLD_SIZE "
                    "True",
                    "building LLaVA('liuhaotian/llava-tiny', {}) in process spawned worker: "
                    "WORLD_SIZE=None, launcher's WORLD_SIZE=2",
                    "the spawned worker saw WORLD_SIZE=None while building (launcher's 2), and "
                    "WORLD_SIZE=2 afterwards",
                    "afterwards: WORLD_SIZE=2",
                ],
            ),
        ],
    )
    def test_torch_free_example_runs(self, script: str, expected: list[str]) -> None:
        completed = subprocess.run(
            [sys.executable, str(ROOT / "examples" / script)],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        for fragment in expected:
            assert fragment in completed.stdout
        assert "WORLD_SIZE=2, launcher" not in completed.stdout  # no factory saw it


class TestDocsSite:
    def test_every_page_is_in_the_navigation(self) -> None:
        assert PAGES
        assert [path.name for path in PAGES if f" {path.name}\n" not in MKDOCS] == []

    def test_ci_builds_the_docs_strictly_outside_the_tree(self) -> None:
        assert 'mkdocs build --strict --site-dir "$scratch/site"' in CI

    def test_readme_gives_the_docs_build_command(self) -> None:
        commands = [line for block in fenced_blocks("bash") for line in block.splitlines()]
        build = 'pip install ".[docs]" && mkdocs build --strict'
        assert any(line.startswith(build) for line in commands)

    def test_changelog_page_includes_the_changelog_instead_of_copying_it(self) -> None:
        assert page("changelog.md").strip().endswith('--8<-- "CHANGELOG.md"')

    def test_affected_jobs_page_includes_the_readme_section_instead_of_copying_it(self) -> None:
        assert "  - Is my job affected?: affected.md\n" in MKDOCS
        include = '# Is my job affected?\n\n--8<-- "README.md:affected"\n'
        assert page("affected.md").startswith(include)
        assert "| proof |" in affected_section()

    def test_the_site_is_where_the_documentation_url_points(self) -> None:
        assert f"site_url: {DOCS_SITE}\n" in MKDOCS

    def test_the_site_shows_the_package_version(self) -> None:
        assert "  - docs/hooks/version.py\n" in MKDOCS
        assert hook("version").version() == single_instance_build.__version__

    def test_the_strict_build_and_ci_check_the_html_for_garbled_examples(self) -> None:
        assert "  - docs/hooks/garbled_examples.py\n" in MKDOCS
        assert 'python docs/hooks/garbled_examples.py "$scratch/site"' in CI


class TestGarbledExampleCheck:
    """docs/hooks/garbled_examples.py, on HTML as Markdown makes it of an example."""

    @pytest.mark.parametrize(
        ("html", "problem"),
        [
            (
                "<blockquote>\n<blockquote>\n<blockquote>\n<p>is_guarded(print)\nFalse</p>",
                "a quote block inside a quote block",
            ),
            ("<p>&gt;&gt;&gt; is_guarded(print)</p>", "`>>>` outside a code block"),
            ('<p>supported<a href="">"tiny"</a></p>', "a link to nowhere"),
            ("<p>Use it bare or with options::</p>", "reStructuredText `::`"),
            ("<p>Undo :func:`guard_transformers`</p>", "a Sphinx role shown as text"),
        ],
        ids=["nested-quotes", "prompt-in-text", "empty-link", "rst-literal", "role"],
    )
    def test_garbled_example_is_found_with_its_line(self, html: str, problem: str) -> None:
        found = hook("garbled_examples").problems(f"<html>\n<body>\n{html}\n</body></html>")
        assert len(found) == 1
        line, what = found[0]
        assert line >= 3
        assert problem in what

    def test_examples_in_code_blocks_pass(self) -> None:
        html = (
            '<div class="highlight"><pre><span></span><code><span class="gp">&gt;&gt;&gt; </span>'
            'supported["tiny"]()\n{}</code></pre></div>'
            "<blockquote><p>a quote</p></blockquote>"
            "<p><code>x::</code> and <code>&gt;&gt;&gt;</code></p>"
        )
        assert hook("garbled_examples").problems(html) == []


class TestWorkflows:
    WORKFLOWS = ROOT / ".github" / "workflows"

    def test_ci_runs_the_ci_script_on_pushes_and_pull_requests(self) -> None:
        ci = (self.WORKFLOWS / "ci.yml").read_text(encoding="utf-8")
        assert "  push:\n  pull_request:\n" in ci
        assert "- run: bash .ci/run\n" in ci

    def test_ci_script_lints_the_workflows(self) -> None:
        assert "actionlint .github/workflows/*.yml" in CI

    def test_release_checks_and_publishes_with_trusted_publishing_on_a_version_tag(
        self,
    ) -> None:
        release = (self.WORKFLOWS / "release.yml").read_text(encoding="utf-8")
        assert 'tags: ["v*"]' in release
        assert "python -m build" in release
        assert "twine check --strict dist/*" in release
        assert "id-token: write" in release
        assert "uses: pypa/gh-action-pypi-publish@release/v1" in release
        assert "password" not in release  # no token: trusted publishing only

    def test_docs_are_built_strictly_and_published_to_pages_from_main(self) -> None:
        docs = (self.WORKFLOWS / "docs.yml").read_text(encoding="utf-8")
        assert "  push:\n    branches: [main]\n" in docs
        assert 'python -m pip install ".[docs]"' in docs
        assert "mkdocs build --strict --site-dir site" in docs
        assert "python docs/hooks/garbled_examples.py site" in docs
        assert "uses: actions/upload-pages-artifact@" in docs
        assert "uses: actions/deploy-pages@" in docs
        assert "pages: write" in docs


class TestBenchmarks:
    @pytest.mark.parametrize(
        "script", ["bench_overhead.py", "bench_registry.py", "bench_startup.py"]
    )
    def test_benchmark_script_prints_its_table(self, script: str) -> None:
        """A smoke run with tiny counts; the figures themselves are not judged here."""
        completed = subprocess.run(
            [sys.executable, str(ROOT / "benchmarks" / script), "--repeats", "2", "--number", "5"],
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        assert "|---" in completed.stdout

    @pytest.mark.parametrize("script", ["bench_overhead.py", "bench_registry.py"])
    @pytest.mark.parametrize("option", ["--repeats", "--number"])
    def test_count_below_one_is_refused_naming_it(self, script: str, option: str) -> None:
        completed = subprocess.run(
            [sys.executable, str(ROOT / "benchmarks" / script), option, "0"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert completed.returncode == 2
        assert f"argument {option}: expected a whole number of at least 1, got '0'" in (
            completed.stderr
        )


def test_py_typed_is_shipped() -> None:
    assert (Path(single_instance_build.__file__).parent / "py.typed").is_file()
