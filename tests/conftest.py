"""Shared fixtures: every test starts and ends with the same environment."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from single_instance_build import _scope


@pytest.fixture(autouse=True)
def _protect_environ() -> Iterator[None]:
    """Put back the environment a test changed, and fail a test that left a scope open."""
    before = dict(os.environ)
    yield
    leaked = dict(_scope._hidden)
    _scope._hidden.clear()
    for name in set(os.environ) - set(before):
        del os.environ[name]
    for name, value in before.items():
        if os.environ.get(name) != value:
            os.environ[name] = value
    assert not leaked, f"scopes left open over {sorted(leaked)}"


@pytest.fixture
def world_size() -> str:
    """A torchrun-like WORLD_SIZE in the environment of the test."""
    os.environ["WORLD_SIZE"] = "2"
    return "2"
