"""Code that re-enters the library inside its bookkeeping: a signal handler, a finalizer.

A signal handler runs between two bytecode instructions of whatever the main
thread is running, and may call ``original_env()`` or a guarded function
while a guarded call is halfway through hiding or restoring. These tests make
that happen deterministically: a trace function fires at every instruction
of ``_scope`` in turn, one per run, and runs the handler's code there (the
interpreter does not trace what a trace function itself runs, as it would
not be interrupted by a second signal either).
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

import pytest

from single_instance_build import _scope, original_env, single_instance_build, single_instance_env

from support import c_getenv

SCOPE_FILE = _scope.__file__
RESULT = object()

# (os.environ value, C-level value) of WORLD_SIZE before the guarded call.
LEVELS: dict[str, tuple[str | None, str | None]] = {
    "both levels": ("2", "2"),
    "os.environ only": ("2", None),
    "C level only": (None, "2"),
    "different values": ("2", "3"),
    "absent": (None, None),
}


def set_levels(environ_value: str | None, c_value: str | None) -> None:
    if environ_value is None:
        os.environ.pop("WORLD_SIZE", None)
    else:
        os.environ["WORLD_SIZE"] = environ_value
    if c_value is None:
        os.unsetenv("WORLD_SIZE")
    else:
        os.putenv("WORLD_SIZE", c_value)


@pytest.fixture(params=list(LEVELS), ids=list(LEVELS))
def levels(request: pytest.FixtureRequest) -> Iterator[tuple[str | None, str | None]]:
    before = LEVELS[request.param]
    set_levels(*before)
    yield before
    os.environ.pop("WORLD_SIZE", None)
    os.unsetenv("WORLD_SIZE")


def state() -> tuple[str | None, str | None]:
    return os.environ.get("WORLD_SIZE"), c_getenv("WORLD_SIZE")


def factory() -> object:
    assert state() == (None, None)
    return RESULT


def guarded_view() -> tuple[str | None, str | None, str | None]:
    return (*state(), original_env("WORLD_SIZE"))


guarded_factory = single_instance_build(factory)
guarded_view_call = single_instance_build(guarded_view)


def with_context_manager() -> object:
    with single_instance_env():
        return factory()


def nested() -> object:
    with single_instance_env():
        return guarded_factory()


FORMS: dict[str, Callable[[], object]] = {
    "decorator": guarded_factory,
    "context manager": with_context_manager,
    "nested": nested,
}


class Injector:
    """Runs *handler* once, before the *at*-th instruction run in ``_scope``.

    A handler that returns may run before any instruction: the code it
    interrupted then goes on as if nothing ran. One that raises, only where
    a signal handler can run. With *at_calls*, only the first instruction of
    each function call counts: there the interpreter checks for signals (on
    entry) on every version, and an exception raised there is raised in the
    caller's call, as a signal's would be. (Where else it checks differs
    between versions, and an exception raised by a trace function at the
    instruction after a call is raised outside a try that the call was in.)
    """

    def __init__(self, at: int, handler: Callable[[], None], at_calls: bool) -> None:
        self.at, self.handler, self.at_calls = at, handler, at_calls
        self.seen, self.done = 0, False

    def global_trace(self, frame: FrameType, event: str, arg: Any) -> Any:
        if frame.f_code.co_filename != SCOPE_FILE:
            return None
        if self.at_calls:
            self.fire()
            return None
        frame.f_trace_opcodes = True
        frame.f_trace_lines = False
        frame.f_trace = self.local_trace
        # 3.12 and later turn opcode events on only when tracing is set again.
        sys.settrace(self.global_trace)
        return self.local_trace

    def local_trace(self, frame: FrameType, event: str, arg: Any) -> Any:
        if event == "opcode":
            self.fire()
        return self.local_trace

    def fire(self) -> None:
        if self.seen == self.at:
            self.done = True
            self.handler()
        self.seen += 1

    def run(self, call: Callable[[], object]) -> object:
        previous = sys.gettrace()
        sys.settrace(self.global_trace)
        try:
            return call()
        finally:
            sys.settrace(previous)


def at_every_instruction(
    call: Callable[[], object],
    make_handler: Callable[[], Callable[[], None]],
    at_calls: bool = False,
) -> Iterator[tuple[int, Callable[[], None], Callable[[], object]]]:
    """Yield (instruction, handler, run) for each instruction of ``_scope`` that *call* runs."""
    at = 0
    while True:
        handler = make_handler()
        injector = Injector(at, handler, at_calls)
        yield at, handler, functools.partial(injector.run, call)
        if not injector.done:
            assert at >= (3 if at_calls else 30), "the trace saw too few: the test proved nothing"
            return
        at += 1


class Recorder:
    """A handler's code: what it does, and what it saw."""

    def __init__(self, action: Callable[[], object]) -> None:
        self.action = action
        self.seen: list[object] = []

    def __call__(self) -> None:
        self.seen.append(self.action())


def with_block_view() -> tuple[str | None, str | None, str | None]:
    with single_instance_env():
        return guarded_view()


HANDLERS: dict[str, Callable[[], object]] = {
    "original_env()": lambda: original_env("WORLD_SIZE"),
    "guarded function": guarded_view_call,
    "with single_instance_env()": with_block_view,
}


class TestHandlerUsingTheLibrary:
    @pytest.mark.parametrize("form", list(FORMS))
    @pytest.mark.parametrize("handler", list(HANDLERS))
    def test_call_that_succeeds_returns_its_result_and_everything_is_restored(
        self, levels: tuple[str | None, str | None], handler: str, form: str
    ) -> None:
        """A handler calling the library at any instruction of the bookkeeping changes nothing.

        The call returns its result, the handler reads the value as it was
        before the call, a guarded call in the handler sees it hidden, and
        each level of the environment comes back as it was.
        """
        environ_value = levels[0]
        expected = environ_value if handler == "original_env()" else (None, None, environ_value)
        recorders: list[Recorder] = []

        def record() -> Recorder:
            recorders.append(Recorder(HANDLERS[handler]))
            return recorders[-1]

        for at, _, run in at_every_instruction(FORMS[form], record):
            assert run() is RESULT, at
            assert state() == levels, at
            assert _scope._hidden == {}, at
            assert recorders[-1].seen in ([], [expected]), at

    @pytest.mark.parametrize("form", list(FORMS))
    def test_handler_that_leaves_a_scope_open_keeps_the_value_hidden_until_it_ends(
        self, levels: tuple[str | None, str | None], form: str
    ) -> None:
        """A scope the handler enters and something ends after the call still brings it back."""
        left_open: list[single_instance_env] = []

        def enter() -> Callable[[], None]:
            def handler() -> None:
                scope = single_instance_env()
                scope.__enter__()
                left_open.append(scope)

            return handler

        for at, _, run in at_every_instruction(FORMS[form], enter):
            assert run() is RESULT, at
            if left_open:
                assert state() == (None, None), at
                assert original_env("WORLD_SIZE") == levels[0], at
                left_open.pop().__exit__(None, None, None)
            assert state() == levels, at
            assert _scope._hidden == {}, at

    @pytest.mark.parametrize("form", list(FORMS))
    def test_handler_raising_at_any_call_leaves_everything_restored(
        self, levels: tuple[str | None, str | None], form: str
    ) -> None:
        """Ctrl-C at the start of any function of the bookkeeping: the end is finished first."""

        def interrupt() -> Callable[[], None]:
            def handler() -> None:
                raise KeyboardInterrupt

            return handler

        for at, _, run in at_every_instruction(FORMS[form], interrupt, at_calls=True):
            with contextlib.suppress(KeyboardInterrupt):
                assert run() is RESULT, at
            assert state() == levels, at
            assert _scope._hidden == {}, at
