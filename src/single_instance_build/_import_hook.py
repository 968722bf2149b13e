"""Run a function each time a module is executed: a ``sys.meta_path`` finder of stdlib parts only.

This is what the guard at the source waits with for ``transformers.modeling_utils``,
from interpreter start-up on, so it imports nothing beyond :mod:`sys`. The finder
answers only for the names it waits for: it asks the finders after it for the
real spec and wraps the loader, whose ``exec_module`` puts the real loader back
on the module (as wrapt's ``_ImportHookChainedLoader`` does), executes the
module, then runs the hooks. A plain import, one through a package's lazy
``__getattr__``, ``importlib.reload`` and an import after the module was purged
from ``sys.modules`` all find a spec through ``sys.meta_path``, so all of them
run the hooks. The finder stays in place: the hooks decide whether to act.
"""

from __future__ import annotations

import sys

TYPE_CHECKING = False  # typing itself costs start-up time; type checkers know this name
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from contextlib import AbstractContextManager
    from importlib.machinery import ModuleSpec
    from types import ModuleType
    from typing import Any

    Hook = Callable[[ModuleType], None]

__all__ = ["module_lock", "waiting_for", "when_imported"]

_hooks: dict[str, list[Hook]] = {}


class _ChainedLoader:
    """The real loader of a module waited for, followed by its hooks."""

    def __init__(self, name: str, loader: Any) -> None:
        self.name = name
        self.loader = loader

    def create_module(self, spec: ModuleSpec) -> ModuleType | None:
        create = getattr(self.loader, "create_module", None)
        return None if create is None else create(spec)

    def exec_module(self, module: ModuleType) -> None:
        loader = self.loader
        # The module, and a later reload(), see the real loader, not this one.
        spec = getattr(module, "__spec__", None)
        if getattr(spec, "loader", None) is self:
            spec.loader = loader  # type: ignore[union-attr]  # a spec, as just checked
        if getattr(module, "__loader__", None) is self:
            module.__loader__ = loader
        loader.exec_module(module)
        for hook in tuple(_hooks.get(self.name, ())):
            hook(module)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.loader, name)  # get_resource_reader, is_package, ...


class _Finder:
    """Finds the modules that hooks wait for through the other finders, and chains their loader."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None = None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        if fullname not in _hooks:
            return None
        for finder in tuple(sys.meta_path):
            find_spec = getattr(finder, "find_spec", None)
            if find_spec is None or isinstance(finder, _Finder):
                continue
            spec: ModuleSpec | None = find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        if spec.loader is not None and hasattr(spec.loader, "exec_module"):
            spec.loader = _ChainedLoader(fullname, spec.loader)  # type: ignore[assignment]  # a Loader in all but name
        return spec  # a namespace package or a legacy loader: left unhooked

    def __repr__(self) -> str:
        return f"<single_instance_build finder for {', '.join(sorted(_hooks))}>"


_finder = _Finder()


def when_imported(name: str, hook: Hook) -> None:
    """Call ``hook(module)`` each time module *name* has been executed from now on.

    The hook runs in the importing thread, while it holds the module's import
    lock; it must not raise. A module imported already is not hooked: the
    caller checks ``sys.modules`` under :func:`module_lock` after this.
    """
    hooks = _hooks.setdefault(name, [])
    if hook not in hooks:
        hooks.append(hook)
    if _finder not in sys.meta_path:
        sys.meta_path.insert(0, _finder)


def waiting_for(name: str) -> bool:
    """Whether a hook waits for module *name* and the finder that runs it is in ``sys.meta_path``.

    User code can take the finder out (``sys.meta_path[:] = ...``): hooks
    registered before then no longer run.
    """
    return bool(_hooks.get(name)) and _finder in sys.meta_path


class _NoLock:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc_info: object) -> None:
        return None


def module_lock(name: str) -> AbstractContextManager[object]:
    """CPython's import lock of module *name*, or a no-op where the interpreter has none.

    Whoever holds it is alone in importing *name*: an import that began
    before is over once it is acquired, and one that begins after finds the
    spec through ``sys.meta_path`` after it is released.
    """
    manager = getattr(sys.modules.get("_frozen_importlib"), "_ModuleLockManager", None)
    if manager is None:
        return _NoLock()
    return manager(name)  # type: ignore[no-any-return]
