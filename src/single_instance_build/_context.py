"""``single_instance_env``: the scoping of ``_scope`` as a reusable context manager."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from types import TracebackType

from ._names import DEFAULT_ENV_VARS, normalize_env_vars
from ._scope import close, close_again, logger, new_token, open_scope

__all__ = ["single_instance_env"]


class single_instance_env:  # noqa: N801 -- used like a function, as contextlib's are
    """Hide environment variables for the duration of a ``with`` block.

    The same scoping as :func:`single_instance_build`, for code that is not a
    single callable. An instance can be entered again, also nested and from
    several threads at once; each ``with`` is one scope.

    >>> import os
    >>> os.environ["WORLD_SIZE"] = "2"
    >>> with single_instance_env():
    ...     "WORLD_SIZE" in os.environ
    False
    >>> os.environ["WORLD_SIZE"]
    '2'
    >>> del os.environ["WORLD_SIZE"]

    Args:
        env_vars: the variable name, or names, to hide.

    Raises:
        TypeError, ValueError: *env_vars* is not a name or an iterable of
            valid names; raised here, before anything is hidden.
    """

    __slots__ = ("_names", "_open")

    def __init__(self, env_vars: str | Iterable[str] = DEFAULT_ENV_VARS) -> None:
        # The scopes entered and not yet exited: (token, ident of the entering thread).
        self._open: list[tuple[int, int]] = []
        self._names = normalize_env_vars(env_vars)

    @property
    def env_vars(self) -> tuple[str, ...]:
        """The names this scope hides."""
        return self._names

    def __enter__(self) -> None:
        token = new_token()
        scope = (token, threading.get_ident())
        try:
            self.__class__ = _EnteredEnv
            self._open.append(scope)
            open_scope(self._names, token)
            if logger.isEnabledFor(logging.DEBUG):
                logger.debug("single_instance_env: hiding %s", ", ".join(self._names))
        except BaseException:
            self._end(scope)
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if not self._open:
            raise RuntimeError(f"{self!r}: __exit__() without __enter__()")
        scope = self._open[-1]
        ident = threading.get_ident()
        if scope[1] != ident:
            # Not the latest scope this thread entered, as nesting in one thread
            # gives: the latest it did enter, or where it entered none (a
            # generator finalized in another thread), the latest of all. All
            # hide the same names.
            scope = next((s for s in reversed(self._open) if s[1] == ident), scope)
        self._end(scope)
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("single_instance_env: restored %s", ", ".join(self._names))

    def _end(self, scope: tuple[int, int]) -> None:
        try:
            close(self._names, scope[0])
        except BaseException:
            close_again(self._names, scope[0])
            raise
        finally:
            if scope in self._open:
                self._open.remove(scope)
            if not self._open:
                self.__class__ = single_instance_env

    def __repr__(self) -> str:
        return f"single_instance_env(env_vars={self._names!r})"


class _EnteredEnv(single_instance_env):
    """A ``single_instance_env`` while it has scopes open: it ends them when it is freed.

    A with-statement interrupted on its very way into ``__exit__`` never gets
    there; once nothing can exit its scopes any more, this ends them. Only
    entered instances have a ``__del__``: an interrupt that lands in one is
    printed and ignored, as in any finalizer, so exited ones go without.
    """

    __slots__ = ()

    def __del__(self) -> None:
        for token, _ in self._open:
            close_again(self._names, token)
