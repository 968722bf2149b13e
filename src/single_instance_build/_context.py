"""``single_instance_env``: the scoping of ``_scope`` as a reusable context manager."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from sys import _getframe
from types import TracebackType

from ._names import DEFAULT_ENV_VARS, normalize_env_vars
from ._scope import Env, close, close_again, logger, new_token, open_scope

__all__ = ["single_instance_env"]


class single_instance_env:  # noqa: N801 -- used like a function, as contextlib's are
    """Hide environment variables for the duration of a ``with`` block.

    The same scoping as :func:`single_instance_build`, for code that is not a
    single callable. An instance can be entered again, also nested and from
    several threads at once; each ``with`` is one scope.

    Examples:
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
        TypeError: *env_vars* is not a name or an iterable of names; raised
            here, before anything is hidden.
        ValueError: a name is empty or contains ``=`` or NUL, or there is none.
    """

    __slots__ = ("_names", "_open")

    def __init__(self, env_vars: str | Iterable[str] = DEFAULT_ENV_VARS) -> None:
        # The scopes entered and not yet exited: {token: (id of the frame that
        # runs the with-statement, the os.environ it hides from)}. The frame,
        # not the thread: a generator suspended inside the block may be
        # finalized by any thread, at any moment, and its __exit__ must end its
        # own scope. The mapping: os.environ may be rebound meanwhile.
        self._open: dict[int, tuple[int, Env]] = {}
        self._names = normalize_env_vars(env_vars)

    @property
    def env_vars(self) -> tuple[str, ...]:
        """The names this scope hides."""
        return self._names

    def __enter__(self) -> None:
        token = new_token()
        env = os.environ
        try:
            self.__class__ = _EnteredEnv
            self._open[token] = (id(_getframe(1)), env)
            open_scope(self._names, token, env)
            if logger.isEnabledFor(logging.DEBUG):
                logger.debug("single_instance_env: hiding %s", ", ".join(self._names))
        except BaseException:
            self._end(token, env)
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        scope = None
        try:
            scope = self._latest(id(_getframe(1)))
            self._end(*scope)
        except BaseException:  # interrupted: finish ending the same scope
            self._end(*(self._latest(id(_getframe(1))) if scope is None else scope))
            raise
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("single_instance_env: restored %s", ", ".join(self._names))

    def _latest(self, frame: int) -> tuple[int, Env]:
        """The scope a with-statement in *frame* ends, and its mapping: the latest it entered.

        If that frame entered none (``__enter__`` and ``__exit__`` called by
        hand from two places), the latest of all: every scope of this object
        hides the same names.
        """
        open_ = self._open
        if not open_:
            raise RuntimeError(f"{self!r}: __exit__() without __enter__()")
        scopes = tuple(open_.items())  # at once: a finalizer may end one meanwhile
        # (token, (frame, env)) pairs compare by their unique token alone.
        token, (_, env) = max((s for s in scopes if s[1][0] == frame), default=max(scopes))
        return token, env

    def _end(self, token: int, env: Env) -> None:
        try:
            close(self._names, token, env)
        except BaseException:
            close_again(self._names, token, env)
            raise
        finally:
            self._open.pop(token, None)
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
        for token, (_, env) in list(self._open.items()):
            close_again(self._names, token, env)
