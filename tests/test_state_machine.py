"""Random sequences of scopes, failing and interrupted calls, finalizers, threads and forks.

A Hypothesis state machine keeps a model of what each variable's value is, in
``os.environ`` and at the C level apart (``os.unsetenv`` or ``os.putenv``
alone make them differ), and which scopes are open, and after every step checks
that ``os.environ``, the C-level environment and ``original_env`` agree with
the model.
"""

from __future__ import annotations

import contextlib
import gc
import os
import threading
import time
from collections.abc import Callable, Generator, Iterator

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from single_instance_build import _scope, original_env, single_instance_build, single_instance_env

from support import c_getenv

NAMES = ("WORLD_SIZE", "RANK", "LOCAL_WORLD_SIZE")
VALUES = st.one_of(
    st.none(),
    st.just(""),
    st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\x00"), max_size=6),
)
SAME = "same as in os.environ"
C_VALUES = st.one_of(st.just(SAME), st.just(SAME), VALUES)  # the C level: mostly the same
SOME_NAMES = st.lists(st.sampled_from(NAMES), min_size=1, max_size=3).map(tuple)


class Cycle:
    """Garbage only the collector frees: what it holds is finalized by a collection."""

    def __init__(self, payload: object) -> None:
        self.payload, self.me = payload, self


def suspended_in_scope(names: tuple[str, ...]) -> Generator[None, None, None]:
    with single_instance_env(names):
        yield


@contextlib.contextmanager
def interrupting(function: str, names: tuple[str, ...], nth: int) -> Iterator[None]:
    """The nth os.putenv or os.unsetenv of one of *names* raises KeyboardInterrupt once done."""
    real: Callable[..., None] = getattr(os, function)
    keys = {name.encode() for name in names}
    calls = 0

    def interrupted(key: bytes, *value: bytes) -> None:
        nonlocal calls
        real(key, *value)
        if key in keys:
            calls += 1
            if calls == nth:
                raise KeyboardInterrupt

    setattr(os, function, interrupted)
    try:
        yield
    finally:
        setattr(os, function, real)


class ScopeMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.values: dict[str, str | None] = {}  # in os.environ
        self.c_values: dict[str, str | None] = {}  # at the C level
        self.scopes: list[tuple[single_instance_env, tuple[str, ...]]] = []
        self.generators: list[tuple[Generator[None, None, None], tuple[str, ...]]] = []

    def hidden(self) -> set[str]:
        return {name for _, names in self.scopes + self.generators for name in names}

    def guarded(self, names: tuple[str, ...], body: Callable[[], None]) -> Callable[[], None]:
        def check_and_run() -> None:
            for name in names:
                assert name not in os.environ, name
            body()

        return single_instance_build(check_and_run, env_vars=names)

    def set_levels(self, name: str, value: str | None, c_value: str | None) -> None:
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
        c_value = value if c_value == SAME else c_value
        if c_value is None:
            os.unsetenv(name)
        elif c_value != value:
            os.putenv(name, c_value)
        self.values[name], self.c_values[name] = value, c_value

    @initialize(
        prior=st.fixed_dictionaries(dict.fromkeys(NAMES, VALUES)),
        c_prior=st.fixed_dictionaries(dict.fromkeys(NAMES, C_VALUES)),
    )
    def set_prior(self, prior: dict[str, str | None], c_prior: dict[str, str | None]) -> None:
        for name in NAMES:
            self.set_levels(name, prior[name], c_prior[name])

    @rule(names=SOME_NAMES)
    def enter_scope(self, names: tuple[str, ...]) -> None:
        scope = single_instance_env(names)
        scope.__enter__()
        self.scopes.append((scope, names))

    @precondition(lambda self: self.scopes)
    @rule(data=st.data())
    def exit_any_scope(self, data: st.DataObject) -> None:
        index = data.draw(st.integers(0, len(self.scopes) - 1), label="scope")
        scope, _ = self.scopes.pop(index)
        scope.__exit__(None, None, None)

    @rule(names=SOME_NAMES, fails=st.booleans(), sets=st.booleans())
    def call_guarded(self, names: tuple[str, ...], fails: bool, sets: bool) -> None:
        def body() -> None:
            if sets:  # a factory may set what it hides: it comes back as it was
                os.environ[names[0]] = "set by the factory"
            if fails:
                raise RuntimeError("factory failed")

        with contextlib.suppress(RuntimeError):
            self.guarded(names, body)()

    @rule(
        names=SOME_NAMES,
        function=st.sampled_from(["putenv", "unsetenv"]),
        nth=st.integers(1, 4),
        nested=st.booleans(),
    )
    def interrupted_call(
        self, names: tuple[str, ...], function: str, nth: int, nested: bool
    ) -> None:
        """Ctrl-C inside the bookkeeping, in the middle of an environment write."""
        call = self.guarded(names, lambda: None)
        with contextlib.suppress(KeyboardInterrupt), interrupting(function, names, nth):
            if nested:
                with single_instance_env(names[::-1]):
                    call()
            else:
                call()

    @rule(names=SOME_NAMES)
    def suspend_generator_in_scope(self, names: tuple[str, ...]) -> None:
        generator = suspended_in_scope(names)
        next(generator)
        self.generators.append((generator, names))

    @precondition(lambda self: self.generators)
    @rule(data=st.data(), how=st.sampled_from(["close", "collect", "collect in a thread"]))
    def finalize_generator(self, data: st.DataObject, how: str) -> None:
        index = data.draw(st.integers(0, len(self.generators) - 1), label="generator")
        generator, _ = self.generators.pop(index)
        if how == "close":
            generator.close()
            return
        Cycle(generator)
        del generator
        if how == "collect":
            gc.collect()
        else:
            collector = threading.Thread(target=gc.collect)
            collector.start()
            collector.join()

    @rule(names=SOME_NAMES, fails=st.booleans())
    def call_guarded_in_thread(self, names: tuple[str, ...], fails: bool) -> None:
        errors: list[BaseException] = []

        def run() -> None:
            try:
                self.call_guarded(names, fails, sets=False)
            except BaseException as error:  # an assertion: reported to the test's thread
                errors.append(error)

        thread = threading.Thread(target=run)
        thread.start()
        thread.join()
        assert errors == []

    @rule(name=st.sampled_from(NAMES), value=VALUES, c_value=C_VALUES)
    def set_a_visible_variable(self, name: str, value: str | None, c_value: str | None) -> None:
        if name in self.hidden():
            return  # set under a scope, it is discarded when the scope ends
        self.set_levels(name, value, c_value)

    @precondition(lambda self: hasattr(os, "fork"))
    @rule()
    def fork_and_end_scopes_in_the_child(self) -> None:
        def child() -> int:
            try:
                self.environment_matches_model()
                for scope, _ in self.scopes:
                    scope.__exit__(None, None, None)
                for generator, _ in self.generators:
                    generator.close()
                self.scopes, self.generators = [], []
                self.environment_matches_model()
            except BaseException:
                return 3
            return 0 if _scope._hidden == {} else 4

        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            os._exit(child())
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                assert os.waitstatus_to_exitcode(status) == 0
                return
            time.sleep(0.001)
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        pytest.fail("the forked child hung")

    @invariant()
    def environment_matches_model(self) -> None:
        hidden = self.hidden()
        for name in NAMES:
            expected = self.values.get(name)
            assert original_env(name) == expected, name
            if name in hidden:
                assert name not in os.environ, name
                assert c_getenv(name) is None, name
            else:
                assert os.environ.get(name) == expected, name
                assert c_getenv(name) == self.c_values.get(name), name

    def teardown(self) -> None:
        for scope, _ in reversed(self.scopes):
            scope.__exit__(None, None, None)
        for generator, _ in self.generators:
            generator.close()
        self.scopes, self.generators = [], []
        self.environment_matches_model()
        assert _scope._hidden == {}
        for name in NAMES:  # the autouse fixture puts back os.environ, not the C level
            os.environ.pop(name, None)
            os.unsetenv(name)


ScopeMachine.TestCase.settings = settings(
    max_examples=60,
    stateful_step_count=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


@pytest.mark.filterwarnings("ignore:.*fork.*:DeprecationWarning")
class TestScopeMachine(ScopeMachine.TestCase):  # type: ignore[misc,valid-type]  # built by Hypothesis
    """Runs the state machine under pytest."""


def test_invariant_catches_a_variable_left_hidden() -> None:
    """The invariant catches a guard that leaves a variable hidden: the machine can fail."""
    machine = ScopeMachine()
    machine.set_prior(dict.fromkeys(NAMES, "1"), dict.fromkeys(NAMES, SAME))
    os.environ.pop("RANK")
    with pytest.raises(AssertionError):
        machine.environment_matches_model()
    os.environ["RANK"] = "1"
    machine.environment_matches_model()
    machine.set_levels("RANK", "1", None)  # in os.environ only: a C-level "1" is wrong
    os.putenv("RANK", "1")
    try:
        with pytest.raises(AssertionError):
            machine.environment_matches_model()
    finally:
        os.environ.pop("RANK")
        os.unsetenv("RANK")
