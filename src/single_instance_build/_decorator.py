"""The public decorator, ``@single_instance_build``, and ``is_guarded``."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, ParamSpec, Protocol, TypeVar, overload

from ._from_pretrained import guarded_names
from ._guard import guard, guarded_env_vars
from ._names import DEFAULT_ENV_VARS, normalize_env_vars

__all__ = ["is_guarded", "single_instance_build"]

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")
D = TypeVar("D", bound="classmethod[Any, Any, Any] | staticmethod[Any, Any]")


class Decorator(Protocol):
    """What ``single_instance_build(env_vars=...)`` returns."""

    @overload
    def __call__(self, wrapped: type[T], /) -> type[T]: ...
    @overload
    def __call__(self, wrapped: D, /) -> D: ...  # type: ignore[overload-overlap]  # see below
    @overload
    def __call__(self, wrapped: Callable[P, R], /) -> Callable[P, R]: ...


@overload
def single_instance_build(
    wrapped: type[T], /, *, env_vars: str | Iterable[str] = DEFAULT_ENV_VARS
) -> type[T]: ...
# A staticmethod is callable too; for it, "unchanged" is the more precise answer
# than the Callable overload below, so the overlap is intended.
@overload
def single_instance_build(  # type: ignore[overload-overlap]
    wrapped: D, /, *, env_vars: str | Iterable[str] = DEFAULT_ENV_VARS
) -> D: ...
@overload
def single_instance_build(
    wrapped: Callable[P, R], /, *, env_vars: str | Iterable[str] = DEFAULT_ENV_VARS
) -> Callable[P, R]: ...
@overload
def single_instance_build(
    wrapped: None = None, /, *, env_vars: str | Iterable[str] = DEFAULT_ENV_VARS
) -> Decorator: ...
def single_instance_build(
    wrapped: Any = None, /, *, env_vars: str | Iterable[str] = DEFAULT_ENV_VARS
) -> Any:
    """Run a model factory with launcher variables hidden from the environment.

    While the decorated callable runs, every variable in *env_vars* is absent
    from ``os.environ`` (and from the C-level environment); afterwards each has
    exactly its earlier value again, or is absent again, however the call
    ends.

    Functions, ``async def`` functions (hidden across awaits), classes,
    methods, ``functools.partial`` objects and other callables can be guarded.
    A decorated class also guards its class and static methods reached
    through it (``Model.from_pretrained()``) and ``Model[int]()``. Guarding an
    already guarded callable does not stack a second guard.

    Examples:
        Bare, or with options:

        >>> import os
        >>> os.environ["WORLD_SIZE"] = "2"
        >>> @single_instance_build
        ... def build_model(path):
        ...     return os.environ.get("WORLD_SIZE")
        >>> print(build_model("my/model"))
        None
        >>> @single_instance_build(env_vars=("WORLD_SIZE", "LOCAL_WORLD_SIZE"))
        ... class MyVLM:
        ...     def __init__(self, path):
        ...         self.world_size = os.environ.get("WORLD_SIZE")
        >>> print(MyVLM("my/model").world_size)
        None
        >>> os.environ["WORLD_SIZE"]  # back as it was
        '2'
        >>> del os.environ["WORLD_SIZE"]

    Args:
        wrapped: the callable to guard; omit it to get a decorator.
        env_vars: the variable name, or names, to hide.

    Returns:
        The guarded callable, or a decorator if *wrapped* was omitted.

    Raises:
        TypeError: *env_vars* is not a name or an iterable of names;
            *wrapped* is not callable, or is a generator function or calls
            one (an object whose ``__call__`` is a generator, a partial of it).
        ValueError: a name is empty or contains ``=`` or NUL, or there is none.
    """
    names = normalize_env_vars(env_vars)
    if wrapped is None:
        return lambda wrapped: guard(wrapped, names)
    return guard(wrapped, names)


def is_guarded(obj: object, *, env_vars: str | Iterable[str] | None = None) -> bool:
    """Whether calling *obj* hides variables, and if *env_vars* is given, at least those.

    True for what :func:`single_instance_build` returns, and for
    ``from_pretrained`` of Transformers models once :func:`guard_transformers`
    is in effect (which hides them for the calls that can switch to tensor
    parallelism).

    Examples:
        >>> is_guarded(single_instance_build(print))
        True
        >>> is_guarded(print)
        False
        >>> is_guarded(single_instance_build(print), env_vars="RANK")
        False

    Args:
        obj: any object; only a callable can be guarded.
        env_vars: the variable name, or names, that *obj* must hide; omit it
            for any.

    Raises:
        TypeError: *env_vars* is not a name or an iterable of names.
        ValueError: a name is empty or contains ``=`` or NUL, or there is none.
    """
    hidden = guarded_env_vars(obj) or guarded_names(obj)
    if env_vars is None:
        return bool(hidden)
    return set(normalize_env_vars(env_vars)) <= set(hidden)
