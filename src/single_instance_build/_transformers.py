"""The guard at the source: ``PreTrainedModel.from_pretrained`` of Transformers, patched.

:func:`guard_transformers` asks for the guard; the wrapper itself (wrapt, in
:mod:`._from_pretrained`) is put in ``PreTrainedModel.__dict__`` only when
``transformers.modeling_utils`` has been executed, by a hook of
:mod:`._import_hook`, or at once if it already was. This module imports no
more than :mod:`._names` and :mod:`._import_hook` at import time, so that the
``SINGLE_INSTANCE_BUILD`` switch costs next to nothing until Transformers is
imported. :func:`unguard_transformers` puts the original classmethod back.

Lock order, the same everywhere: the import lock of
``transformers.modeling_utils`` (held by an importing thread while the hook
runs), then this module's lock. Nothing here waits for that import while it
holds this module's lock.
"""

from __future__ import annotations

import os
import sys
from _thread import RLock

from . import _ray
from ._import_hook import module_lock, when_imported
from ._names import DEFAULT_ENV_VARS, check_source_names

TYPE_CHECKING = False  # typing itself costs start-up time; type checkers know this name
if TYPE_CHECKING:
    from collections.abc import Iterable
    from contextlib import AbstractContextManager
    from types import ModuleType
    from typing import Any

__all__ = ["GuardStatus", "activate", "guard_transformers", "status", "unguard_transformers"]

MODULE = "transformers.modeling_utils"
CLASS = "PreTrainedModel"
ATTRIBUTE = "from_pretrained"
OWNER = f"{MODULE}.{CLASS}.{ATTRIBUTE}"


class GuardStatus:
    """Whether :func:`guard_transformers` is in effect in this process, and since what."""

    __slots__ = ("installed", "names", "origins")

    def __init__(self, names: tuple[str, ...], origins: tuple[str, ...], installed: bool) -> None:
        self.names = names  #: the names asked for; () when not guarded
        self.origins = origins  #: what asked for the guard, first first
        #: True only while the live PreTrainedModel.from_pretrained is the guard
        self.installed = installed

    def __repr__(self) -> str:
        return (
            f"GuardStatus(names={self.names!r}, origins={self.origins!r}, "
            f"installed={self.installed!r})"
        )


# All of the state below changes under _lock. It is reentrant because the hook
# can run in a thread that is inside activate(): a module imported by a log
# handler, say.
_lock = RLock()
_names: tuple[str, ...] = ()  # what is asked for; () when not guarded
_origins: tuple[str, ...] = ()
# Every (class, original, wrapper) put in place: a reload makes a new class.
_installed: list[tuple[type, Any, Any]] = []
_generation = 0  # counts the changes of _names: _ray keeps the latest it is told of
_reported = False  # the "cannot guard" line is printed once per process


def _report(error: BaseException) -> None:
    """Say once on stderr that Transformers stays unguarded; never raises, no traceback."""
    global _reported
    if _reported:
        return
    _reported = True
    import contextlib

    reason = str(error).splitlines()[0] if str(error) else ""
    with contextlib.suppress(Exception):  # no stderr (pythonw): nothing else to tell
        sys.stderr.write(
            f"single-instance-build: Transformers is NOT guarded ({type(error).__name__}: "
            f"{reason}); from_pretrained(..., device_map='auto') sees {', '.join(_names)}\n"
        )


_LAYERS = 8  # how deep _live_wrapper looks through wrappers put on top of ours


def _live_wrapper(module: ModuleType | None) -> Any:
    """Our wrapper that the live ``PreTrainedModel.from_pretrained`` runs, else None.

    It is what ``PreTrainedModel.__dict__`` holds, or under it: another copy of
    this package (vendored, say) puts its own wrapper on top of ours, and
    reaches ours through ``__wrapped__``, as a ``functools.wraps`` wrapper does.
    """
    cls = None if module is None else vars(module).get(CLASS)
    found = vars(cls).get(ATTRIBUTE) if isinstance(cls, type) else None
    for _ in range(_LAYERS):
        if found is None:
            return None
        if any(wrapper is found for _, _, wrapper in _installed):
            return found
        try:
            found = getattr(found, "__wrapped__", None)
        except Exception:  # a proxy of some other tool that raises: not ours
            return None
    return None


def _install(module: ModuleType) -> None:
    """Guard *module*'s ``PreTrainedModel`` for ``_names`` (called under _lock)."""
    from . import _from_pretrained  # wrapt: only once Transformers is there

    for _, _, wrapper in _installed:  # widen every layer, a reloaded module's old class too
        _from_pretrained.set_names(wrapper, _names)
    if _live_wrapper(module) is not None:
        return
    import logging

    logger = logging.getLogger("single_instance_build")
    cls = vars(module).get(CLASS)
    original = vars(cls).get(ATTRIBUTE) if isinstance(cls, type) else None
    if original is None:
        logger.warning("%s not found: Transformers is not guarded", OWNER)
        return
    wrapper = _from_pretrained.wrap(original, _names)
    setattr(cls, ATTRIBUTE, wrapper)
    _installed.append((cls, original, wrapper))  # type: ignore[arg-type]  # cls is a type
    logger.debug("%s: guarding %s", OWNER, ", ".join(_names))


def _next_generation() -> tuple[tuple[str, ...], int]:
    """The names asked for now, numbered for :func:`._ray.carry` (called under _lock)."""
    global _generation
    _generation += 1
    return _names, _generation


def _on_import(module: ModuleType) -> None:
    """The hook run each time ``transformers.modeling_utils`` is executed; never raises."""
    with _lock:
        if not _names:
            return
        try:
            _install(module)
        except Exception as error:  # wrapt missing or broken: the import goes on
            _report(error)


def _initializing(module: ModuleType | None) -> bool:
    return bool(getattr(getattr(module, "__spec__", None), "_initializing", False))


def activate(names: tuple[str, ...], origin: str) -> None:
    """Guard ``from_pretrained`` for *names* (already checked), as asked by *origin*.

    Raises:
        ImportError: Transformers is imported and wrapt cannot be (nothing changed).
    """
    global _names, _origins
    if MODULE in sys.modules:
        from . import _from_pretrained  # noqa: F401 -- fail here, before anything changed
    lock: AbstractContextManager[object] | None = None
    if not _import_cut_by_fork:  # else its lock stays held by a thread the fork left behind
        try:
            lock = module_lock(MODULE)
            lock.__enter__()
        except RuntimeError:  # CPython's deadlock detection: this thread waits on the importer
            lock = None
    try:
        # Under the module's import lock: an import of it that began is over,
        # and one that begins later meets the hook registered here. Nothing in
        # here runs user code (a log handler), which a fork could cut off
        # while it holds the import lock.
        with _lock:
            _names = tuple(dict.fromkeys(_names + names))
            _origins = tuple(dict.fromkeys((*_origins, origin)))
            when_imported(MODULE, _on_import)
            carried = _next_generation()
    finally:
        if lock is not None:
            lock.__exit__(None, None, None)
    _ray.carry(*carried)  # outside every lock of this module: it may take Ray's import lock
    with _lock:
        module = sys.modules.get(MODULE)
        # One that is being imported (by this very thread) gets the hook.
        if _names and module is not None and not _initializing(module):
            _install(module)


def guard_transformers(*, env_vars: str | Iterable[str] = DEFAULT_ENV_VARS) -> None:
    """Guard Transformers' ``PreTrainedModel.from_pretrained`` in this process.

    From now on, a ``from_pretrained`` call that could switch to tensor
    parallelism (``device_map="auto"``, and none of ``tp_plan``, ``tp_size``,
    ``device_mesh`` or ``distributed_config``) runs with *env_vars* hidden,
    through the same scopes as :func:`single_instance_build`. Every
    other call, and all code outside ``from_pretrained``, sees the
    environment as it is. ``AutoModel*.from_pretrained``, ``pipeline(...)``
    and subclasses that override ``from_pretrained`` and call ``super()`` all
    go through it.

    Transformers is not imported: the guard is installed when
    ``transformers.modeling_utils`` is imported (in any thread, or again by
    ``importlib.reload``), or at once if it already is. Calling it again adds
    no second wrapper; with more names, the one wrapper hides the union.
    Thread-safe.

    A Ray job this process starts afterwards carries the guard to its
    workers through its runtime env (docs/ray.md).

    Limits: it guards this process only (and those Ray workers); a
    ``from_pretrained`` bound method captured before the guard was
    installed bypasses it; and the model's own
    ``__init__``, which runs inside ``from_pretrained``, sees the variables
    hidden too.

    Args:
        env_vars: the variable name, or an iterable of names, to hide (a
            string is one name, not a comma-separated list): upper-case ASCII
            letters, digits and ``_``, not starting with a digit, as the
            launcher and the ``SINGLE_INSTANCE_BUILD`` variable can carry them
            to child processes. Default: ``("WORLD_SIZE",)``.

    Raises:
        TypeError: *env_vars* is not a name or an iterable of names.
        ValueError: a name is outside that grammar.
        ImportError: Transformers is imported already and wrapt cannot be.
    """
    activate(check_source_names(env_vars), "guard_transformers()")


def unguard_transformers() -> None:
    """Undo :func:`guard_transformers`: put the original ``from_pretrained`` object back.

    A later import of Transformers is left unguarded, and references to the
    guarded method taken meanwhile stop hiding anything. Calling it when not
    guarded does nothing.
    """
    with _lock:
        carried = _uninstall()
    _ray.carry(*carried)


def _uninstall() -> tuple[tuple[str, ...], int]:
    """Put every original back (called under _lock); what :func:`._ray.carry` is to be told."""
    global _names, _origins
    _names, _origins = (), ()
    carried = _next_generation()
    if _installed:
        from . import _from_pretrained

        installed = _installed[:]
        _installed.clear()
        for cls, original, wrapper in installed:
            _from_pretrained.set_names(wrapper, ())
            if vars(cls).get(ATTRIBUTE) is wrapper:
                setattr(cls, ATTRIBUTE, original)
            else:  # patched again on top of ours: leave that patch, ours now hides nothing
                import logging

                logging.getLogger("single_instance_build").warning(
                    "%s was replaced after it was guarded: left as it is", OWNER
                )
    return carried


def status() -> GuardStatus:
    """What :func:`guard_transformers` does in this process right now.

    ``installed`` is read from the live ``PreTrainedModel``: true only while
    its ``from_pretrained`` is the guard.
    """
    with _lock:
        installed = _live_wrapper(sys.modules.get(MODULE)) is not None
        return GuardStatus(_names, _origins, installed and bool(_names))


# True in a child forked while transformers.modeling_utils was being imported: no
# thread of the child finishes that import (unless the forking thread was the
# importer), and its import lock is never released, so activate() must not wait for it.
_import_cut_by_fork = False


def _after_fork_in_child() -> None:
    """A new lock in a forked child: another thread of the parent may have held it."""
    global _lock, _import_cut_by_fork
    _lock = RLock()
    _import_cut_by_fork = _initializing(sys.modules.get(MODULE))


if hasattr(os, "register_at_fork"):  # POSIX only
    os.register_at_fork(after_in_child=_after_fork_in_child)
