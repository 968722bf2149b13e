"""The guarded callable: a wrapt proxy that hides variables while its target runs.

:func:`guard` is what the decorator and the registry helpers share. The proxy
keeps the target's name, docstring, signature, ``isinstance`` behaviour and
attributes (``partial.keywords`` included) and binds as a method like the
target would. Each kind of target gets its own proxy class, so that the call
of a plain guarded function does no more than it must: coroutine functions
are called at once and awaited hidden, and classes guard the class and
static methods and the generic aliases reached through them. How all of
them pickle and copy is in :mod:`._pickling`.
"""

from __future__ import annotations

import copy
import functools
import inspect
import operator
import types
from collections.abc import Callable, Coroutine
from typing import Any, cast

import wrapt

from . import _pickling
from ._scope import await_hidden, call_hidden

__all__ = ["GuardedFunction", "guard", "guarded_env_vars"]


def _code(target: object) -> object:
    """The callable whose code runs when *target* is called.

    Looks through partials, class and static methods, bound methods, guards,
    generic aliases (``Model[int]``: the class) and the ``__call__`` of a
    callable object; a class or builtin is its own.
    """
    for _ in range(100):  # a partial of itself is impossible; this only bounds odd objects
        origin = getattr(target, "__origin__", None)
        if isinstance(origin, type):
            return origin
        if isinstance(target, functools.partial):
            target = target.func
        elif isinstance(target, classmethod | staticmethod | types.MethodType):
            target = target.__func__
        elif isinstance(target, type) or inspect.isroutine(target):
            return target
        elif guarded_env_vars(target):
            target = target.__wrapped__  # type: ignore[attr-defined]  # a guard
        else:
            call = getattr(type(target), "__call__", None)  # noqa: B004 -- the method itself
            if call is None:
                return target
            target = call
    return target


def _describe(target: object) -> str:
    """A name for log records and errors: *target*'s qualified name, or its type's; never a repr."""
    qualname = getattr(target, "__qualname__", None)
    if not isinstance(qualname, str):
        qualname = type(target).__qualname__
    module = getattr(target, "__module__", None)
    return f"{module}.{qualname}" if isinstance(module, str) else qualname


def _check_target(target: object) -> object:
    """Return *target*'s :func:`_code`, or refuse it; messages name types and code, never values."""
    if not callable(target) and not isinstance(target, classmethod | staticmethod):
        raise TypeError(
            "expected a callable to guard (function, class, method or partial), "
            f"got a value of type {type(target).__qualname__}"
        )
    code = _code(target)
    if inspect.isgeneratorfunction(code) or inspect.isasyncgenfunction(code):
        via = "" if code is target else f" (called through a {type(target).__qualname__})"
        raise TypeError(
            f"cannot guard generator function {_describe(code)}{via}: its body runs "
            "between yields, after the call has returned; guard the function that "
            "builds the model instead"
        )
    return code


class _Scope:
    """What a guarded callable hides, and the name its log records give."""

    __slots__ = ("names", "owner")

    def __init__(self, code: object, names: tuple[str, ...]) -> None:
        self.names = names
        self.owner = _describe(code)


def _call(self: Any, /, *args: Any, **kwargs: Any) -> Any:
    # Overrides wrapt's dispatch to a wrapper function: the target is called
    # the same way, but without wrapt's probe for a bound ``__self__``, which
    # costs a raised AttributeError on every call of a plain function.
    scope = self._self_scope
    return call_hidden(scope.names, scope.owner, self.__wrapped__, args, kwargs)


class _HandedOver:
    """What a :class:`_Pending` becomes once ``await_hidden`` took its coroutine."""

    __slots__ = ("coroutine",)


class _Pending(_HandedOver):
    """The user's coroutine, handed once to ``await_hidden``.

    If the guarded coroutine is never awaited, Python warns about it (under the
    user's function name); this closes the user's own coroutine, unstarted, so
    that it does not warn a second time. Once handed over it has no
    ``__del__``: an interrupt that lands in one is printed and ignored.
    """

    __slots__ = ()

    def __init__(self, coroutine: Any) -> None:
        self.coroutine = coroutine

    def __call__(self) -> Any:
        coroutine, self.coroutine = self.coroutine, None
        self.__class__ = _HandedOver  # type: ignore[assignment]  # same slots, no __del__
        return coroutine

    def __del__(self) -> None:
        # getattr twice: an interrupt can cut __init__ off before it sets the slot.
        close = getattr(getattr(self, "coroutine", None), "close", None)
        if close is not None:
            close()


def _call_async(self: Any, /, *args: Any, **kwargs: Any) -> Coroutine[Any, Any, Any]:
    # Calling a coroutine function binds its arguments (a TypeError raises
    # here, as unguarded) and runs nothing of its body: that waits for the await.
    scope = self._self_scope
    coroutine = self.__wrapped__(*args, **kwargs)
    hidden = await_hidden(scope.names, scope.owner, _Pending(coroutine), (), {})
    qualname = getattr(coroutine, "__qualname__", None)
    if isinstance(qualname, str):  # a warning about it names the user's function
        hidden.__name__ = str(coroutine.__name__)  # type: ignore[attr-defined]  # writable
        hidden.__qualname__ = qualname  # type: ignore[attr-defined]  # writable
    return hidden


def _unused_wrapper(
    wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    raise AssertionError("calls go through __call__")  # pragma: no cover


class _GuardedBoundFunction(wrapt.BoundFunctionWrapper):  # type: ignore[type-arg]  # Any params
    """A guarded method, bound to an instance or a class."""

    __call__ = _call
    __reduce_ex__ = _pickling.reduce_bound
    __copy__ = _pickling.copy_bound
    __deepcopy__ = _pickling.deepcopy_bound


class _GuardedBoundCoroutineFunction(_GuardedBoundFunction):
    """A guarded ``async def`` method, bound to an instance or a class."""

    __call__ = _call_async


class GuardedFunction(wrapt.FunctionWrapper, _pickling.GuardBase):  # type: ignore[type-arg]  # Any params
    """A callable whose calls run with some environment variables hidden."""

    __bound_function_wrapper__ = _GuardedBoundFunction
    __call__ = _call
    # How to rebuild it where it is reached through a guarded class. Not
    # annotated: a class annotation would hide the target's __annotations__.
    _self_recipe = cast("tuple[Any, ...] | None", None)

    def __init__(self, target: Any, names: tuple[str, ...], code: object) -> None:
        super().__init__(target, _unused_wrapper)
        self._self_scope = _Scope(code, names)

    @property
    def __signature__(self) -> inspect.Signature | None:
        # Python 3.13's inspect.unwrap() stops at anything that passes for a
        # class, as a proxy of a class does, and would then describe __call__.
        try:
            return inspect.signature(self.__wrapped__)
        except (ValueError, TypeError):  # a builtin without a signature
            return None

    def __reduce_ex__(self, protocol: object) -> str | tuple[Any, ...]:
        return _pickling.reduce_guard(self, guard)

    def __copy__(self) -> GuardedFunction:
        return self._around(copy.copy(self.__wrapped__))

    def __deepcopy__(self, memo: dict[int, Any]) -> GuardedFunction:
        return self._around(copy.deepcopy(self.__wrapped__, memo))

    def _around(self, target: Any) -> GuardedFunction:
        if target is self.__wrapped__ or self._self_recipe is not None:
            return self  # functions, classes and what is reached through them copy as themselves
        return _new_guard(target, self._self_scope.names, _code(target))

    def __repr__(self) -> str:
        return f"single_instance_build({self.__wrapped__!r}, env_vars={self._self_scope.names!r})"


class _GuardedCoroutineFunction(GuardedFunction):
    """A guarded ``async def`` function, or other callable whose call returns a coroutine."""

    __bound_function_wrapper__ = _GuardedBoundCoroutineFunction
    __call__ = _call_async


class _GuardedClass(GuardedFunction):
    """A guarded class: what builds instances through its name runs guarded too.

    ``Model.from_pretrained()`` (a class or static method reached through the
    guard) and ``Model[int]()`` run guarded. Instance methods, dunder methods
    and subclasses are not guarded.
    """

    def __init__(self, target: type, names: tuple[str, ...], code: object) -> None:
        super().__init__(target, names, code)
        _pickling.install_instance_reducer(target)

    def __getattr__(self, name: str) -> Any:
        if name == "__wrapped__":  # a proxy not initialised yet: no lookup through it
            raise AttributeError(name)
        cls = cast("type", self.__wrapped__)
        value = getattr(cls, name)
        if name.startswith("__") and name.endswith("__"):
            return value
        for klass in cls.__mro__:
            if name in klass.__dict__:
                if not isinstance(klass.__dict__[name], classmethod | staticmethod):
                    return value
                break
        else:
            return value
        try:
            return _derived(value, self._self_scope.names, (getattr, (self, name)))
        except TypeError:  # a generator method: it cannot be guarded, so it runs as it is
            return value

    def __getitem__(self, item: Any) -> Any:
        cls: Any = self.__wrapped__
        alias = cls[item]
        if getattr(alias, "__origin__", None) is not cls:
            return alias
        return _derived(alias, self._self_scope.names, (operator.getitem, (self, item)))


def _derived(value: Any, names: tuple[str, ...], recipe: tuple[Any, ...]) -> Any:
    """Guard what is reached through a guarded class; it pickles as *recipe*."""
    if set(names) <= set(guarded_env_vars(value)):
        return value  # a method decorated itself, for these names at least
    guarded = guard(value, names)
    guarded._self_recipe = recipe
    return guarded


def _new_guard(target: Any, names: tuple[str, ...], code: object) -> GuardedFunction:
    """The proxy class that fits *target*, whose :func:`_code` is *code*, around it."""
    if isinstance(target, type):
        return _GuardedClass(target, names, code)
    if inspect.iscoroutinefunction(code) and not isinstance(code, type):
        return _GuardedCoroutineFunction(target, names, code)
    return GuardedFunction(target, names, code)


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
        TypeError: *target* is not callable, or is (or calls) a generator function.
    """
    already = guarded_env_vars(target)
    if already:
        if set(names) <= set(already):
            return target
        names = tuple(dict.fromkeys(already + names))
        target = target.__wrapped__
    return _new_guard(target, names, _check_target(target))
