"""How guarded callables, and instances of guarded classes, pickle and copy.

A guard that is what its module exposes under its name pickles by reference,
as a plain function does. Any other guard pickles by value: its target and
its names, with each part that its module replaced by a guard named through
that guard, so pickle can find it. A guard bound as a method pickles as
``getattr(instance_or_class, name)``, as a plain bound method does. Nothing
is registered globally: an instance of a decorated class pickles through a
``__reduce_ex__`` set on its class, which looks up at pickling time whether
the class's module exposes a guard in its place.
"""

from __future__ import annotations

import contextlib
import copy
import copyreg
import sys
from collections.abc import Callable
from typing import Any

__all__ = [
    "GuardBase",
    "by_reference",
    "copy_bound",
    "deepcopy_bound",
    "install_instance_reducer",
    "is_exposed_by_module",
    "reduce_bound",
    "reduce_guard",
]

_MARK = "_single_instance_build_reducer"


class GuardBase:
    """A base of every guard proxy: this module tells guards apart without importing ``_guard``."""

    __slots__ = ()  # no annotation either: the proxy forwards __annotations__ to its target


def _exposed_as(module: object, qualname: object) -> Any:
    """What module *module* exposes under the dotted name *qualname*, or None."""
    found: Any = sys.modules.get(str(module))
    for part in str(qualname).split("."):
        found = getattr(found, part, None)
    return found


def is_exposed_by_module(obj: Any) -> bool:
    """Whether *obj* is what its module exposes under its qualified name."""
    module = getattr(obj, "__module__", None)
    return _exposed_as(module, getattr(obj, "__qualname__", "<locals>")) is obj


def _replacing_guard(obj: object) -> Any:
    """The guard that *obj*'s module exposes in place of *obj*, if there is one."""
    try:
        found = _exposed_as(getattr(obj, "__module__", None), getattr(obj, "__qualname__", ""))
    except Exception:  # an odd module __getattr__: then no guard replaces obj
        return None
    if isinstance(found, GuardBase) and getattr(found, "__wrapped__", None) is obj:
        return found
    return None


def by_reference(obj: object) -> object:
    """*obj*, or the guard its module exposes in its place, which pickle can find by name."""
    return _replacing_guard(obj) or obj


def reduce_guard(guard: Any, rebuild: Callable[..., Any]) -> str | tuple[Any, ...]:
    """The reduction of a guarded callable: by reference if its module exposes it.

    Otherwise ``rebuild(target, names)`` makes it again: ``_guard.guard``,
    passed in, as this module is below ``_guard``.
    """
    recipe: tuple[Any, ...] | None = guard._self_recipe
    if recipe is not None:  # reached through a guarded class: Model.from_pretrained, Model[int]
        return recipe
    if is_exposed_by_module(guard):
        return str(guard.__qualname__)
    return (rebuild, (by_reference(guard.__wrapped__), guard._self_scope.names))


def _holder_and_name(bound: Any) -> tuple[object, str]:
    """What a guarded method is bound to (instance or class), and its attribute name."""
    holder = getattr(bound.__wrapped__, "__self__", None)  # instance, or class of a classmethod
    if holder is None:  # a staticmethod, or a method reached through its class
        holder = bound._self_owner
    return by_reference(holder), str(bound._self_parent.__name__)


def reduce_bound(bound: Any, protocol: object = None) -> tuple[Any, ...]:
    """Pickle a guarded method as ``getattr(instance_or_class, name)``, as a bound method."""
    return (getattr, _holder_and_name(bound))


def copy_bound(bound: Any) -> Any:
    """A bound method copies as itself, as Python's own do."""
    return bound


def deepcopy_bound(bound: Any, memo: dict[int, Any]) -> Any:
    """The same method of a deep copy of the instance, as Python's own bound methods do."""
    holder, name = _holder_and_name(bound)
    return getattr(copy.deepcopy(holder, memo), name)


def install_instance_reducer(cls: type) -> None:
    """Let instances of *cls* pickle while its module exposes a guard in its place.

    Sets ``cls.__reduce_ex__``, which gives the reduction *cls* had before
    (its own ``__reduce_ex__``, else the inherited one) unchanged unless,
    at pickling time, ``cls``'s module exposes a guard of ``type(obj)``; then
    the reduction names that guard, which pickles by reference. Metaclasses
    are left alone: their instances are classes, which pickle by name.
    """
    own = cls.__dict__.get("__reduce_ex__")
    if issubclass(cls, type) or getattr(own, _MARK, False):
        return

    def __reduce_ex__(self: object, protocol: int) -> str | tuple[Any, ...]:  # noqa: N807
        guard = _replacing_guard(type(self))
        # Protocol 4 where the class must be renamed: a __newobj_ex__ reduction names it.
        protocol_used = protocol if guard is None else 4
        if own is not None:
            reduction: str | tuple[Any, ...] = own.__get__(self, type(self))(protocol_used)
        else:
            reduction = super(cls, self).__reduce_ex__(protocol_used)  # type: ignore[misc]  # cls is a class
        return reduction if guard is None else _through_guard(reduction, guard)

    setattr(__reduce_ex__, _MARK, True)
    __reduce_ex__.__qualname__ = f"{cls.__qualname__}.__reduce_ex__"
    # A built-in type refuses: its module keeps exposing it, so pickle finds it by name.
    with contextlib.suppress(TypeError, AttributeError):
        setattr(cls, "__reduce_ex__", __reduce_ex__)  # noqa: B010 -- a dunder on another class


def _through_guard(reduction: str | tuple[Any, ...], guard: Any) -> Any:
    """Rewrite an instance's reduction so that it names *guard* instead of its class."""
    cls = guard.__wrapped__
    if isinstance(reduction, str):
        return reduction
    func, args, *rest = reduction
    if func is copyreg.__newobj__ and args[0] is cls:  # type: ignore[attr-defined]  # untyped
        return (_new_instance, (guard, args[1:], {}), *rest)
    if func is copyreg.__newobj_ex__ and args[0] is cls:  # type: ignore[attr-defined]  # untyped
        return (_new_instance, (guard, *args[1:]), *rest)
    if func is cls:  # a class whose __reduce__ calls the class: call the guard
        return (guard, args, *rest)
    return reduction


def _new_instance(guard: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Unpickle an instance of a guarded class, as ``copyreg.__newobj_ex__`` does."""
    cls = guard.__wrapped__
    return cls.__new__(cls, *args, **kwargs)
