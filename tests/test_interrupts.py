"""Ctrl-C, failing logging and failing environment writes never leave a variable hidden."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from single_instance_build import _scope, original_env, single_instance_build, single_instance_env

from support import c_getenv

STRESS = Path(__file__).resolve().parents[1] / "benchmarks" / "stress_interrupts.py"


def noop() -> None:
    pass


def decorated() -> None:
    single_instance_build(noop)()


def context_manager() -> None:
    with single_instance_env():
        pass


def nested() -> None:
    with single_instance_env():
        single_instance_build(noop)()


FORMS = {"decorator": decorated, "context manager": context_manager, "nested": nested}


def assert_restored(value: str = "2") -> None:
    assert os.environ.get("WORLD_SIZE") == value
    assert c_getenv("WORLD_SIZE") == value
    assert _scope._hidden == {}


@pytest.mark.skipif(not hasattr(signal, "setitimer"), reason="needs POSIX interval timers")
class TestRandomInterrupts:
    @pytest.mark.parametrize(
        "options",
        [[], ["--c-level-only"], ["--levels", "environ-only"], ["--levels", "different"]],
        ids=["os.environ", "c-level-only", "environ-only", "different-values"],
    )
    def test_signals_at_random_moments_never_leave_a_wrong_state(self, options: list[str]) -> None:
        """SIGALRM at random points of guarded calls, 1,000 times a form and handler.

        Its handler raises KeyboardInterrupt, or calls original_env(), or a
        guarded function; those that return must spoil no call. In a child
        process with a time limit: a lock left held hangs it. The options say
        where WORLD_SIZE is set: each level must come back as it was.
        """
        try:
            done = subprocess.run(
                [sys.executable, str(STRESS), "--interrupts", "1000", "--seed", "1", *options],
                capture_output=True,
                text=True,
                timeout=240,
            )
        except subprocess.TimeoutExpired:
            pytest.fail("the stress run hung: an interrupt left the lock held")
        assert done.returncode == 0, done.stderr[-3000:]
        rows = [line for line in done.stdout.splitlines() if line.startswith("| ")][1:]
        assert len(rows) == 15, done.stdout
        for row in rows:
            handler, form, lock_held, value_lost, other_wrong, wrong_read, spoilt, _ = (
                cell.strip() for cell in row.strip("|").split("|")
            )
            assert (lock_held, value_lost, wrong_read, spoilt) == ("0", "0", "0", "0"), row
            if (handler, form) != ("Ctrl-C", "one single_instance_env reused"):  # documented
                assert other_wrong == "0", row


Patch = Callable[[str, int], None]


@pytest.fixture
def interrupt_os_call(monkeypatch: pytest.MonkeyPatch) -> Iterator[Patch]:
    """Make the n-th os.putenv or os.unsetenv of WORLD_SIZE raise KeyboardInterrupt when done.

    os.environ calls them through the os module, so this is Ctrl-C landing
    in the middle of the bookkeeping, between the C and the Python side.
    """

    def arm(function: str, nth: int) -> None:
        real = getattr(os, function)
        calls = 0

        def interrupted(key: bytes, *value: bytes) -> None:
            nonlocal calls
            real(key, *value)
            if key == b"WORLD_SIZE":
                calls += 1
                if calls == nth:
                    raise KeyboardInterrupt

        monkeypatch.setattr(os, function, interrupted)

    yield arm
    monkeypatch.undo()


class TestInterruptedBookkeeping:
    @pytest.mark.usefixtures("world_size")
    @pytest.mark.parametrize("function", ["putenv", "unsetenv"])
    @pytest.mark.parametrize("nth", [1, 2, 3])
    @pytest.mark.parametrize("form", FORMS)
    def test_interrupt_inside_an_environment_write_restores_the_value(
        self, interrupt_os_call: Patch, function: str, nth: int, form: str
    ) -> None:
        interrupt_os_call(function, nth)
        # Not raised where the form writes fewer than nth times.
        with contextlib.suppress(KeyboardInterrupt):
            FORMS[form]()
        assert_restored()


class TestInterruptedBookkeepingOfACLevelOnlyValue:
    """A value set only at the C level (os.putenv) survives Ctrl-C inside the bookkeeping."""

    @pytest.mark.parametrize("function", ["putenv", "unsetenv"])
    @pytest.mark.parametrize("nth", [1, 2, 3])
    @pytest.mark.parametrize("form", FORMS)
    def test_interrupt_inside_an_environment_write_restores_the_c_level_value(
        self, interrupt_os_call: Patch, function: str, nth: int, form: str
    ) -> None:
        os.putenv("WORLD_SIZE", "2")
        try:
            interrupt_os_call(function, nth)
            with contextlib.suppress(KeyboardInterrupt):
                FORMS[form]()
            assert (os.environ.get("WORLD_SIZE"), c_getenv("WORLD_SIZE")) == (None, "2")
            assert _scope._hidden == {}
        finally:
            os.unsetenv("WORLD_SIZE")


class RaisingFilter(logging.Filter):
    def __init__(self, error: BaseException) -> None:
        super().__init__()
        self.error = error

    def filter(self, record: logging.LogRecord) -> bool:
        raise self.error


class InterruptedHandler(logging.Handler):
    """A slow handler that Ctrl-C interrupts while it writes the "hiding" record."""

    def emit(self, record: logging.LogRecord) -> None:
        if "hiding" in record.getMessage():
            raise KeyboardInterrupt


@pytest.fixture
def debug_logger() -> Iterator[logging.Logger]:
    logger = logging.getLogger("single_instance_build")
    level = logger.level
    logger.setLevel(logging.DEBUG)
    yield logger
    logger.setLevel(level)
    logger.filters.clear()
    for handler in list(logger.handlers):
        logger.removeHandler(handler)


class TestLoggingFailures:
    @pytest.mark.usefixtures("world_size")
    @pytest.mark.parametrize("error", [RuntimeError("filter bug"), KeyboardInterrupt()], ids=repr)
    @pytest.mark.parametrize("form", FORMS)
    def test_raising_filter_cannot_leave_variable_hidden(
        self, debug_logger: logging.Logger, error: BaseException, form: str
    ) -> None:
        debug_logger.addFilter(RaisingFilter(error))
        with pytest.raises(type(error)):
            FORMS[form]()
        assert_restored()

    @pytest.mark.usefixtures("world_size")
    def test_ctrl_c_in_a_handler_writing_the_hiding_record_restores(
        self, debug_logger: logging.Logger
    ) -> None:
        debug_logger.addHandler(InterruptedHandler())
        with pytest.raises(KeyboardInterrupt):
            single_instance_build(noop)()
        assert_restored()
        assert original_env("WORLD_SIZE") == "2"


class TestContextManagerNeverExited:
    @pytest.mark.usefixtures("world_size")
    def test_scopes_end_when_an_entered_context_manager_is_freed(self) -> None:
        """What a with-statement interrupted on its way into __exit__ leaves behind."""
        scope = single_instance_env()
        scope.__enter__()
        scope.__enter__()
        assert "WORLD_SIZE" not in os.environ
        del scope
        assert_restored()

    def test_an_exited_context_manager_has_no_finalizer(self) -> None:
        """No __del__ once exited: an interrupt landing in one would be printed and ignored."""
        scope = single_instance_env()
        with scope:
            assert hasattr(type(scope), "__del__")
        assert type(scope) is single_instance_env
        assert not hasattr(single_instance_env, "__del__")
