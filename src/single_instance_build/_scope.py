"""The one place where the process environment is changed.

``os.environ`` is shared by every thread and asyncio task of a process, so a
hidden variable is tracked process-wide: the first scope that names it saves
its value (or its absence) and removes it, later scopes only count, and the
last scope to end puts the saved value back. A short lock guards the
bookkeeping; it is never held while user code runs.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Awaitable, Callable, Iterable
from types import TracebackType
from typing import Any, TypeVar, overload

from ._names import DEFAULT_ENV_VARS, check_name, normalize_env_vars

__all__ = [
    "await_hidden",
    "call_hidden",
    "hide",
    "original_env",
    "restore",
    "single_instance_env",
]

logger = logging.getLogger("single_instance_build")
R = TypeVar("R")


class _Hidden:
    """A hidden variable: its value before the first scope, and how many scopes hide it."""

    __slots__ = ("depth", "saved")

    def __init__(self, saved: str | None) -> None:
        self.saved = saved  # None: the variable was absent
        self.depth = 1


_hidden: dict[str, _Hidden] = {}
_lock = threading.Lock()
# Bound once: this is the hot path of every guarded call.
_acquire, _release = _lock.acquire, _lock.release

if hasattr(os, "register_at_fork"):  # POSIX only
    # Hold the lock across fork() so the child's bookkeeping is consistent,
    # then release it on both sides: the child must not inherit it held.
    os.register_at_fork(before=_acquire, after_in_parent=_release, after_in_child=_release)


def hide(names: tuple[str, ...], owner: str) -> None:
    """Remove each variable in *names* from the environment, saving it for :func:`restore`.

    *names* must come from ``normalize_env_vars``; every call must be paired
    with one call of :func:`restore` with the same names. *owner* names the
    guarded code in log records.
    """
    _acquire()
    try:
        for name in names:
            entry = _hidden.get(name)
            if entry is None:
                _hidden[name] = _Hidden(os.environ.pop(name, None))
            else:
                entry.depth += 1
                # Already hidden, but code under another scope may have set it.
                os.environ.pop(name, None)
    finally:
        _release()
    if logger.isEnabledFor(logging.DEBUG):
        logger.debug("%s: hiding %s", owner, ", ".join(names))


def restore(names: tuple[str, ...], owner: str) -> None:
    """End one scope over *names*: put back each variable that no other scope still hides."""
    restored = []
    unknown = []
    _acquire()
    try:
        for name in names:
            entry = _hidden.get(name)
            if entry is None:
                unknown.append(name)
                continue
            entry.depth -= 1
            if entry.depth:
                os.environ.pop(name, None)
                continue
            del _hidden[name]
            if entry.saved is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = entry.saved
            restored.append(name)
    finally:
        _release()
    if unknown:
        raise RuntimeError(f"{owner}: restore() without hide() for {', '.join(unknown)}")
    if restored and logger.isEnabledFor(logging.DEBUG):
        logger.debug("%s: restored %s", owner, ", ".join(restored))


def call_hidden(
    names: tuple[str, ...],
    owner: str,
    func: Callable[..., R],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> R:
    """Call ``func(*args, **kwargs)`` with *names* hidden."""
    hide(names, owner)
    try:
        return func(*args, **kwargs)
    finally:
        restore(names, owner)


async def await_hidden(
    names: tuple[str, ...],
    owner: str,
    func: Callable[..., Awaitable[R]],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> R:
    """Await ``func(*args, **kwargs)`` with *names* hidden, across its awaits."""
    hide(names, owner)
    try:
        return await func(*args, **kwargs)
    finally:
        restore(names, owner)


@overload
def original_env(name: str) -> str | None: ...
@overload
def original_env(name: str, default: str) -> str: ...
@overload
def original_env(name: str, default: None) -> str | None: ...
def original_env(name: str, default: str | None = None) -> str | None:
    """Read a variable as it was before any active scope hid it.

    Outside a scope that hides *name* this is ``os.environ.get(name, default)``.
    Inside one it returns the hidden value, so factory code that needs the real
    world size can still read it.

    >>> import os
    >>> os.environ["WORLD_SIZE"] = "2"
    >>> with single_instance_env():
    ...     os.environ.get("WORLD_SIZE"), original_env("WORLD_SIZE")
    (None, '2')
    >>> del os.environ["WORLD_SIZE"]

    Raises:
        TypeError, ValueError: *name* is not a valid variable name.
    """
    check_name(name)
    with _lock:
        entry = _hidden.get(name)
        if entry is None:
            return os.environ.get(name, default)
        return default if entry.saved is None else entry.saved


class single_instance_env:  # noqa: N801 -- used like a function, as contextlib's are
    """Hide environment variables for the duration of a ``with`` block.

    The same scoping as :func:`single_instance_build`, for code that is not a
    single callable. An instance can be entered again, also nested and from
    several threads at once; each ``with`` is one scope.

    >>> import os
    >>> os.environ["WORLD_SIZE"] = "2"
    >>> with single_instance_env():
    ...     "WORLD_SIZE" in os.environ
    False
    >>> os.environ["WORLD_SIZE"]
    '2'
    >>> del os.environ["WORLD_SIZE"]

    Args:
        env_vars: the variable name, or names, to hide.

    Raises:
        TypeError, ValueError: *env_vars* is not a name or an iterable of
            valid names; raised here, before anything is hidden.
    """

    __slots__ = ("_names",)

    def __init__(self, env_vars: str | Iterable[str] = DEFAULT_ENV_VARS) -> None:
        self._names = normalize_env_vars(env_vars)

    @property
    def env_vars(self) -> tuple[str, ...]:
        """The names this scope hides."""
        return self._names

    def __enter__(self) -> None:
        hide(self._names, "single_instance_env")

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        restore(self._names, "single_instance_env")

    def __repr__(self) -> str:
        return f"single_instance_env(env_vars={self._names!r})"
