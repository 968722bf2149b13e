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
leaves a state the outer code still agrees with.

The same holds for code that re-enters this module between any two
instructions: a signal handler, a finalizer or a trace function that reads
:func:`original_env` (which changes nothing) or runs whole guarded calls.
Such code runs to its end before the interrupted code goes on, so every step
here either re-reads what it acts on or acts in one C call that does not run
Python code (``dict.setdefault``, ``dict.pop``): the entry of an ended scope
is removed by popping whatever is under its key, and put back if that was a
scope opened meanwhile. The lock is never held while user code runs.

A scope works on the ``os.environ`` that is current when it starts, and puts
its values back into that same mapping, even if ``os.environ`` is rebound
meanwhile (a test's ``monkeypatch``): each mapping's variables are tracked
apart. The interpreter's own ``os.environ`` has two levels: its mapping of
encoded names to encoded values, and the C-level environment that its writes
reach (``putenv``), which native code and child processes read. The two can
differ (``os.putenv`` or ``os.unsetenv`` alone, native code calling
``setenv``). There a scope saves the bytes of each level apart, removes the
variable from both, and puts each level back as it was, byte for byte.
"""

from __future__ import annotations

import itertools
import logging
import os
import sys
import threading
import types
from collections import deque
from collections.abc import Awaitable, Callable, MutableMapping
from itertools import repeat
from typing import Any, TypeAlias, TypeVar, cast, overload

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

# A hidden variable's entry: [its value before the first scope (None: it was
# absent), {scope token: ident of the thread that opened the scope}, its bytes
# at the C level before the first scope (None: unset), the mapping it is hidden
# from if that is not the interpreter's own os.environ (else None), its encoded
# name if it is (else None)]. In the interpreter's own os.environ the value is
# the encoded bytes that os.environ keeps, in any other mapping the value
# itself, and the C level is not read (None). A list, not a class: this is the
# hot path of every guarded call. The key is the name in the interpreter's own
# os.environ, (name, id(mapping)) in any other; the entry keeps such a mapping
# alive, so its id names no other mapping meanwhile. No entry holds os.environ
# itself: a printed entry (a failed test's assertion) must not print every value.
_Entry = list[Any]
_SAVED, _OWNERS, _C, _ENV, _BKEY = 0, 1, 2, 3, 4

# The interpreter's own mapping, and the dict of encoded names and values
# behind it, which this module reads and writes directly, calling
# os.putenv/os.unsetenv for the C level as os.environ's own methods do: a
# scope then reads and restores each level byte for byte, at less cost than
# going through the mapping's methods. If os.environ is not the interpreter's
# own at import (a test rebound it), or not POSIX's (elsewhere it keeps str,
# not bytes), every mapping is treated as a plain one.
_ENVIRON: Env | None = (
    os.environ if os.name == "posix" and type(os.environ) is getattr(os, "_Environ", None) else None
)
_DATA: dict[bytes, bytes] = getattr(_ENVIRON, "_data", {})
_ENCODING = sys.getfilesystemencoding()  # how os.environ encodes names and values on POSIX

#: The module in ``sys.modules`` that holds the scopes of every copy of this
#: module in a process (a vendored copy, one imported again after a purge, a
#: reload): the environment is the process's, so copies that each saved and put
#: back a variable would undo each other's scopes. The protocol between copies:
#: another layout of its attributes or of an entry needs another name.
SHARED = "_single_instance_build_scopes_1"


def _shared() -> types.ModuleType:
    """The process's :data:`SHARED` module: ``hidden``, ``lock``, ``tokens`` and ``pid``."""
    state = sys.modules.get(SHARED)
    if state is None:
        fresh = types.ModuleType(SHARED, "The hidden variables of single_instance_build's scopes.")
        vars(fresh).update(
            hidden={},
            lock=threading.RLock(),  # reentrant: the garbage collector may end a scope inside it
            tokens=itertools.count(),  # next() is atomic: a unique token per scope
            pid=os.getpid(),  # the process whose threads may hold the lock
        )
        state = sys.modules.setdefault(SHARED, fresh)  # atomic: one of two racing copies wins
    return state


_state = _shared()
_hidden: dict[str | tuple[str, int], _Entry] = _state.hidden
_lock: threading.RLock = _state.lock
_acquire, _release = _lock.acquire, _lock.release
_tokens: itertools.count[int] = _state.tokens
# Names are iterated in C (map, consumed by a deque's extend), not by a for
# loop: CPython 3.13 can run a signal handler at a loop's back edge outside the
# try around it (python/cpython#130279), which would skip releasing the lock.
_sink: deque[object] = deque(maxlen=0)
_consume = _sink.extend
_get_ident = threading.get_ident
_DEBUG = logging.DEBUG

# The C library's getenv, loaded by the first scope (ctypes costs a few
# milliseconds to import; a process that builds models has it already).
_getenv: Callable[[bytes], bytes | None] | None = None


def _load_getenv() -> None:
    """Load the C library's ``getenv``; without one, take the C level to agree with os.environ."""
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
        _getenv = _DATA.get  # what os.environ's writes would have put there
    else:
        _getenv = getenv  # only once set up: another thread may use it at once


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


def _read(env: Env, name: str) -> _Entry:
    """A new entry for *name* in *env*, with no owner yet, holding what each level has now."""
    if env is _ENVIRON:
        bkey = name.encode(_ENCODING, "surrogateescape")  # as os.environ encodes it
        return [_DATA.get(bkey), {}, _getenv(bkey), None, bkey]  # type: ignore[misc]  # loaded
    return [env.get(name), {}, None, env, None]


def _remove(env: Env, name: str, bkey: bytes | None) -> None:
    """Remove *name* from *env*, at both levels in the interpreter's own os.environ."""
    if bkey is not None:
        os.unsetenv(bkey)  # looked up on each call, as os.environ's own methods do
        _DATA.pop(bkey, None)
        return
    try:
        del env[name]
    except KeyError:  # another thread deleted it first: absent, as wanted
        pass


def _restore(env: Env, name: str, entry: _Entry) -> None:
    """Put back what *entry* saved of *name*, each level as it was."""
    saved, bkey = entry[_SAVED], entry[_BKEY]
    if bkey is not None:
        c_level = entry[_C]
        if c_level is None:
            os.unsetenv(bkey)
        else:
            os.putenv(bkey, c_level)
        if saved is None:
            _DATA.pop(bkey, None)
        else:
            _DATA[bkey] = saved
    elif saved is None:
        try:
            del env[name]
        except KeyError:
            pass
    else:
        env[name] = saved


def _hide(env: Env, name: str, token: int, ident: int) -> None:
    """Make *token* an owner of *name* in *env*, saving its value if it is the first; hide it."""
    key = name if env is _ENVIRON else (name, id(env))
    entry = _hidden.get(key)
    if entry is not None and not entry[_OWNERS]:
        _finish_stale(key, env, name, entry)
        entry = None
    if entry is None:
        # Read, store, only then remove: an interrupt cannot lose the value.
        entry = _hidden.setdefault(key, _read(env, name))
    entry[_OWNERS][token] = ident
    if _hidden.get(key) is not entry:
        _claim_fresh(key, env, name, token, ident)
    else:
        _remove(env, name, entry[_BKEY])


def _finish_stale(key: str | tuple[str, int], env: Env, name: str, entry: _Entry) -> None:
    """Finish the end of the last scope of *name*, cut short by a second interrupt.

    The entry has no owner left. If the variable is absent from the mapping,
    its value had not come back yet: put it back. If it is set, that value is
    the newer one.
    """
    bkey = entry[_BKEY]
    if (env.get(name) if bkey is None else _DATA.get(bkey)) is None:
        if entry[_SAVED] is not None:
            _restore(env, name, entry)
        elif entry[_C] is not None and _getenv(bkey) is None:  # type: ignore[misc]  # loaded
            os.putenv(bkey, entry[_C])
    _drop(key, env, name, entry)


def _drop(key: str | tuple[str, int], env: Env, name: str, entry: _Entry) -> None:
    """Remove the entry of *key*, whose last scope has ended and whose value is back.

    Popped, not checked and then deleted: code that re-enters here between
    a check and a deletion (a signal handler, a finalizer) may have removed
    the entry already, or replaced it with the entry of a scope it opened
    and left open. That one is put back, and its variable hidden again: the
    value may have been put back after that scope hid it.
    """
    other = _hidden.pop(key, None)
    if other is not None and (other is not entry or other[_OWNERS]):
        _hidden.setdefault(key, other)
        _remove(env, name, other[_BKEY])


def _claim_fresh(key: str | tuple[str, int], env: Env, name: str, token: int, ident: int) -> None:
    """Claim *name* again: a finalizer ended its last other scope while it was being claimed."""
    while True:
        entry = _hidden.setdefault(key, _read(env, name))
        entry[_OWNERS][token] = ident
        if _hidden.get(key) is entry:
            break
    _remove(env, name, entry[_BKEY])


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
            if empty:
                _restore(env, name, entry)
            else:  # also removes it if another thread set it meanwhile
                _remove(env, name, entry[_BKEY])
            # A finalizer run by the write may have ended the last other owner,
            # and put the value back before the write above removed it again.
            if (not owners) is empty:
                break
        if not owners:
            _drop(key, env, name, entry)  # last: until the value is back, the entry keeps it
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
    # Reads only: a signal handler may call it in the middle of a scope's
    # bookkeeping, which must find the state as it left it.
    with _lock:
        entry = _hidden.get(key)
        if entry is not None and not entry[_OWNERS]:  # an end cut short by a second interrupt
            current = env.get(name)
            if current is not None:  # set since, or already back
                return current
        elif entry is None:
            return env.get(name, default)
        saved = entry[_SAVED]
        if saved is None:
            return default
        if entry[_BKEY] is None:
            return str(saved)
        return str(saved.decode(_ENCODING, "surrogateescape"))  # as os.environ decodes it


def _after_fork_in_child() -> None:
    """End, in a forked child, the scopes of threads that do not exist there."""
    global _lock, _acquire, _release  # another thread of the parent may have held it
    if _state.pid != os.getpid():  # the first copy to run here; the others take its lock
        vars(_state).update(lock=threading.RLock(), pid=os.getpid())
    _lock = _state.lock
    _acquire, _release = _lock.acquire, _lock.release
    ident = _get_ident()
    for key, entry in list(_hidden.items()):
        name = key if isinstance(key, str) else key[0]
        foreign = [token for token, owner in entry[_OWNERS].items() if owner != ident]
        for token in foreign or [-1]:  # no such token as -1: just settle the name
            # An entry without a mapping of its own is one of _ENVIRON's.
            close((name,), token, cast(Env, _ENVIRON if entry[_ENV] is None else entry[_ENV]))


if hasattr(os, "register_at_fork"):  # POSIX only
    os.register_at_fork(after_in_child=_after_fork_in_child)
