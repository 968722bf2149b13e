"""The guarded callable: a wrapt proxy that hides variables while its target runs.

:func:`guard` is what the decorator and the registry helpers share. The proxy
keeps the target's name, docstring, signature, ``isinstance`` behaviour and
attributes (``partial.keywords`` included), binds as a method like the
target would, and can be pickled and copied: by reference when it is what
its module exposes under its name, by value otherwise.
"""

from __future__ import annotations

import copy
import copyreg
import functools
import inspect
import sys
from collections.abc import Callable
from typing import Any, cast

import wrapt

from ._scope import await_hidden, call_hidden

__all__ = ["GuardedFunction", "guard", "guarded_env_vars"]


def _inner(target: object) -> object:
    """The function inside a classmethod or staticmethod, else *target*."""
    if isinstance(target, classmethod | staticmethod):
        return target.__func__
    return target


def _is_async(target: object) -> bool:
    """Whether calling *target* returns a coroutine whose body must run hidden."""
    if inspect.iscoroutinefunction(target):  # also partials of coroutine functions
        return True
    # A callable object with ``async def __call__``, which inspect does not look at.
    if isinstance(target, type) or inspect.isroutine(target):
        return False
    call = getattr(type(target), "__call__", None)  # noqa: B004 -- the method, not callability
    return inspect.iscoroutinefunction(call)


def _describe(target: object) -> str:
    """A name for log records: the qualified name of the code, never its arguments."""
    named = target.func if isinstance(target, functools.partial) else target
    qualname = getattr(named, "__qualname__", None) or type(named).__qualname__
    module = getattr(named, "__module__", None)
    return f"{module}.{qualname}" if module else qualname


def _check_target(target: object) -> None:
    inner = _inner(target)
    if inspect.isgeneratorfunction(inner) or inspect.isasyncgenfunction(inner):
        raise TypeError(
            f"cannot guard generator function {inner!r}: its body runs between yields, "
            "after the call has returned; guard the function that builds the model instead"
        )
    if not callable(target) and not isinstance(target, classmethod | staticmethod):
        raise TypeError(
            f"expected a callable to guard (function, class, method or partial), "
            f"got {target!r} of type {type(target).__name__}"
        )


def _call(self: Any, /, *args: Any, **kwargs: Any) -> Any:
    # Overrides wrapt's dispatch to a wrapper function: the target is called
    # the same way, but without wrapt's probe for a bound ``__self__``, which
    # costs a raised AttributeError on every call of a plain function.
    scope = self._self_scope
    runner = await_hidden if scope.is_async else call_hidden
    return runner(scope.names, scope.owner, self.__wrapped__, args, kwargs)


class _Scope:
    """What a guarded callable hides, and how its calls are run."""

    __slots__ = ("is_async", "names", "owner")

    def __init__(self, target: object, names: tuple[str, ...]) -> None:
        self.names = names
        self.owner = _describe(_inner(target))
        self.is_async = _is_async(_inner(target))


def _unused_wrapper(
    wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    raise AssertionError("calls go through __call__")  # pragma: no cover


class _GuardedBoundFunction(wrapt.BoundFunctionWrapper):  # type: ignore[type-arg]  # Any params
    """A guarded method, bound to an instance or a class."""

    __call__ = _call


class GuardedFunction(wrapt.FunctionWrapper):  # type: ignore[type-arg]  # Any params
    """A callable whose calls run with some environment variables hidden."""

    __bound_function_wrapper__ = _GuardedBoundFunction
    __call__ = _call

    def __init__(self, target: Any, names: tuple[str, ...]) -> None:
        super().__init__(target, _unused_wrapper)
        self._self_scope = _Scope(target, names)
        if isinstance(target, type) and target not in copyreg.dispatch_table:
            copyreg.pickle(target, _reduce_instance)

    @property
    def __signature__(self) -> inspect.Signature | None:
        # Python 3.13's inspect.unwrap() stops at anything that passes for a
        # class, as a proxy of a class does, and would then describe __call__.
        try:
            return inspect.signature(self.__wrapped__)
        except (ValueError, TypeError):  # a builtin without a signature
            return None

    def __reduce_ex__(self, protocol: object) -> str | tuple[Any, ...]:
        if _is_exposed_by_module(self):
            return str(self.__qualname__)  # by reference, as a plain function pickles
        return (_rebuild, (self.__wrapped__, self._self_scope.names))

    def __copy__(self) -> GuardedFunction:
        return self._around(copy.copy(self.__wrapped__))

    def __deepcopy__(self, memo: dict[int, Any]) -> GuardedFunction:
        return self._around(copy.deepcopy(self.__wrapped__, memo))

    def _around(self, target: Any) -> GuardedFunction:
        if target is self.__wrapped__:
            return self  # functions and classes copy as themselves
        return GuardedFunction(target, self._self_scope.names)

    def __repr__(self) -> str:
        return f"single_instance_build({self.__wrapped__!r}, env_vars={self._self_scope.names!r})"


def _exposed_as(module: object, qualname: object) -> Any:
    """What module *module* exposes under the dotted name *qualname*, or None."""
    found: Any = sys.modules.get(str(module))
    for part in str(qualname).split("."):
        found = getattr(found, part, None)
    return found


def _is_exposed_by_module(obj: Any) -> bool:
    """Whether *obj* is what its module exposes under its qualified name."""
    module = getattr(obj, "__module__", None)
    return _exposed_as(module, getattr(obj, "__qualname__", "<locals>")) is obj


def _reduce_instance(obj: object) -> str | tuple[Any, ...]:
    """Pickle an instance of a guarded class (a ``copyreg`` reducer).

    Where a decorated class replaced itself in its module, pickle cannot find
    the class of an instance by name; the reduction then names the guard,
    which pickles by reference, instead of the class.
    """
    cls = type(obj)
    reduction = obj.__reduce_ex__(4)
    guarded = _exposed_as(cls.__module__, cls.__qualname__)
    replaced = isinstance(guarded, GuardedFunction) and guarded.__wrapped__ is cls
    if not replaced or isinstance(reduction, str):
        return reduction
    func, args, *rest = reduction
    if func is copyreg.__newobj__ and args[0] is cls:  # type: ignore[attr-defined]  # untyped
        return (_new_instance, (guarded, args[1:], {}), *rest)
    if func is copyreg.__newobj_ex__ and args[0] is cls:  # type: ignore[attr-defined]  # untyped
        return (_new_instance, (guarded, *args[1:]), *rest)
    if func is cls:  # a class whose __reduce__ calls the class: call the guard
        return (guarded, args, *rest)
    return reduction


def _new_instance(guarded: GuardedFunction, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Unpickle an instance of a guarded class, as ``copyreg.__newobj_ex__`` does."""
    cls = cast("type[Any]", guarded.__wrapped__)  # only classes register _reduce_instance
    return cls.__new__(cls, *args, **kwargs)


def _rebuild(target: Any, names: tuple[str, ...]) -> GuardedFunction:
    """Unpickle a guarded callable that was pickled by value."""
    return GuardedFunction(target, names)


def guarded_env_vars(obj: object) -> tuple[str, ...]:
    """The names *obj* hides when called, or ``()`` if it is not guarded."""
    if isinstance(obj, GuardedFunction | _GuardedBoundFunction):
        return obj._self_scope.names
    return ()


def guard(target: Any, names: tuple[str, ...]) -> Any:
    """Return *target* guarded for *names*, without stacking guards.

    A target already guarded for all *names* is returned as it is; one guarded
    for fewer is guarded again, for the union, around its unguarded target.

    Raises:
        TypeError: *target* is not callable, or is a generator function.
    """
    already = guarded_env_vars(target)
    if already:
        if set(names) <= set(already):
            return target
        names = tuple(dict.fromkeys(already + names))
        target = target.__wrapped__
    _check_target(target)
    return GuardedFunction(target, names)
