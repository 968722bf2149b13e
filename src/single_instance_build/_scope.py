"""The one place where the process environment is changed.

``os.environ`` is shared by every thread and asyncio task of a process, so a
hidden variable is tracked process-wide: the first scope that names it saves
its value (or its absence), every scope registers itself as an owner, and
when the last owner is gone the saved value is put back.

Each change is written so that it can be interrupted anywhere and then be
finished by running it again. A scope's end does not count down: it removes
its own owner token (a second removal does nothing) and then makes the
environment agree with the owners that are left. So a scope's end that a
``KeyboardInterrupt`` cut short is simply run again; one that another thread
raced (deleting a hidden variable) still finishes every name; and a garbage
collection that ends another scope in the middle of the bookkeeping (a
dropped generator or coroutine) re-enters the lock, which is reentrant, and
leaves a state the outer code still agrees with. The lock is never held
while user code runs.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
from collections import deque
from collections.abc import Awaitable, Callable
from itertools import repeat
from typing import Any, TypeVar, overload

from ._names import check_name

__all__ = [
    "await_hidden",
    "call_hidden",
    "close",
    "close_again",
    "new_token",
    "open_scope",
    "original_env",
]

logger = logging.getLogger("single_instance_build")
R = TypeVar("R")


# A hidden variable's entry: [its value before the first scope (None: it was
# absent), {scope token: ident of the thread that opened the scope}]. A list,
# not a class: this is the hot path of every guarded call.
_Entry = list[Any]
_SAVED, _OWNERS = 0, 1

_environ = os.environ
_hidden: dict[str, _Entry] = {}
_lock = threading.RLock()  # reentrant: the garbage collector may end a scope inside it
_acquire, _release = _lock.acquire, _lock.release
_tokens = itertools.count()  # next() is atomic: a unique token per scope
# Names are iterated in C (map, consumed by a deque's extend), not by a for
# loop: CPython 3.13 can run a signal handler at a loop's back edge outside the
# try around it (python/cpython#130279), which would skip releasing the lock.
_sink: deque[object] = deque(maxlen=0)
_consume = _sink.extend
_get_ident = threading.get_ident
_DEBUG = logging.DEBUG


def open_scope(names: tuple[str, ...], token: int) -> None:
    """Hide each variable in *names* until :func:`close` runs for the same *token*.

    Call it inside the ``try`` whose ``finally`` calls :func:`close`: an
    interrupted opening is undone by the closing. *names* must come from
    ``normalize_env_vars`` and *token* from :func:`new_token`.
    """
    ident = _get_ident()
    # acquire() inside the try: a signal raising right after it returns still
    # reaches the release. (A with-statement is as safe and costs more.)
    try:
        _acquire()
        if len(names) == 1:
            _hide(names[0], token, ident)
        else:
            _consume(map(_hide, names, repeat(token), repeat(ident)))
    finally:
        # Inline, not a helper function: a signal can interrupt a Python call
        # before its first line, but not a C call such as release().
        try:
            _release()
        except RuntimeError:  # acquire() was interrupted while it waited: not held
            pass


def _hide(name: str, token: int, ident: int) -> None:
    """Make *token* an owner of *name*, saving its value if it is the first, and hide it."""
    entry = _hidden.get(name)
    if entry is not None and not entry[_OWNERS]:
        _finish_stale(name, entry)
        entry = None
    if entry is None:
        # Read, store, only then remove: an interrupt cannot lose the value.
        entry = _hidden.setdefault(name, [_environ.get(name), {}])
    entry[_OWNERS][token] = ident
    if _hidden.get(name) is not entry:
        _claim_fresh(name, token, ident)
    try:
        del _environ[name]
    except KeyError:
        pass


def _finish_stale(name: str, entry: _Entry) -> None:
    """Finish the end of the last scope of *name*, cut short by a second interrupt.

    The entry has no owner left. If the variable is absent, its value had not
    come back yet: put it back. If it is set, that value is the newer one.
    """
    saved = entry[_SAVED]
    if saved is not None and _environ.get(name) is None:
        _environ[name] = saved
    if not entry[_OWNERS] and _hidden.get(name) is entry:
        del _hidden[name]


def _claim_fresh(name: str, token: int, ident: int) -> None:
    """Claim *name* again: a finalizer ended its last other scope while it was being claimed."""
    while True:
        entry = _hidden.setdefault(name, [_environ.get(name), {}])
        entry[_OWNERS][token] = ident
        if _hidden.get(name) is entry:
            return


def close(names: tuple[str, ...], token: int) -> None:
    """End the scope *token*: put back each variable in *names* that no other scope hides.

    It removes the token, then makes the environment agree with the owners
    left, so running it again for the same *token* is harmless and finishes
    what an interrupted run left. Every name is settled whatever happens to
    another (a thread deleting a hidden variable meanwhile, say); the first
    error is raised after all of them.
    """
    error = None
    try:
        _acquire()
        if len(names) == 1:
            error = _end(names[0], token)
        else:  # list(): every name is settled before the first error is looked for
            error = next(filter(None, list(map(_end, names, repeat(token)))), None)
    finally:
        try:
            _release()
        except RuntimeError:
            pass
    if error is not None:
        raise error


def _end(name: str, token: int) -> Exception | None:
    """Remove *token* from the owners of *name* and settle it; return what went wrong."""
    try:
        entry = _hidden.get(name)
        if entry is None:
            return None
        owners = entry[_OWNERS]
        owners.pop(token, None)
        while True:
            owned = bool(owners)
            saved = entry[_SAVED]
            if owned or saved is None:
                try:
                    del _environ[name]  # also unsets it in C if os.environ lost it
                except KeyError:  # another thread deleted it first: absent, as wanted
                    pass
            else:
                _environ[name] = saved
            # A finalizer run by the write may have ended the last other owner,
            # and put the value back before the write above removed it again.
            if bool(owners) == owned:
                break
        if not owners and _hidden.get(name) is entry:
            del _hidden[name]  # last: until the value is back, the entry keeps it
    except Exception as exc:  # every name must be settled
        return exc
    return None


def close_again(names: tuple[str, ...], token: int) -> None:
    """Retry :func:`close` after it was interrupted (a signal handler raised) or failed."""
    for _ in range(3):
        try:
            close(names, token)
        except BaseException:
            continue
        return


def _log(action: str, owner: str, names: tuple[str, ...]) -> None:
    logger.debug("%s: %s %s", owner, action, ", ".join(names))


def call_hidden(
    names: tuple[str, ...],
    owner: str,
    func: Callable[..., R],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> R:
    """Call ``func(*args, **kwargs)`` with *names* hidden; *owner* names it in log records."""
    token = next(_tokens)
    debug = False
    try:
        open_scope(names, token)
        if debug := logger.isEnabledFor(_DEBUG):
            _log("hiding", owner, names)
        return func(*args, **kwargs)
    finally:
        # The try comes first: an interrupt before it would skip close().
        try:
            close(names, token)
        except BaseException:
            close_again(names, token)
            raise
        if debug:
            _log("restored", owner, names)


async def await_hidden(
    names: tuple[str, ...],
    owner: str,
    func: Callable[..., Awaitable[R]],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> R:
    """Await ``func(*args, **kwargs)`` with *names* hidden, across its awaits."""
    token = next(_tokens)
    debug = False
    try:
        open_scope(names, token)
        if debug := logger.isEnabledFor(_DEBUG):
            _log("hiding", owner, names)
        return await func(*args, **kwargs)
    finally:
        try:
            close(names, token)
        except BaseException:
            close_again(names, token)
            raise
        if debug:
            _log("restored", owner, names)


def new_token() -> int:
    """A token for one scope, unique in this process."""
    return next(_tokens)


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
    >>> from single_instance_build import single_instance_env
    >>> os.environ["WORLD_SIZE"] = "2"
    >>> with single_instance_env():
    ...     os.environ.get("WORLD_SIZE"), original_env("WORLD_SIZE")
    (None, '2')
    >>> del os.environ["WORLD_SIZE"]

    Raises:
        TypeError, ValueError: *name* is not a valid variable name.
    """
    name = check_name(name)
    with _lock:
        entry = _hidden.get(name)
        if entry is not None and not entry[_OWNERS]:
            _finish_stale(name, entry)
            entry = None
        if entry is None:
            return _environ.get(name, default)
        saved: str | None = entry[_SAVED]
        return default if saved is None else saved


def _after_fork_in_child() -> None:
    """End, in a forked child, the scopes of threads that do not exist there."""
    global _lock, _acquire, _release  # another thread of the parent may have held it
    _lock = threading.RLock()
    _acquire, _release = _lock.acquire, _lock.release
    ident = _get_ident()
    for name, entry in list(_hidden.items()):
        foreign = [token for token, owner in entry[_OWNERS].items() if owner != ident]
        for token in foreign or [-1]:  # no such token as -1: just settle the name
            close((name,), token)


if hasattr(os, "register_at_fork"):  # POSIX only
    os.register_at_fork(after_in_child=_after_fork_in_child)
