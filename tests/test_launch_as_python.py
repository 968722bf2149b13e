"""A launched program ends as under plain python: tracebacks, interrupts, exit, python -i."""

from __future__ import annotations

import json
import marshal
import py_compile
import signal
import subprocess
import sys
import textwrap
import zipapp
from collections.abc import Callable
from pathlib import Path

import pytest

from test_launch import LAUNCHER, clean_env

# Raises from a nested call, after registering an atexit handler.
FAILING = textwrap.dedent(
    """\
    import atexit, sys
    atexit.register(print, "atexit ran")
    ANSWER = 42

    def fail():
        {raise_}

    if __name__ == "__main__":
        fail()
    """
)


def run(args: list[str], cwd: Path, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args, cwd=cwd, env=clean_env(), input=stdin, capture_output=True, text=True, timeout=120
    )


def write_program(root: Path, raise_: str) -> None:
    """The failing program as a script, a module of a package, a directory and a zipapp."""
    source = FAILING.format(raise_=raise_)
    (root / "prog.py").write_text(source)
    (root / "pkg").mkdir()
    (root / "pkg" / "__init__.py").write_text("")
    (root / "pkg" / "prog.py").write_text(source)
    (root / "app").mkdir()
    (root / "app" / "__main__.py").write_text(source)
    zipapp.create_archive(root / "app", root / "app.pyz")


TARGETS = pytest.mark.parametrize(
    "target",
    [["prog.py"], ["-m", "pkg.prog"], ["app"], ["app.pyz"]],
    ids=["script", "module", "directory", "zipapp"],
)


class TestUncaughtException:
    @TARGETS
    def test_traceback_status_and_atexit_are_plain_pythons(
        self, tmp_path: Path, target: list[str]
    ) -> None:
        """No frame of runpy or the launcher beyond those plain python shows itself."""
        write_program(tmp_path, "raise ValueError('boom')")
        plain = run([sys.executable, *target], tmp_path)
        launched = run([*LAUNCHER, *target], tmp_path)
        assert plain.returncode == launched.returncode == 1
        assert "ValueError: boom" in launched.stderr
        assert launched.stderr == plain.stderr
        assert launched.stdout == plain.stdout == "atexit ran\n"

    def test_syntax_error_is_printed_as_python_prints_it(self, tmp_path: Path) -> None:
        (tmp_path / "prog.py").write_text("def broken(:\n")
        plain = run([sys.executable, "prog.py"], tmp_path)
        launched = run([*LAUNCHER, "prog.py"], tmp_path)
        assert plain.returncode == launched.returncode == 1
        assert "SyntaxError" in launched.stderr
        assert launched.stderr == plain.stderr

    def test_programs_own_excepthook_gets_the_programs_frames(self, tmp_path: Path) -> None:
        hook = (
            "import traceback\n"
            "sys.excepthook = lambda t, e, tb: print(len(traceback.extract_tb(tb)), 'frames')\n"
            "raise ValueError('boom')"
        )
        write_program(tmp_path, hook.replace("\n", "\n    "))
        plain = run([sys.executable, "prog.py"], tmp_path)
        launched = run([*LAUNCHER, "prog.py"], tmp_path)
        assert launched.stdout == plain.stdout == "2 frames\natexit ran\n"
        assert launched.returncode == plain.returncode == 1


class TestKeyboardInterrupt:
    @TARGETS
    def test_ends_by_sigint_after_atexit_with_plain_pythons_traceback(
        self, tmp_path: Path, target: list[str]
    ) -> None:
        write_program(tmp_path, "raise KeyboardInterrupt")
        plain = run([sys.executable, *target], tmp_path)
        launched = run([*LAUNCHER, *target], tmp_path)
        assert plain.returncode == launched.returncode == -signal.SIGINT
        assert launched.stderr == plain.stderr
        assert launched.stdout == plain.stdout == "atexit ran\n"


class TestInteractive:
    """python -i: the prompt opens in the program's namespace, with nothing more printed."""

    @pytest.mark.parametrize(
        "raise_",
        ["pass", "raise ValueError('boom')", "sys.exit(3)", "sys.exit(0)"],
        ids=["normal-end", "uncaught", "exit-3", "exit-0"],
    )
    def test_output_and_prompt_are_plain_pythons(self, tmp_path: Path, raise_: str) -> None:
        write_program(tmp_path, raise_)
        stdin = "print(ANSWER)\n"
        plain = run([sys.executable, "-i", "prog.py"], tmp_path, stdin)
        launched = run([sys.executable, "-i", *LAUNCHER[1:], "prog.py"], tmp_path, stdin)
        assert launched.stdout == plain.stdout
        assert "42" in launched.stdout
        assert launched.stderr == plain.stderr
        assert launched.returncode == plain.returncode == 0

    def test_no_system_exit_after_a_normal_end(self, tmp_path: Path) -> None:
        write_program(tmp_path, "pass")
        launched = run([sys.executable, "-i", *LAUNCHER[1:], "prog.py"], tmp_path, "")
        assert "SystemExit" not in launched.stderr
        assert "Traceback" not in launched.stderr

    def test_post_mortem_reads_the_programs_frames(self, tmp_path: Path) -> None:
        write_program(tmp_path, "raise ValueError('boom')")
        stdin = "import traceback; print(len(traceback.extract_tb(sys.last_traceback)))\n"
        plain = run([sys.executable, "-i", "prog.py"], tmp_path, stdin)
        launched = run([sys.executable, "-i", *LAUNCHER[1:], "prog.py"], tmp_path, stdin)
        assert launched.stdout == plain.stdout == "2\natexit ran\n"


# Sends a function and an instance of a class of __main__ to spawn workers.
SPAWNING = textwrap.dedent(
    """\
    import json, multiprocessing, pickle

    class Point:
        def __init__(self, x):
            self.x = x

    def square(point):
        from single_instance_build import _transformers
        return point.x * point.x, list(_transformers.status().names)

    if __name__ == "__main__":
        assert pickle.loads(pickle.dumps(Point(3))).x == 3
        try:
            with multiprocessing.get_context("spawn").Pool(2) as pool:
                print(json.dumps(pool.map(square, [Point(2), Point(3)])))
        except Exception as error:
            print(type(error).__name__)
    """
)


class TestSpawnPool:
    # Not a directory or zipapp: there python's own spawn workers cannot re-import
    # __main__, and the pool hangs.
    @pytest.mark.parametrize("target", [["prog.py"], ["-m", "pkg.prog"]], ids=["script", "module"])
    def test_workers_get_what_plain_pythons_get_and_are_guarded(
        self, tmp_path: Path, target: list[str]
    ) -> None:
        """Objects of __main__ pickle by their names; workers hide what the program hides."""
        (tmp_path / "prog.py").write_text(SPAWNING)
        (tmp_path / "pkg").mkdir()
        (tmp_path / "pkg" / "__init__.py").write_text("")
        (tmp_path / "pkg" / "prog.py").write_text(SPAWNING)
        plain = run([sys.executable, *target], tmp_path)
        launched = run([*LAUNCHER, *target], tmp_path)
        assert plain.returncode == launched.returncode == 0, launched.stderr
        assert plain.stdout == "[[4, []], [9, []]]\n"
        assert launched.stdout == '[[4, ["WORLD_SIZE"]], [9, ["WORLD_SIZE"]]]\n'


def compiled(source: str, path: Path) -> bytes:
    """The bytes of *source* compiled to a ``.pyc`` at *path*, as py_compile writes them."""
    (path.parent / "source_of_pyc.py").write_text(source)
    py_compile.compile(str(path.parent / "source_of_pyc.py"), str(path), doraise=True)
    return path.read_bytes()


class TestCompiledScript:
    """A ``.pyc`` given as the script runs, or fails, as under ``python job.pyc``."""

    def test_runs_with_argv_and_output_of_plain_python(self, tmp_path: Path) -> None:
        compiled(
            "import sys; print(sys.argv, __file__ == sys.argv[0] or __file__)\n",
            tmp_path / "job.pyc",
        )
        plain = run([sys.executable, "job.pyc", "a"], tmp_path)
        launched = run([*LAUNCHER, "job.pyc", "a"], tmp_path)
        assert plain.returncode == launched.returncode == 0, launched.stderr
        assert launched.stdout == plain.stdout

    @pytest.mark.parametrize(
        "damage",
        [
            lambda good: b"\0\0\r\n" + good[4:],
            lambda good: b"",
            lambda good: good[:2],
            lambda good: good[:10],
            lambda good: good[:16],
            lambda good: good[:16] + b"\xff\xff",
            lambda good: good[:16] + marshal.dumps(5),
            lambda good: good + b"trailing bytes",
        ],
        ids=["bad-magic", "empty", "half-magic", "short-header", "header-only", "garbage",
             "not-code", "trailing-bytes"],
    )  # fmt: skip
    def test_damaged_pyc_fails_with_plain_pythons_message_and_status(
        self, tmp_path: Path, damage: Callable[[bytes], bytes]
    ) -> None:
        good = compiled("print('ran')\n", tmp_path / "good.pyc")
        (tmp_path / "job.pyc").write_bytes(damage(good))
        plain = run([sys.executable, "job.pyc"], tmp_path)
        launched = run([*LAUNCHER, "job.pyc"], tmp_path)
        assert launched.returncode == plain.returncode
        assert launched.stderr == plain.stderr
        assert launched.stdout == plain.stdout

    def test_bad_magic_number_under_interactive_leaves_plain_pythons_last_exception(
        self, tmp_path: Path
    ) -> None:
        (tmp_path / "job.pyc").write_bytes(b"\0\0\r\n" + b"\0" * 20)
        stdin = "print(type(sys.last_value).__name__, sys.last_traceback)\n"
        plain = run([sys.executable, "-i", "job.pyc"], tmp_path, "import sys\n" + stdin)
        launched = run(
            [sys.executable, "-i", *LAUNCHER[1:], "job.pyc"], tmp_path, "import sys\n" + stdin
        )
        assert launched.stdout == plain.stdout
        assert launched.stderr == plain.stderr


# Where warnings reports a stacklevel past the outermost frame (changed in 3.13, gh-117535).
SYS_FILE, SYS_LINE = ("<sys>", 0) if sys.version_info >= (3, 13) else ("sys", 1)

# What a script sees of the frame that called it, and where its warnings are reported.
CALLER = textwrap.dedent(
    """\
    import json, sys, warnings
    caller = sys._getframe().f_back
    warnings.simplefilter("always")
    with warnings.catch_warnings(record=True) as seen:
        warnings.warn("top", stacklevel=2)
        def helper():
            warnings.warn("helper", stacklevel=3)
        helper()
    warnings.filterwarnings("error", module="sys")
    try:
        warnings.warn("filtered", stacklevel=2)
        filtered = "not raised"
    except UserWarning:
        filtered = "raised"
    print(json.dumps({
        "warnings": [[w.filename, w.lineno, str(w.message)] for w in seen],
        "caller_module": None if caller is None else caller.f_globals.get("__name__"),
        "filtered_on_module_sys": filtered,
        "registry_in_sys": "__warningregistry__" in vars(sys),
    }))
    warnings.resetwarnings()
    warnings.warn("printed", stacklevel=2)
    """
)


class TestCallerFrame:
    """Warnings of a script's top level are reported as under plain python (``sys:1``)."""

    def test_stacklevel_beyond_the_top_level_gives_plain_pythons_place_and_module(
        self, tmp_path: Path
    ) -> None:
        """``sys:1`` for module ``sys`` up to 3.12, ``<sys>:0`` from 3.13: whatever python says."""
        (tmp_path / "prog.py").write_text(CALLER)
        plain = run([sys.executable, "prog.py"], tmp_path)
        launched = run([*LAUNCHER, "prog.py"], tmp_path)
        assert plain.returncode == launched.returncode == 0, launched.stderr
        result = json.loads(launched.stdout)
        assert result == {**json.loads(plain.stdout), "caller_module": "sys"}  # plain: None
        assert result["filtered_on_module_sys"] == "raised"
        assert [where for *where, _ in result["warnings"]] == [[SYS_FILE, SYS_LINE]] * 2
        assert launched.stderr == plain.stderr == f"{SYS_FILE}:{SYS_LINE}: UserWarning: printed\n"

    def test_stand_in_frame_is_not_in_tracebacks(self, tmp_path: Path) -> None:
        (tmp_path / "prog.py").write_text(
            "import traceback\ntraceback.print_stack()\nraise ValueError('boom')\n"
        )
        plain = run([sys.executable, "prog.py"], tmp_path)
        launched = run([*LAUNCHER, "prog.py"], tmp_path)
        uncaught = launched.stderr.split("Traceback (most recent call last):\n")[-1]
        assert uncaught == plain.stderr.split("Traceback (most recent call last):\n")[-1]
        # print_stack shows the stand-in frame
        assert f'File "{SYS_FILE}", line {SYS_LINE}' in launched.stderr


# Shows, from its excepthook, its atexit handler and python -i's prompt, whether
# __main__ still holds __file__ and __cached__.
ENDING = textwrap.dedent(
    """\
    import atexit, sys
    main = sys.modules["__main__"]
    def show(where):
        print(where, sorted(set(vars(main)) & {"__file__", "__cached__"}), flush=True)
    atexit.register(show, "atexit")
    sys.excepthook = lambda *error: show("excepthook")
    {end}
    """
)


class TestMainAfterTheScriptEnds:
    """python takes ``__file__`` (and ``__cached__`` before 3.15) out of a script's ``__main__``.

    When depends on the version (3.14 does it at once); the test compares with plain python.
    """

    @pytest.mark.parametrize(
        "end",
        ["pass", "raise ValueError('boom')", "sys.exit(3)", "raise KeyboardInterrupt"],
        ids=["normal-end", "uncaught", "exit", "interrupt"],
    )
    @pytest.mark.parametrize("interactive", [[], ["-i"]], ids=["", "interactive"])
    def test_excepthook_atexit_and_prompt_see_what_plain_python_shows(
        self, tmp_path: Path, end: str, interactive: list[str]
    ) -> None:
        (tmp_path / "prog.py").write_text(ENDING.replace("{end}", end))
        stdin = "show('prompt')\n"
        plain = run([sys.executable, *interactive, "prog.py"], tmp_path, stdin)
        launched = run([sys.executable, *interactive, *LAUNCHER[1:], "prog.py"], tmp_path, stdin)
        assert launched.stdout == plain.stdout
        assert "atexit" in plain.stdout
        assert launched.returncode == plain.returncode
