"""Guarding a whole registry of model factories, VLMEvalKit's ``supported_VLM`` style.

:func:`guard_registry` guards the values of an existing mapping in place;
:class:`GuardedRegistry` is a ``dict`` that guards every value however it
gets in. Both go through :func:`guard`, so an entry is never guarded twice
and a guarded ``functools.partial`` still reads and edits like one.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Mapping, MutableMapping
from typing import TYPE_CHECKING, Any, TypeVar, overload

from ._guard import guard
from ._names import DEFAULT_ENV_VARS, normalize_env_vars

if TYPE_CHECKING:
    from _typeshed import SupportsGetItem, SupportsKeysAndGetItem

__all__ = ["GuardedRegistry", "guard_registry"]

K = TypeVar("K")
V = TypeVar("V", bound=Callable[..., Any])
M = TypeVar("M", bound=MutableMapping[Any, Any])


def _key_repr(key: object) -> str:
    """The key's repr for an error message, or its type where its repr fails."""
    try:
        return repr(key)
    except Exception:  # a broken __repr__ must not replace the TypeError being raised
        return f"<key of type {type(key).__qualname__} whose repr() failed>"


def _guard_entry(key: object, value: Any, names: tuple[str, ...]) -> Any:
    """Guard one registry value; a bad one raises ``TypeError`` naming its key.

    Messages give the value's type and code, never its repr: registry values
    can carry API keys in their keywords.
    """
    if not callable(value):
        raise TypeError(
            f"registry entry {_key_repr(key)} is not callable: got a value of type "
            f"{type(value).__qualname__}, expected a function, class or functools.partial "
            "that builds a model"
        )
    try:
        return guard(value, names)
    except TypeError as error:
        raise TypeError(f"registry entry {_key_repr(key)}: {error}") from None


def _report_failed_rollback(error: BaseException, failed: list[tuple[Any, BaseException]]) -> None:
    """Attach to *error* that putting some entries back failed too.

    The original error stays the one raised. Python 3.11 and later show a
    note; 3.10, which has no notes, shows a ``RuntimeError`` saying the same,
    caused by the first rollback error, as the original's context.
    """
    keys = ", ".join(_key_repr(key) for key, _ in failed)
    errors = "; ".join(f"{type(exc).__qualname__}: {exc}" for _, exc in failed)
    note = (
        f"guard_registry: putting back the unguarded entries {keys} failed too ({errors}); "
        "the mapping may be partly guarded"
    )
    if sys.version_info >= (3, 11):
        error.add_note(note)
    else:  # pragma: no cover -- Python 3.10
        first = failed[0][1]
        first.__context__ = None  # it was raised while handling error: no cycle
        report = RuntimeError(note)
        report.__cause__ = first
        error.__context__ = report


def guard_registry(registry: M, /, *, env_vars: str | Iterable[str] = DEFAULT_ENV_VARS) -> M:
    """Guard every value of *registry* in place and return the same mapping.

    All or nothing: if any value is not callable, ``TypeError`` names its key
    and the mapping is left exactly as it was. Entries already guarded for at
    least *env_vars* stay the very same objects, so calling it twice is
    harmless.

    If writing an entry fails, the entries already written are put back and
    the error is raised; if putting one back fails too, the error raised is
    still the first one, noting the failure and that the mapping may be
    partly guarded.

    Examples:
        >>> import functools
        >>> from single_instance_build import is_guarded
        >>> supported = {"tiny": functools.partial(dict, model_path="tiny")}
        >>> guard_registry(supported) is supported
        True
        >>> is_guarded(supported["tiny"])
        True
        >>> supported["tiny"]()
        {'model_path': 'tiny'}

    Args:
        registry: any mutable mapping of names to model factories.
        env_vars: the variable name, or names, to hide while an entry runs.

    Returns:
        *registry* itself.

    Raises:
        TypeError: a value is not callable, or is (or calls) a generator
            function; or *env_vars* is not a name or an iterable of names.
        ValueError: a name is empty or contains ``=`` or NUL, or there is none.
    """
    names = normalize_env_vars(env_vars)
    entries = list(registry.items())
    replacements = [
        (key, value, guarded)
        for key, value in entries
        if (guarded := _guard_entry(key, value, names)) is not value
    ]
    done: list[tuple[Any, Any]] = []
    try:
        for key, value, guarded in replacements:
            registry[key] = guarded
            done.append((key, value))
    except BaseException as error:
        failed: list[tuple[Any, BaseException]] = []
        for key, value in done:  # a mapping whose __setitem__ failed half-way
            try:
                registry[key] = value
            except Exception as rollback_error:  # keep going: put back every entry
                failed.append((key, rollback_error))
        if failed:
            _report_failed_rollback(error, failed)
        raise
    return registry


class GuardedRegistry(dict[K, V]):
    """A ``dict`` of model factories that guards every value put into it.

    Values are guarded however they get in: the constructor, ``r[k] = v``,
    ``update``, ``setdefault``, ``|`` and ``|=``, ``fromkeys``. A value that is
    not callable raises ``TypeError`` naming its key, and nothing is added.
    ``copy()``, ``copy.deepcopy`` and ``pickle`` keep the settings.

    Examples:
        >>> import functools
        >>> from single_instance_build import is_guarded
        >>> registry = GuardedRegistry(env_vars=("WORLD_SIZE", "RANK"))
        >>> registry["tiny"] = functools.partial(dict, model_path="tiny")
        >>> is_guarded(registry["tiny"], env_vars="RANK")
        True
        >>> registry["tiny"].keywords  # still reads as the partial it wraps
        {'model_path': 'tiny'}

    Args:
        entries: a mapping or an iterable of ``(name, factory)`` pairs.
        env_vars: the variable name, or names, to hide while an entry runs.
        **kwargs: more entries, as ``dict(name=factory)`` takes them (a key
            named ``env_vars`` must come in *entries*).
    """

    __slots__ = ("_names",)

    # The overloads of dict.__init__, as typeshed spells them: keywords make str keys.
    @overload
    def __init__(self, /, *, env_vars: str | Iterable[str] = ...) -> None: ...
    @overload
    def __init__(
        self: GuardedRegistry[str, V], /, *, env_vars: str | Iterable[str] = ..., **kwargs: V
    ) -> None: ...
    @overload
    def __init__(
        self,
        entries: Mapping[K, V] | Iterable[tuple[K, V]],
        /,
        *,
        env_vars: str | Iterable[str] = ...,
    ) -> None: ...
    @overload
    def __init__(
        self: GuardedRegistry[str, V],
        entries: Mapping[str, V] | Iterable[tuple[str, V]],
        /,
        *,
        env_vars: str | Iterable[str] = ...,
        **kwargs: V,
    ) -> None: ...
    def __init__(
        self,
        entries: Any = (),
        /,
        *,
        env_vars: str | Iterable[str] = DEFAULT_ENV_VARS,
        **kwargs: Any,
    ) -> None:
        self._names = normalize_env_vars(env_vars)
        super().__init__()
        self.update(entries, **kwargs)

    @property
    def env_vars(self) -> tuple[str, ...]:
        """The names every entry hides while it runs."""
        return self._names

    def _guarded_pairs(self, entries: Any, kwargs: Mapping[str, Any]) -> dict[Any, Any]:
        # dict() applies dict's own rules for mappings and pairs, errors included.
        pairs = {**dict(entries), **kwargs}
        return {key: _guard_entry(key, value, self._names) for key, value in pairs.items()}

    def __setitem__(self, key: K, value: V) -> None:
        super().__setitem__(key, _guard_entry(key, value, self._names))

    # The overloads of MutableMapping.update, as typeshed spells them.
    @overload
    def update(self, entries: SupportsKeysAndGetItem[K, V], /) -> None: ...
    @overload
    def update(
        self: SupportsGetItem[str, V], entries: SupportsKeysAndGetItem[str, V], /, **kwargs: V
    ) -> None: ...
    @overload
    def update(self, entries: Iterable[tuple[K, V]], /) -> None: ...
    @overload
    def update(
        self: SupportsGetItem[str, V], entries: Iterable[tuple[str, V]], /, **kwargs: V
    ) -> None: ...
    @overload
    def update(self: SupportsGetItem[str, V], /, **kwargs: V) -> None: ...
    def update(self, entries: Any = (), /, **kwargs: Any) -> None:
        """Add entries from a mapping, pairs or keywords; all are guarded before any is added."""
        super().update(self._guarded_pairs(entries, kwargs))

    @overload
    def setdefault(self, key: K, default: V, /) -> V: ...
    @overload
    def setdefault(self, key: K, /) -> V: ...
    def setdefault(self, key: K, default: Any = None, /) -> V:
        """Return ``self[key]``, first setting it to the guarded *default* if absent."""
        if key not in self:
            self[key] = default
        return self[key]

    def __ior__(self, other: Any) -> GuardedRegistry[K, V]:  # type: ignore[override]  # also pairs, as dict's
        self.update(other)
        return self

    def __or__(self, other: Any) -> GuardedRegistry[K, V]:  # type: ignore[override]  # keeps the type
        if not isinstance(other, Mapping):
            return NotImplemented
        merged = self.copy()
        merged.update(other)
        return merged

    def __ror__(self, other: Any) -> GuardedRegistry[K, V]:  # type: ignore[override]  # keeps the type
        if not isinstance(other, Mapping):
            return NotImplemented
        merged: GuardedRegistry[K, V] = type(self)(other, env_vars=self._names)
        merged.update(self)
        return merged

    def copy(self) -> GuardedRegistry[K, V]:
        """A shallow copy with the same settings: the same guarded entries."""
        return type(self)(self, env_vars=self._names)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_registry, (type(self), dict(self), self._names))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({dict.__repr__(self)}, env_vars={self._names!r})"


def _rebuild_registry(
    cls: type[GuardedRegistry[Any, Any]], entries: dict[Any, Any], names: tuple[str, ...]
) -> GuardedRegistry[Any, Any]:
    """Unpickle or deep-copy a :class:`GuardedRegistry`."""
    return cls(entries, env_vars=names)
