"""The guard at the source: ``PreTrainedModel.from_pretrained`` of Transformers, patched.

Transformers 4.50.0 to 4.53.3 switch to tensor parallelism in exactly one
place, ``PreTrainedModel.from_pretrained``: ``device_map == "auto"``, no
``tp_plan`` and a non-zero ``WORLD_SIZE``. :func:`guard_transformers` puts a
wrapt wrapper in that class's ``__dict__`` in place of the classmethod. The
wrapper hides the variables, through the same counted scopes as the
decorator, only for the calls where the switch can happen; every other call
runs untouched. Transformers is never imported here: the wrapper is installed
by a post-import hook when ``transformers.modeling_utils`` is imported, or at
once if it already is. :func:`unguard_transformers` puts the original
classmethod object back.
"""

from __future__ import annotations

import importlib
import logging
import sys
import threading
from collections.abc import Callable, Iterable
from types import ModuleType
from typing import Any

import wrapt

from ._names import DEFAULT_ENV_VARS, normalize_env_vars
from ._scope import call_hidden

__all__ = ["GuardStatus", "guard_transformers", "guarded_names", "status", "unguard_transformers"]

MODULE = "transformers.modeling_utils"
CLASS = "PreTrainedModel"
ATTRIBUTE = "from_pretrained"
OWNER = f"{MODULE}.{CLASS}.{ATTRIBUTE}"
#: Arguments by which a caller asks for parallelism itself; Transformers 5.x
#: reads ``WORLD_SIZE`` on purpose when ``distributed_config`` is given.
PARALLEL_ARGUMENTS = ("tp_plan", "tp_size", "device_mesh", "distributed_config")

logger = logging.getLogger("single_instance_build")


def can_switch(kwargs: dict[str, Any]) -> bool:
    """Whether a ``from_pretrained`` call with *kwargs* can turn into tensor parallelism.

    >>> can_switch({"device_map": "auto"}), can_switch({"device_map": "cpu"})
    (True, False)
    >>> can_switch({"device_map": "auto", "tp_plan": "auto"})
    False
    """
    device_map = kwargs.get("device_map")
    if not isinstance(device_map, str) or device_map != "auto":
        return False
    return all(kwargs.get(name) is None for name in PARALLEL_ARGUMENTS)


class _Guard:
    """The wrapper function: what it hides is changed in place when the guard widens."""

    __slots__ = ("names",)

    def __init__(self, names: tuple[str, ...]) -> None:
        self.names = names  # () once unguarded: captured references then hide nothing

    def __call__(
        self,
        wrapped: Callable[..., Any],
        instance: object,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Any:
        names = self.names  # one read: hide and restore the same names
        if names and can_switch(kwargs):
            return call_hidden(names, OWNER, wrapped, args, kwargs)
        return wrapped(*args, **kwargs)


class _BoundFromPretrained(wrapt.BoundFunctionWrapper):  # type: ignore[type-arg]  # Any params
    """``SomeModel.from_pretrained`` while guarded: copies and pickles as a bound method does."""

    def __reduce_ex__(self, protocol: object) -> tuple[Any, ...]:
        # A bound method pickles as getattr(cls, name): the unpickling process
        # then gets from_pretrained as it is there, guarded or not.
        return (getattr, (self.__self__, self.__name__))

    def __copy__(self) -> Any:
        return getattr(self.__self__, self.__name__)

    def __deepcopy__(self, memo: dict[int, Any]) -> Any:
        return getattr(self.__self__, self.__name__)  # classes deep-copy as themselves


class _FromPretrained(wrapt.FunctionWrapper):  # type: ignore[type-arg]  # Any params
    """What ``PreTrainedModel.__dict__["from_pretrained"]`` holds while guarded."""

    __bound_function_wrapper__ = _BoundFromPretrained

    def __init__(self, original: Any, guard: _Guard) -> None:
        super().__init__(original, guard)
        self._self_guard = guard


def guarded_names(obj: object) -> tuple[str, ...]:
    """The names the guarded ``from_pretrained`` *obj* hides, or ``()`` if it is not one."""
    if isinstance(obj, _FromPretrained):
        guard: _Guard = obj._self_guard
        return guard.names
    if isinstance(obj, _BoundFromPretrained):
        return guarded_names(obj._self_parent)
    return ()


class GuardStatus:
    """Whether :func:`guard_transformers` is in effect in this process, and since what."""

    __slots__ = ("installed", "names", "origins")

    def __init__(self, names: tuple[str, ...], origins: tuple[str, ...], installed: bool) -> None:
        self.names = names  #: the names hidden; () when not guarded
        self.origins = origins  #: what asked for the guard, first first
        self.installed = installed  #: False while transformers.modeling_utils is not imported

    def __repr__(self) -> str:
        return (
            f"GuardStatus(names={self.names!r}, origins={self.origins!r}, "
            f"installed={self.installed!r})"
        )


# All of the state below changes under _lock. It is reentrant because wrapt
# runs a hook at once, in the registering thread, for a module imported meanwhile.
_lock = threading.RLock()
_names: tuple[str, ...] = ()  # what is asked for; () when not guarded
_origins: tuple[str, ...] = ()
_hook_pending = False
_installed: tuple[type, Any, _FromPretrained] | None = None  # (class, original, wrapper)


def _install(module: ModuleType) -> None:
    """Put the wrapper in place on *module*'s ``PreTrainedModel`` (called under _lock)."""
    global _installed
    cls = getattr(module, CLASS, None)
    original = vars(cls).get(ATTRIBUTE) if isinstance(cls, type) else None
    if cls is None or original is None:
        logger.warning("%s not found: Transformers is not guarded", OWNER)
        return
    wrapper = _FromPretrained(original, _Guard(_names))
    setattr(cls, ATTRIBUTE, wrapper)
    _installed = (cls, original, wrapper)
    logger.debug("%s: guarding %s", OWNER, ", ".join(_names))


def _on_import(module: ModuleType) -> None:
    """The post-import hook: install, unless unguarded since it was registered."""
    global _hook_pending
    with _lock:
        _hook_pending = False
        if _names and _installed is None:
            _install(module)


def activate(names: tuple[str, ...], origin: str) -> None:
    """Guard ``from_pretrained`` for *names* (already normalized), as asked by *origin*."""
    global _names, _origins, _hook_pending
    module = sys.modules.get(MODULE)
    if module is not None and getattr(getattr(module, "__spec__", None), "_initializing", False):
        # Another thread is importing it: wait until that import is done (this
        # starts no import), outside the lock, which its import hook may take.
        importlib.import_module(MODULE)
    with _lock:
        _names = tuple(dict.fromkeys(_names + names))
        _origins = tuple(dict.fromkeys((*_origins, origin)))
        if _installed is not None:
            _installed[2]._self_guard.names = _names  # widen the one wrapper in place
            return
        module = sys.modules.get(MODULE)
        if module is not None:
            _install(module)
        elif not _hook_pending:
            _hook_pending = True
            wrapt.register_post_import_hook(_on_import, MODULE)


def guard_transformers(*, env_vars: str | Iterable[str] = DEFAULT_ENV_VARS) -> None:
    """Guard Transformers' ``PreTrainedModel.from_pretrained`` in this process.

    From now on, a ``from_pretrained`` call that could switch to tensor
    parallelism (``device_map="auto"``, and none of ``tp_plan``, ``tp_size``,
    ``device_mesh`` or ``distributed_config``) runs with *env_vars* hidden,
    through the same counted scopes as :func:`single_instance_build`. Every
    other call, and all code outside ``from_pretrained``, sees the
    environment as it is. ``AutoModel*.from_pretrained``, ``pipeline(...)``
    and subclasses that override ``from_pretrained`` and call ``super()`` all
    go through it.

    Transformers is not imported: the guard is installed when
    ``transformers.modeling_utils`` is imported, or at once if it already is.
    Calling it again adds no second wrapper; with more names, the one wrapper
    hides the union. Thread-safe.

    Limits: it guards this process only; a ``from_pretrained`` bound method
    captured before the guard was installed bypasses it; and the model's own
    ``__init__``, which runs inside ``from_pretrained``, sees the variables
    hidden too.

    Args:
        env_vars: the variable name, or names, to hide. Default:
            ``("WORLD_SIZE",)``.

    Raises:
        TypeError: *env_vars* is not a name or an iterable of names.
        ValueError: a name is empty or contains ``=`` or NUL.
    """
    activate(normalize_env_vars(env_vars), "guard_transformers()")


def unguard_transformers() -> None:
    """Undo :func:`guard_transformers`: put the original ``from_pretrained`` object back.

    A post-import hook still pending does nothing when Transformers is
    imported later, and references to the guarded method taken meanwhile stop
    hiding anything. Calling it when not guarded does nothing.
    """
    global _names, _origins, _installed
    with _lock:
        _names, _origins = (), ()
        if _installed is None:
            return
        cls, original, wrapper = _installed
        _installed = None
        wrapper._self_guard.names = ()
        if vars(cls).get(ATTRIBUTE) is wrapper:
            setattr(cls, ATTRIBUTE, original)
        else:  # patched again on top of ours: leave that patch, ours now hides nothing
            logger.warning("%s was replaced after it was guarded: left as it is", OWNER)


def status() -> GuardStatus:
    """What :func:`guard_transformers` does in this process right now."""
    with _lock:
        return GuardStatus(_names, _origins, _installed is not None)
