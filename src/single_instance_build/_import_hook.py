"""Run a function each time a module is executed: a ``sys.meta_path`` finder of stdlib parts only.

This is what the guard at the source waits with for ``transformers.modeling_utils``,
from interpreter start-up on, so it imports nothing beyond :mod:`sys` and
:mod:`_thread`. The finder answers only for the names it waits for: it asks the
finders after it for the real spec and wraps the loader, whose ``exec_module``
puts the real loader back on the module (as wrapt's ``_ImportHookChainedLoader``
does), executes the module, then runs the hooks. A plain import, one through a
package's lazy ``__getattr__``, ``importlib.reload`` and an import after the
module was purged from ``sys.modules`` all find a spec through ``sys.meta_path``,
so all of them run the hooks. The finder stays in place: the hooks decide
whether to act.

One finder serves every copy of this module in a process (a vendored copy, one
imported again after a purge of ``sys.modules``, a reload): the hooks live in a
table on the finder, under :data:`TABLE`, and each copy registers into the
finder it finds in ``sys.meta_path``, or puts one there. A finder that asks
``sys.meta_path`` again from inside its own lookup (another such finder, an
older copy, wrapt's) is not asked back: each lookup is marked per thread.

A finder ahead of this one that loads a module waited for itself
(``typeguard.install_import_hook``, which asks ``PathFinder`` directly) never
asks this one. The finder still sees every import that reaches it, so when one
happens while that module is being executed, it arranges for the hooks to run
when the import system marks the module's spec initialized, in the importing
thread, as if it had loaded it. :func:`finders_ahead` names such finders.
"""

from __future__ import annotations

import sys
from _thread import _local

TYPE_CHECKING = False  # typing itself costs start-up time; type checkers know this name
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from contextlib import AbstractContextManager
    from importlib.machinery import ModuleSpec
    from types import ModuleType
    from typing import Any

    Hook = Callable[[ModuleType], None]

__all__ = ["TABLE", "finders_ahead", "module_lock", "waiting_for", "when_imported"]

#: The attribute of the shared finder that holds the hooks, ``{module name: [hook, ...]}``:
#: the protocol between copies of this module. Another layout needs another name.
TABLE = "_single_instance_build_hooks"

# The hooks registered through this module, kept across importlib.reload() of it
# (a reload runs this line again in the same namespace): waiting_for() reads them.
_own: dict[str, list[Hook]] = globals().setdefault("_own", {})


def _table(finder: object) -> dict[str, list[Hook]] | None:
    """The hook table of *finder* if it is a finder of this protocol, else None."""
    try:
        table = vars(finder).get(TABLE)
    except TypeError:  # no __dict__
        return None
    return table if type(table) is dict else None


class _ChainedLoader:
    """The real loader of a module waited for, followed by its hooks."""

    def __init__(self, finder: _Finder, name: str, loader: Any) -> None:
        self.finder = finder
        self.name = name
        self.loader = loader

    def create_module(self, spec: ModuleSpec) -> ModuleType | None:
        # Hooked here: _watch() in another thread must not trap this spec before exec_module.
        self.finder._seen[self.name] = spec
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
        self.finder._seen[self.name] = spec  # a reload skips create_module
        loader.exec_module(module)
        self.finder._run(self.name, module)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.loader, name)  # get_resource_reader, is_package, ...


class _Finder:
    """Finds the modules that hooks wait for through the other finders, and chains their loader.

    Everything it needs is on the instance, so that it goes on working when
    the module that made it is reloaded or purged from ``sys.modules``.
    """

    def __init__(self) -> None:
        self._single_instance_build_hooks: dict[str, list[Hook]] = {}  # TABLE
        self._busy = _local()  # .names: what this thread is looking up through this finder
        # name -> the spec whose execution the hooks run after (chained or trapped)
        self._seen: dict[str, object] = {}
        self._pending: dict[str, tuple[object, ModuleType]] = {}  # name -> (spec, module)
        self._traps: dict[type, type] = {}  # a spec's class -> the class that runs the hooks

    def find_spec(
        self, fullname: str, path: Sequence[str] | None = None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        hooks = self._single_instance_build_hooks
        if fullname not in hooks:
            if hooks:
                self._watch()
            return None
        busy = self._busy
        try:
            names: set[str] = busy.names
        except AttributeError:
            names = busy.names = set()
        if fullname in names:  # asked again from inside this lookup, by a finder it asked
            return None
        try:
            names.add(fullname)  # in the try: an interrupt cannot leave the mark behind
            for finder in tuple(sys.meta_path):
                find_spec = getattr(finder, "find_spec", None)
                if find_spec is None or finder is self:
                    continue
                spec: ModuleSpec | None = find_spec(fullname, path, target)
                if spec is not None:
                    break
            else:
                return None
        finally:
            names.discard(fullname)
        if spec.loader is not None and hasattr(spec.loader, "exec_module"):
            spec.loader = _ChainedLoader(self, fullname, spec.loader)  # type: ignore[assignment]  # a Loader in all but name
        return spec  # a namespace package or a legacy loader: left unhooked

    def _run(self, name: str, module: ModuleType) -> None:
        for hook in tuple(self._single_instance_build_hooks.get(name, ())):
            hook(module)

    def _watch(self) -> None:
        """Arrange for the hooks of a module that another finder's loader is executing now."""
        # On every import that reaches this finder: the usual case, a module not
        # imported yet or one whose hooks ran, costs two lookups and a comparison.
        seen = self._seen
        for name in tuple(self._single_instance_build_hooks):
            module = sys.modules.get(name)
            spec = getattr(module, "__spec__", None)
            if (
                spec is not None
                and seen.get(name) is not spec
                and getattr(spec, "_initializing", False)
            ):
                self._trap(name, module, spec)  # type: ignore[arg-type]  # found in sys.modules

    def _trap(self, name: str, module: ModuleType, spec: object) -> None:
        """Run the hooks when ``_load_unlocked`` sets ``spec._initializing = False``.

        CPython 3.10 to 3.14 do that last, in a ``finally``, once the module is
        executed and back in ``sys.modules``, in the importing thread, which
        still holds the module's import lock: where the chained loader runs
        them. The spec's class becomes a subclass that sees that one write,
        and is put back when it comes.
        """
        self._seen[name] = spec  # tried once per execution, whatever happens next
        base = type(spec)
        trap = self._traps.get(base)
        if trap is None:
            trap = self._traps[base] = self._trap_class(base)
        self._pending[name] = (spec, module)
        try:
            spec.__class__ = trap
        except TypeError:  # another layout (__slots__): left unhooked, as before
            del self._pending[name]
            return
        if not getattr(spec, "_initializing", False):  # finished meanwhile, in another thread
            spec.__class__ = base
            self._pending.pop(name, None)

    def _trap_class(self, base: type) -> type:
        finder = self

        class _Initializing(base):  # type: ignore[misc]  # a spec's class, known at run time
            __slots__ = ()

            def __setattr__(self, attribute: str, value: object) -> None:
                super().__setattr__(attribute, value)
                if attribute == "_initializing" and not value:
                    finder._spring(self)

        # repr() of the spec, while the module executes, is the one it had
        _Initializing.__name__, _Initializing.__qualname__ = base.__name__, base.__qualname__
        return _Initializing

    def _spring(self, spec: Any) -> None:
        name = spec.name
        pending = self._pending.get(name)
        if pending is None or pending[0] is not spec:
            return
        del self._pending[name]
        if type(spec) in self._traps.values():
            object.__setattr__(spec, "__class__", type(spec).__mro__[1])
        module = pending[1]
        if sys.modules.get(name) is module:  # else its execution failed
            self._run(name, module)

    def __repr__(self) -> str:
        names = ", ".join(sorted(self._single_instance_build_hooks))
        return f"<single_instance_build finder for {names}>"


def _finders() -> list[tuple[Any, dict[str, list[Hook]] | None]]:
    """``sys.meta_path`` now, each finder with its hook table (None: not of this protocol)."""
    return [(finder, _table(finder)) for finder in tuple(sys.meta_path)]


def when_imported(name: str, hook: Hook) -> None:
    """Call ``hook(module)`` each time module *name* has been executed from now on.

    The hook runs in the importing thread, while it holds the module's import
    lock; it must not raise. A module imported already is not hooked: the
    caller checks ``sys.modules`` under :func:`module_lock` after this.

    The hook goes into the table of the first finder of this protocol in
    ``sys.meta_path``, which every copy of this module shares; that finder is
    put first if there is none, or moved first if another finder was put
    ahead of it. A caller that holds :func:`module_lock` of *name* knows that
    no lookup of *name* is under way meanwhile.
    """
    own = _own.setdefault(name, [])
    if hook not in own:
        own.append(hook)
    finders = _finders()
    found = next(((finder, table) for finder, table in finders if table is not None), None)
    if found is None:
        finder: Any = _Finder()
        table = finder._single_instance_build_hooks
    else:
        finder, table = found
    hooks = table.setdefault(name, [])
    if hook not in hooks:
        hooks.append(hook)
    if found is None:
        sys.meta_path.insert(0, finder)
    elif finders[0][0] is not finder:  # a finder that knows nothing of the hooks is ahead of it
        # Put first, then taken out behind: a lookup in another thread meets it at least once.
        sys.meta_path.insert(0, finder)
        for index in range(len(sys.meta_path) - 1, 0, -1):
            if sys.meta_path[index] is finder:
                del sys.meta_path[index]
                break


def _waiting_index(name: str, finders: list[tuple[Any, dict[str, list[Hook]] | None]]) -> int:
    """The index of the first finder in *finders* that runs a hook of this module for *name*."""
    own = _own.get(name, ())
    for index, (_, table) in enumerate(finders):
        if table is not None and any(hook in own for hook in table.get(name, ())):
            return index
    return -1


def waiting_for(name: str) -> bool:
    """Whether a hook waits for module *name* and the finder that runs it is in ``sys.meta_path``.

    User code can take the finder out (``sys.meta_path[:] = ...``): hooks
    registered before then no longer run.
    """
    return _waiting_index(name, _finders()) >= 0


def finders_ahead(name: str) -> tuple[str, ...]:
    """The finders ahead of the one that waits for *name* in ``sys.meta_path``, by class name.

    Such a finder can load module *name* without asking the one that waits
    for it (``typeguard``'s asks ``PathFinder`` directly): the hooks then run
    only if an import reaches the waiting finder while *name* is executed.
    """
    finders = _finders()
    index = _waiting_index(name, finders)
    ahead = []
    for finder, table in finders[: max(index, 0)]:
        if table is None:
            kind = finder if isinstance(finder, type) else type(finder)
            ahead.append(f"{kind.__module__}.{kind.__qualname__}")
    return tuple(ahead)


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
