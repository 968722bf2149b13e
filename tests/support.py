"""Helpers the tests import, and stand-ins that child processes can import too."""

from __future__ import annotations

import ctypes
import importlib
import os
from typing import Any

import pytest

from single_instance_build import single_instance_build

_libc = ctypes.CDLL(None)
_libc.getenv.restype = ctypes.c_char_p
_libc.getenv.argtypes = [ctypes.c_char_p]


def require(*modules: str) -> None:
    """Skip without the [torch] extra, except under CI, where its absence is an error.

    Tests that call it carry the ``transformers`` marker, so that a run without
    the extra deselects them: ``-m "not integration and not transformers"``.
    """
    for module in modules:
        if os.environ.get("CI") == "true":
            importlib.import_module(module)  # an ImportError fails the test
        else:
            pytest.importorskip(module, reason=f"{module} is in the [torch] extra")


def c_getenv(name: str) -> str | None:
    """The variable as C code, and so a native library, sees it."""
    value: bytes | None = _libc.getenv(name.encode())
    return None if value is None else value.decode("utf-8", "surrogateescape")


def c_getenv_bytes(name: str) -> bytes | None:
    """The variable's bytes at the C level, as a native library reads them."""
    value: bytes | None = _libc.getenv(os.fsencode(name))
    return value


def seen_world_size() -> str | None:
    """What a factory sees: WORLD_SIZE, or None where it is absent."""
    return os.environ.get("WORLD_SIZE")


class StandInModel:
    """A model class whose constructor records the environment it was built in."""

    def __init__(self, model_path: str, **kwargs: Any) -> None:
        self.model_path = model_path
        self.kwargs = kwargs
        self.seen_world_size = os.environ.get("WORLD_SIZE")
        self.seen_rank = os.environ.get("RANK")


def build_stand_in(model_path: str = "stand-in") -> StandInModel:
    """A module-level factory function."""
    return StandInModel(model_path)


def build_in_worker(factory: Any) -> tuple[str | None, str | None, str | None]:
    """Run in a spawned worker: build with *factory*; report what it saw and what is left."""
    model = factory()
    return model.seen_world_size, model.model_path, os.environ.get("WORLD_SIZE")


@single_instance_build
def build_guarded(model_path: str = "stand-in") -> StandInModel:
    """A module-level decorated factory."""
    return StandInModel(model_path)


class GuardedMethods:
    """A class whose methods are decorated: bound, they pickle as getattr(holder, name)."""

    def __init__(self, model_path: str = "stand-in") -> None:
        self.model_path = model_path

    @single_instance_build
    def build(self) -> StandInModel:
        return StandInModel(self.model_path)

    @single_instance_build
    @classmethod
    def from_config(cls, model_path: str = "stand-in") -> StandInModel:
        return StandInModel(model_path)

    @single_instance_build
    @staticmethod
    def static(model_path: str = "stand-in") -> StandInModel:
        return StandInModel(model_path)


@single_instance_build
class DecoratedModel(StandInModel):
    """A module-level decorated class with class and static method constructors."""

    @classmethod
    def from_pretrained(cls, model_path: str) -> StandInModel:
        return cls(model_path)

    @staticmethod
    def from_static(model_path: str) -> StandInModel:
        return StandInModel(model_path)


def run_isolated(code: str, timeout: float = 120) -> str:
    """Run *code* in a fresh interpreter and return its stdout; fail if it errs or hangs.

    For tests that may deadlock or leave a process-wide state behind on failure.
    """
    import subprocess
    import sys
    import textwrap

    try:
        done = subprocess.run(
            [sys.executable, "-c", textwrap.dedent(code)],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        raise AssertionError(f"the child hung for {timeout} s (a deadlock?)") from None
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout
