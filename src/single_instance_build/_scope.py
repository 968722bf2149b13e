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

A scope works on the ``os.environ`` that is current when it starts, and puts
its values back into that same mapping, even if ``os.environ`` is rebound
meanwhile (a test's ``monkeypatch``): each mapping's variables are tracked
apart. In the interpreter's own ``os.environ``, whose writes reach the C
level, a variable set only there (``os.putenv``, or native code calling
``setenv``) is hidden too, and its bytes are put back as they were. Where
``os.environ`` has the name, its value is the one put back, at both levels
(a different value given to ``os.putenv`` alone is not read: that would
cost a C call on every guarded call).
"""

from __future__ import annotations

import itertools
import logging
import os
import sys
import threading
from collections import deque
from collections.abc import Awaitable, Callable, MutableMapping
from itertools import repeat
from typing import Any, TypeAlias, TypeVar, overload

from ._names import check_name

__all__ = [
    "Env",
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


Env: TypeAlias = MutableMapping[str, str]

# A hidden variable's entry: [its value in the mapping before the first scope
# (None: it was absent), {scope token: ident of the thread that opened the
# scope}, its bytes at the C level if only the C level had it (else None), the
# mapping it is hidden from if that is not the interpreter's own os.environ
# (else None)]. A list, not a class: this is the hot path of every guarded
# call. The key is the name in the interpreter's own os.environ, (name,
# id(mapping)) in any other; the entry keeps such a mapping alive, so its id
# names no other mapping meanwhile. No entry holds os.environ itself: a
# printed entry (a failed test's assertion) must not print every value.
_Entry = list[Any]
_SAVED, _OWNERS, _C_ONLY, _ENV = 0, 1, 2, 3

_ENVIRON = os.environ  # the interpreter's own mapping: its writes reach the C level
_ENCODING = sys.getfilesystemencoding()  # how os.environ encodes names on POSIX
_hidden: dict[str | tuple[str, int], _Entry] = {}
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


def _no_getenv(name: bytes) -> bytes | None:
    return None


# The C library's getenv, loaded by the first scope (ctypes costs a few
# milliseconds to import; a process that builds models has it already).
_getenv: Callable[[bytes], bytes | None] | None = None


def _load_getenv() -> None:
    """Load the C library's ``getenv``, or a stand-in that finds nothing where there is none."""
    global _getenv
    try:
        import ctypes

        # PyDLL keeps the GIL during the call: no Python thread changes the
        # environment (os.putenv) while getenv reads it.
        getenv = ctypes.PyDLL(None).getenv
        getenv.restype = ctypes.c_char_p  # bytes, or None for NULL
        # No argtypes: it is only given bytes, which ctypes passes as char*,
        # and checking them would cost a tenth of a microsecond a call.
    except (ImportError, OSError, AttributeError):  # no ctypes, or no C library to ask
        _getenv = _no_getenv
    else:
        _getenv = getenv  # only once set up: another thread may use it at once


def _c_only(env: Env, name: str) -> bytes | None:
    """The bytes of *name* at the C level, if *env* is ``os.environ`` and lacks *name*."""
    if env is not _ENVIRON or _getenv is None:
        return None
    return _getenv(name.encode(_ENCODING, "surrogateescape"))


def open_scope(names: tuple[str, ...], token: int, env: Env) -> None:
    """Hide each variable in *names* from *env* until :func:`close` runs for the same *token*.

    Call it inside the ``try`` whose ``finally`` calls :func:`close` with the
    same *env*: an interrupted opening is undone by the closing. *names* must
    come from ``normalize_env_vars``, *token* from :func:`new_token`, and *env*
    is ``os.environ`` as read by the caller before that ``try``.
    """
    ident = _get_ident()
    if _getenv is None:  # outside the lock: an import must not run inside it
        _load_getenv()
    # acquire() inside the try: a signal raising right after it returns still
    # reaches the release. (A with-statement is as safe and costs more.)
    try:
        _acquire()
        if len(names) == 1:
            _hide(env, names[0], token, ident)
        else:
            _consume(map(_hide, repeat(env), names, repeat(token), repeat(ident)))
    finally:
        # Inline, not a helper function: a signal can interrupt a Python call
        # before its first line, but not a C call such as release().
        try:
            _release()
        except RuntimeError:  # acquire() was interrupted while it waited: not held
            pass


def _hide(env: Env, name: str, token: int, ident: int) -> None:
    """Make *token* an owner of *name* in *env*, saving its value if it is the first; hide it."""
    key = name if env is _ENVIRON else (name, id(env))
    entry = _hidden.get(key)
    if entry is not None and not entry[_OWNERS]:
        _finish_stale(key, env, name, entry)
        entry = None
    if entry is None:
        # Read, store, only then remove: an interrupt cannot lose the value.
        try:
            saved = env[name]  # not env.get(): one Python call less on the hot path
        except KeyError:
            _hide_absent(key, env, name, token, ident)
            return
        entry = _hidden.setdefault(key, [saved, {}, None, None if key is name else env])
    entry[_OWNERS][token] = ident
    if _hidden.get(key) is not entry:
        _claim_fresh(key, env, name, token, ident)
    else:
        try:
            del env[name]  # in os.environ, also unsets it in C, whether os.environ had it or not
        except KeyError:
            pass


def _hide_absent(key: str | tuple[str, int], env: Env, name: str, token: int, ident: int) -> None:
    """:func:`_hide` for a variable that *env* lacks: it may still be set at the C level."""
    c_only = _c_only(env, name)
    entry = _hidden.setdefault(key, [None, {}, c_only, None if env is _ENVIRON else env])
    entry[_OWNERS][token] = ident
    if _hidden.get(key) is not entry:
        _claim_fresh(key, env, name, token, ident)
    elif c_only is not None:  # else absent at both levels: nothing to remove
        try:
            del env[name]  # unsets it in C, then raises: os.environ lacks it
        except KeyError:
            pass


def _finish_stale(key: str | tuple[str, int], env: Env, name: str, entry: _Entry) -> None:
    """Finish the end of the last scope of *name*, cut short by a second interrupt.

    The entry has no owner left. If the variable is absent, its value had not
    come back yet: put it back. If it is set, that value is the newer one.
    """
    saved, c_only = entry[_SAVED], entry[_C_ONLY]
    if env.get(name) is None:
        if saved is not None:
            env[name] = saved
        elif c_only is not None and _c_only(env, name) is None:
            os.putenv(name.encode(_ENCODING, "surrogateescape"), c_only)
    if not entry[_OWNERS] and _hidden.get(key) is entry:
        del _hidden[key]


def _claim_fresh(key: str | tuple[str, int], env: Env, name: str, token: int, ident: int) -> None:
    """Claim *name* again: a finalizer ended its last other scope while it was being claimed."""
    while True:
        saved = env.get(name)
        c_only = None if saved is not None else _c_only(env, name)
        entry = _hidden.setdefault(key, [saved, {}, c_only, None if env is _ENVIRON else env])
        entry[_OWNERS][token] = ident
        if _hidden.get(key) is entry:
            break
    try:
        del env[name]
    except KeyError:
        pass


def close(names: tuple[str, ...], token: int, env: Env) -> None:
    """End the scope *token*: put back each variable in *names* that no other scope hides.

    *env* is the mapping given to :func:`open_scope`, whatever ``os.environ`` is now.

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
            error = _end(env, names[0], token)
        else:  # list(): every name is settled before the first error is looked for
            error = next(filter(None, list(map(_end, repeat(env), names, repeat(token)))), None)
    finally:
        try:
            _release()
        except RuntimeError:
            pass
    if error is not None:
        raise error


def _end(env: Env, name: str, token: int) -> Exception | None:
    """Remove *token* from the owners of *name* in *env* and settle it; return what went wrong."""
    try:
        key = name if env is _ENVIRON else (name, id(env))
        entry = _hidden.get(key)
        if entry is None:
            return None
        owners = entry[_OWNERS]
        owners.pop(token, None)
        while True:
            empty = not owners  # not bool(owners): a builtin call less on the hot path
            saved = entry[_SAVED]
            if empty and saved is not None:
                env[name] = saved
            else:
                try:
                    del env[name]  # also unsets it in C if os.environ lost it
                except KeyError:  # another thread deleted it first: absent, as wanted
                    pass
                if empty and entry[_C_ONLY] is not None:
                    # Back at the C level only, as it was; the name encoded as
                    # os.environ encodes it, so both reach the C level alike.
                    os.putenv(name.encode(_ENCODING, "surrogateescape"), entry[_C_ONLY])
            # A finalizer run by the write may have ended the last other owner,
            # and put the value back before the write above removed it again.
            if (not owners) is empty:
                break
        if not owners and _hidden.get(key) is entry:
            del _hidden[key]  # last: until the value is back, the entry keeps it
    except Exception as exc:  # every name must be settled
        return exc
    return None


def close_again(names: tuple[str, ...], token: int, env: Env) -> None:
    """Retry :func:`close` after it was interrupted (a signal handler raised) or failed."""
    for _ in range(3):
        try:
            close(names, token, env)
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
    env = os.environ  # the one current now, before the try that closes the scope in it
    debug = False
    try:
        open_scope(names, token, env)
        if debug := logger.isEnabledFor(_DEBUG):
            _log("hiding", owner, names)
        return func(*args, **kwargs)
    finally:
        # The try comes first: an interrupt before it would skip close().
        try:
            close(names, token, env)
        except BaseException:
            close_again(names, token, env)
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
    env = os.environ
    debug = False
    try:
        open_scope(names, token, env)
        if debug := logger.isEnabledFor(_DEBUG):
            _log("hiding", owner, names)
        return await func(*args, **kwargs)
    finally:
        try:
            close(names, token, env)
        except BaseException:
            close_again(names, token, env)
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

    Examples:
        >>> import os
        >>> from single_instance_build import single_instance_env
        >>> os.environ["WORLD_SIZE"] = "2"
        >>> with single_instance_env():
        ...     os.environ.get("WORLD_SIZE"), original_env("WORLD_SIZE")
        (None, '2')
        >>> del os.environ["WORLD_SIZE"]

    Args:
        name: the variable to read.
        default: what to return where the variable was not set either.

    Returns:
        The value the variable had before the scopes that hide it, or *default*.

    Raises:
        TypeError: *name* is not a ``str``.
        ValueError: *name* is empty or contains ``=`` or NUL.
    """
    name = check_name(name)
    env = os.environ
    key = name if env is _ENVIRON else (name, id(env))
    with _lock:
        entry = _hidden.get(key)
        if entry is not None and not entry[_OWNERS]:
            _finish_stale(key, env, name, entry)
            entry = None
        if entry is None:
            return env.get(name, default)
        saved: str | None = entry[_SAVED]
        return default if saved is None else saved


def _after_fork_in_child() -> None:
    """End, in a forked child, the scopes of threads that do not exist there."""
    global _lock, _acquire, _release  # another thread of the parent may have held it
    _lock = threading.RLock()
    _acquire, _release = _lock.acquire, _lock.release
    ident = _get_ident()
    for key, entry in list(_hidden.items()):
        name = key if isinstance(key, str) else key[0]
        foreign = [token for token, owner in entry[_OWNERS].items() if owner != ident]
        for token in foreign or [-1]:  # no such token as -1: just settle the name
            close((name,), token, _ENVIRON if entry[_ENV] is None else entry[_ENV])


if hasattr(os, "register_at_fork"):  # POSIX only
    os.register_at_fork(after_in_child=_after_fork_in_child)
