"""The import hook: one guard for every copy of it, and hooks that a finder ahead cannot skip.

Each test runs a fresh interpreter, so that ``sys.meta_path`` is its own, on a
small package written for it: ``pkg.target`` is the module waited for, whose
body imports ``pkg.helper`` for the first time and then defines ``DONE``.
Copies of ``_import_hook`` are loaded from its file under other names, as a
vendored copy of the package has them.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from single_instance_build import _import_hook

HOOK_FILE = _import_hook.__file__

PRELUDE = f"""
import importlib, importlib.machinery, importlib.util, sys, threading
sys.path.insert(0, ".")
from single_instance_build import _import_hook as first

def copy_of_hook(name):
    spec = importlib.util.spec_from_file_location(name, {HOOK_FILE!r})
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module

calls = []

def hook(tag):
    def run(module):
        calls.append((tag, module.__name__, hasattr(module, "DONE")))
    return run

def ours():
    return [f for f in sys.meta_path if first._table(f) is not None]

from importlib.machinery import PathFinder

class Ahead:  # loads some modules itself, asking PathFinder directly: typeguard's way
    def find_spec(self, name, path=None, target=None):
        if name in ("pkg.target", "pkg.failing"):
            return PathFinder.find_spec(name, path, target)
        return None
"""


def run_child(code: str, tmp_path: Path) -> list[str]:
    """Run PRELUDE then *code* in a fresh interpreter in *tmp_path*; return its output lines."""
    package = tmp_path / "pkg"
    package.mkdir(exist_ok=True)
    (package / "__init__.py").write_text("")
    (package / "helper.py").write_text("")
    for name in ("target", "other", *(f"t{i}" for i in range(8))):
        (package / f"{name}.py").write_text("import pkg.helper\nDONE = True\n")
    (package / "failing.py").write_text("import pkg.helper\nraise RuntimeError('boom')\n")
    env = {k: v for k, v in os.environ.items() if k not in ("SINGLE_INSTANCE_BUILD", "PYTHONPATH")}
    done = subprocess.run(
        [sys.executable, "-c", PRELUDE + textwrap.dedent(code)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.splitlines()


class TestCopiesShareOneFinder:
    """Issue 18.1: copies of the module used to ask each other's finders for ever."""

    def test_two_copies_run_each_hook_once(self, tmp_path: Path) -> None:
        code = """
            second = copy_of_hook("harness._vendor.single_instance_build._import_hook")
            first.when_imported("pkg.target", hook("first"))
            second.when_imported("pkg.target", hook("second"))
            import pkg.target
            print(calls)
            print(len(ours()), first.waiting_for("pkg.target"), second.waiting_for("pkg.target"))
        """
        assert run_child(code, tmp_path) == [
            "[('first', 'pkg.target', True), ('second', 'pkg.target', True)]",
            "1 True True",
        ]

    def test_many_copies_and_reimports_run_each_hook_once_per_execution(
        self, tmp_path: Path
    ) -> None:
        code = """
            copies = [first, *(copy_of_hook(f"copy{i}") for i in range(4))]
            for i, copy in enumerate(copies):
                copy.when_imported("pkg.target", hook(i))
            import pkg.target
            importlib.reload(pkg.target)
            del sys.modules["pkg.target"]
            import pkg.target
            print(sorted(calls) == sorted([(i, "pkg.target", True) for i in range(5)] * 3))
        """
        assert run_child(code, tmp_path) == ["True"]

    def test_reload_of_the_module_keeps_its_hooks(self, tmp_path: Path) -> None:
        """A reload alone used to leave every hook registered before it silently off."""
        code = """
            first.when_imported("pkg.target", hook("before"))
            importlib.reload(first)
            print(first.waiting_for("pkg.target"))
            import pkg.target
            first.when_imported("pkg.other", hook("after"))
            import pkg.other
            print(calls, len(ours()))
        """
        assert run_child(code, tmp_path) == [
            "True",
            "[('before', 'pkg.target', True), ('after', 'pkg.other', True)] 1",
        ]

    def test_package_purged_and_imported_again(self, tmp_path: Path) -> None:
        code = """
            first.when_imported("pkg.target", hook("old"))
            for name in [m for m in sys.modules if m.startswith("single_instance_build")]:
                del sys.modules[name]
            from single_instance_build import _import_hook as again
            assert again is not first
            again.when_imported("pkg.target", hook("new"))
            import pkg.target
            print(calls, len(ours()))
        """
        assert run_child(code, tmp_path) == [
            "[('old', 'pkg.target', True), ('new', 'pkg.target', True)] 1"
        ]

    def test_finder_that_asks_meta_path_again_is_not_asked_back(self, tmp_path: Path) -> None:
        """A finder that asks every other one (0.2.0's, a wrapt-like one) meets no recursion."""
        code = """
            class AsksTheOthers:
                def find_spec(self, name, path=None, target=None):
                    if name != "pkg.target":
                        return None
                    for finder in list(sys.meta_path):
                        if finder is not self and hasattr(finder, "find_spec"):
                            spec = finder.find_spec(name, path, target)
                            if spec is not None:
                                return spec
                    return None

            first.when_imported("pkg.target", hook("first"))
            sys.meta_path.insert(0, AsksTheOthers())
            import pkg.target
            print(calls)
        """
        assert run_child(code, tmp_path) == ["[('first', 'pkg.target', True)]"]

    def test_threads_importing_at_once_each_run_every_hook_once(self, tmp_path: Path) -> None:
        code = """
            second = copy_of_hook("second")
            names = [f"pkg.t{i}" for i in range(8)]
            for name in names:
                first.when_imported(name, hook("first"))
                second.when_imported(name, hook("second"))
            start = threading.Barrier(len(names))

            def load(name):
                start.wait()
                importlib.import_module(name)

            threads = [threading.Thread(target=load, args=(name,)) for name in names]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            expected = [(tag, name, True) for name in names for tag in ("first", "second")]
            print(sorted(calls) == sorted(expected))
        """
        assert run_child(code, tmp_path) == ["True"]


class TestFinderAhead:
    """Issue 18.3: a finder ahead that loads the module itself used to skip the hooks."""

    def test_hooks_run_once_the_module_is_executed(self, tmp_path: Path) -> None:
        code = """
            first.when_imported("pkg.target", hook("first"))
            sys.meta_path.insert(0, Ahead())
            print(first.finders_ahead("pkg.target"))
            import pkg.target
            print(calls, type(pkg.target.__spec__) is importlib.machinery.ModuleSpec)
        """
        assert run_child(code, tmp_path) == [
            "('__main__.Ahead',)",
            "[('first', 'pkg.target', True)] True",
        ]

    def test_copies_behind_a_finder_ahead_run_each_hook_once(self, tmp_path: Path) -> None:
        code = """
            second = copy_of_hook("second")
            first.when_imported("pkg.target", hook("first"))
            second.when_imported("pkg.target", hook("second"))
            sys.meta_path.insert(0, Ahead())
            import pkg.target
            del sys.modules["pkg.target"], sys.modules["pkg.helper"]  # its body imports again
            import pkg.target
            print(calls)
        """
        once = "('first', 'pkg.target', True), ('second', 'pkg.target', True)"
        assert run_child(code, tmp_path) == [f"[{once}, {once}]"]

    def test_no_hook_when_the_execution_fails(self, tmp_path: Path) -> None:
        code = """
            first.when_imported("pkg.failing", hook("first"))
            sys.meta_path.insert(0, Ahead())
            try:
                import pkg.failing
            except RuntimeError:
                pass
            print(calls, "pkg.failing" in sys.modules)
        """
        assert run_child(code, tmp_path) == ["[] False"]

    def test_when_imported_puts_the_finder_ahead_again(self, tmp_path: Path) -> None:
        code = """
            first.when_imported("pkg.target", hook("first"))
            sys.meta_path.insert(0, Ahead())
            first.when_imported("pkg.other", hook("other"))
            print(sys.meta_path.index(ours()[0]), first.finders_ahead("pkg.target"), len(ours()))
        """
        assert run_child(code, tmp_path) == ["0 () 1"]
