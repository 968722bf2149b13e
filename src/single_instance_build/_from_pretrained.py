"""The guarded ``from_pretrained``: a wrapt wrapper that hides variables when a call can switch.

Transformers 4.50.0 to 4.53.3 switch to tensor parallelism in exactly one
place, ``PreTrainedModel.from_pretrained``: ``device_map == "auto"``, no
``tp_plan`` and a non-zero ``WORLD_SIZE``. :func:`wrap` makes the object that
:mod:`._transformers` puts in that class's ``__dict__`` in place of the
classmethod. It hides the variables, through the same counted scopes as the
decorator, only for the calls where the switch can happen; every other call
runs untouched. This module imports wrapt: it is loaded only once
Transformers is.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import wrapt

from ._scope import call_hidden

__all__ = ["PARALLEL_ARGUMENTS", "can_switch", "guarded_names", "set_names", "wrap"]

OWNER = "transformers.modeling_utils.PreTrainedModel.from_pretrained"
#: Arguments by which a caller asks for parallelism itself; Transformers 5.x
#: reads ``WORLD_SIZE`` on purpose when ``distributed_config`` is given.
PARALLEL_ARGUMENTS = ("tp_plan", "tp_size", "device_mesh", "distributed_config")


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
    """``SomeModel.from_pretrained`` while guarded: copies, pickles and prints as a bound method."""

    def __reduce_ex__(self, protocol: object) -> tuple[Any, ...]:
        # A bound method pickles as getattr(cls, name): the unpickling process
        # then gets from_pretrained as it is there, guarded or not.
        return (getattr, (self.__self__, self.__name__))

    def __copy__(self) -> Any:
        return getattr(self.__self__, self.__name__)

    def __deepcopy__(self, memo: dict[int, Any]) -> Any:
        return getattr(self.__self__, self.__name__)  # classes deep-copy as themselves

    def __repr__(self) -> str:
        return repr(self.__wrapped__)  # <bound method PreTrainedModel.from_pretrained of ...>


class _FromPretrained(wrapt.FunctionWrapper):  # type: ignore[type-arg]  # Any params
    """What ``PreTrainedModel.__dict__["from_pretrained"]`` holds while guarded."""

    __bound_function_wrapper__ = _BoundFromPretrained

    def __init__(self, original: Any, guard: _Guard) -> None:
        super().__init__(original, guard)
        self._self_guard = guard


def wrap(original: Any, names: tuple[str, ...]) -> Any:
    """The guarded stand-in for the classmethod *original*, hiding *names*."""
    return _FromPretrained(original, _Guard(names))


def set_names(wrapper: Any, names: tuple[str, ...]) -> None:
    """Change what a wrapper made by :func:`wrap` hides, in place; ``()`` hides nothing."""
    guard: _Guard = wrapper._self_guard
    guard.names = names


def guarded_names(obj: object) -> tuple[str, ...]:
    """The names the guarded ``from_pretrained`` *obj* hides, or ``()`` if it is not one."""
    if isinstance(obj, _FromPretrained):
        guard: _Guard = obj._self_guard
        return guard.names
    if isinstance(obj, _BoundFromPretrained):
        return guarded_names(obj._self_parent)
    return ()
