"""Ray: the guard carried to the workers of a job, through the job's runtime env.

Ray workers are started by a raylet with the environment of ``ray start``, not
the driver's: on a cluster the driver did not start, the driver's
``SINGLE_INSTANCE_BUILD`` and the launcher around it never reach them. A job's
runtime env does. :func:`ray_runtime_env` gives one that carries the switch
and names :data:`SETUP_HOOK` as Ray's ``worker_process_setup_hook``, so that a
worker without this package, or without wrapt, fails to start instead of
training unguarded.

While the guard is on in the driver (the launcher, the variable, or
``guard_transformers()``), :func:`carry` has ``ray.init`` wrapped as soon as
Ray is imported (a hook of :mod:`._import_hook`, so Ray is never imported
here), and the ``ray.init`` that starts or connects the driver, explicit or
Ray Train's implicit one, adds the same to the job's runtime env, never
overriding a switch or a setup hook the user or the submitted job already has.
This module imports only the stdlib and the modules below it; wrapt once Ray
is imported.
"""

from __future__ import annotations

import os
import sys
from _thread import RLock

from ._import_hook import module_lock, when_imported
from ._names import DEFAULT_ENV_VARS, check_source_names, describe
from ._switch import ENV_VAR, value_for

TYPE_CHECKING = False  # typing itself costs start-up time; type checkers know this name
if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping
    from contextlib import AbstractContextManager
    from types import ModuleType
    from typing import Any

__all__ = ["SETUP_HOOK", "carried", "carry", "ray_runtime_env", "with_switch"]

MODULE = "ray"
#: What Ray's ``worker_process_setup_hook`` names: imported and called in every worker.
SETUP_HOOK = "single_instance_build.ray_worker_setup"
HOOK_KEY = "worker_process_setup_hook"
# Where Ray's job manager puts a submitted job's config for its driver (ray_constants).
JOB_CONFIG_VAR = "RAY_JOB_CONFIG_JSON_ENV_VAR"
_LOGGER = "single_instance_build"

_lock = RLock()
_names: tuple[str, ...] = ()  # what the guard in this process hides: the workers get the same
_generation = 0
_patched: list[tuple[Any, str, Any, Any]] = []  # (owner, attribute, original, wrapper)


def _env_vars(runtime_env: Mapping[str, Any], what: str) -> Mapping[str, Any]:
    env_vars = runtime_env.get("env_vars") or {}
    if not hasattr(env_vars, "keys") or not hasattr(env_vars, "__getitem__"):
        raise TypeError(
            f"{what}['env_vars'] must be a mapping of names to values, "
            f"got a {type(env_vars).__qualname__}"
        )
    return env_vars


def with_switch(
    runtime_env: Mapping[str, Any] | None, names: tuple[str, ...], *, setup_hook: bool = True
) -> dict[str, Any]:
    """A copy of *runtime_env* that carries the switch for *names* (checked) to Ray's workers.

    A ``SINGLE_INSTANCE_BUILD`` already in its ``env_vars`` is the user's and
    stays, whatever it says. :data:`SETUP_HOOK` is added as the
    ``worker_process_setup_hook`` if *setup_hook* and there is none.

    Raises:
        TypeError: *runtime_env* or its ``env_vars`` is not a mapping.
    """
    if runtime_env is None:
        runtime_env = {}
    if not hasattr(runtime_env, "keys") or not hasattr(runtime_env, "__getitem__"):
        raise TypeError(
            f"runtime_env must be a mapping (a dict or ray.runtime_env.RuntimeEnv) or None, "
            f"got a {type(runtime_env).__qualname__}"
        )
    merged = {key: runtime_env[key] for key in runtime_env}
    env_vars = dict(_env_vars(runtime_env, "runtime_env"))
    env_vars.setdefault(ENV_VAR, value_for(names))
    merged["env_vars"] = env_vars
    if setup_hook and merged.get(HOOK_KEY) is None:
        merged[HOOK_KEY] = SETUP_HOOK
    return merged


def ray_runtime_env(
    runtime_env: Mapping[str, Any] | None = None,
    /,
    *,
    env_vars: str | Iterable[str] = DEFAULT_ENV_VARS,
) -> dict[str, Any]:
    """A Ray runtime env whose workers build one full model each: pass it to ``ray.init``.

    ``ray.init(address="auto", runtime_env=ray_runtime_env())``, or the same
    dict as a job's ``--runtime-env-json``, gives every worker of the job
    ``SINGLE_INSTANCE_BUILD`` in its environment (so the ``.pth`` line guards
    Transformers as the interpreter starts, and Python processes the worker
    starts inherit it), and names :func:`ray_worker_setup` as Ray's
    ``worker_process_setup_hook``: a worker where this package or wrapt is
    missing fails to start, and Ray reports it, instead of training on a
    sharded model. The package must be installed in the workers' environment.

    Args:
        runtime_env: a runtime env of your own to add to (not changed): a dict
            or a ``ray.runtime_env.RuntimeEnv``. A ``SINGLE_INSTANCE_BUILD``
            already in its ``env_vars`` is kept as it is.
        env_vars: the variable name, or an iterable of names, that the workers
            hide, as :func:`guard_transformers` takes them. Default:
            ``("WORLD_SIZE",)``, carried as ``SINGLE_INSTANCE_BUILD=1``.

    Returns:
        A new dict: *runtime_env*'s fields, its ``env_vars`` with the switch,
        and the setup hook.

    Raises:
        TypeError: *runtime_env* or its ``env_vars`` is not a mapping, or
            *env_vars* is not a name or an iterable of names.
        ValueError: a name is outside the grammar of :func:`guard_transformers`,
            or *runtime_env* has a ``worker_process_setup_hook`` of its own:
            Ray runs one, so call :func:`ray_worker_setup` from yours.

    Examples:
        >>> ray_runtime_env({"pip": ["numpy"]})["env_vars"]
        {'SINGLE_INSTANCE_BUILD': '1'}
    """
    merged = with_switch(runtime_env, check_source_names(env_vars))
    hook = merged[HOOK_KEY]
    if not (isinstance(hook, str) and hook == SETUP_HOOK):
        raise ValueError(
            f"runtime_env already has a {HOOK_KEY} ({describe(hook)}), and Ray runs only one: "
            f"call single_instance_build.ray_worker_setup() at the top of it instead"
        )
    return merged


def _submitted_job_env() -> Mapping[str, Any]:
    """The runtime env of the submitted job this driver runs in (``{}`` outside one)."""
    text = os.environ.get(JOB_CONFIG_VAR)
    if not text:
        return {}
    import json

    runtime_env = json.loads(text).get("runtime_env") or {}
    return runtime_env if isinstance(runtime_env, dict) else {}


def _init_kwargs(kwargs: dict[str, Any], names: tuple[str, ...]) -> dict[str, Any]:
    """``ray.init``'s keyword arguments with the switch added to the job's runtime env.

    The runtime env is the ``runtime_env`` argument, else (when it is None or
    empty, which Ray ignores) ``job_config``'s, which a non-empty argument
    replaces. In a submitted job, Ray replaces ``job_config``'s with the job's
    own env merged with the argument, which may not repeat the job's keys: the
    argument is then built without ``job_config``'s, and what the job has is
    not added again.
    """
    runtime_env = kwargs.get("runtime_env") or None
    job = _submitted_job_env()
    if runtime_env is None and JOB_CONFIG_VAR not in os.environ:
        runtime_env = getattr(kwargs.get("job_config"), "runtime_env", None) or None
    own = {} if runtime_env is None else _env_vars(runtime_env, "runtime_env")
    if ENV_VAR in own or ENV_VAR in _env_vars(job, "the submitted job's runtime_env"):
        return kwargs
    hook_free = HOOK_KEY not in job and (runtime_env is None or HOOK_KEY not in runtime_env)
    return {**kwargs, "runtime_env": with_switch(runtime_env, names, setup_hook=hook_free)}


def _warn(message: str) -> None:
    import logging

    logging.getLogger(_LOGGER).warning("single-instance-build: %s", message)


def _init(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """The wrapper of ``ray.init``: the first call of the driver carries the switch."""
    names = _names
    if names:
        try:
            if not sys.modules[MODULE].is_initialized():  # a nested call changes nothing
                kwargs = _init_kwargs(kwargs, names)
        except Exception as error:  # never in the way of ray.init, never silent
            _warn(
                f"ray.init: could not add {ENV_VAR} to the job's runtime env "
                f"({type(error).__name__}: {error}); the workers are NOT guarded unless they "
                f"get it otherwise (docs/ray.md)"
            )
    return wrapped(*args, **kwargs)


def _patch(module: ModuleType) -> None:
    """Wrap ``ray.init`` and ``ray._private.worker.init``, once (under _lock)."""
    import wrapt

    original = vars(module).get("init")
    if original is None or any(wrapper is original for _, _, _, wrapper in _patched):
        return
    wrapper = wrapt.FunctionWrapper(original, _init)
    owners = [module, sys.modules.get(f"{MODULE}._private.worker")]
    for owner in owners:
        if owner is not None and vars(owner).get("init") is original:
            setattr(owner, "init", wrapper)  # noqa: B010  # a module, by name: mypy knows no init
            _patched.append((owner, "init", original, wrapper))


def _driver_already_connected(module: ModuleType) -> bool:
    """Whether this process is a Ray driver connected before the guard came on."""
    worker = getattr(sys.modules.get(f"{MODULE}._private.worker"), "global_worker", None)
    return bool(module.is_initialized()) and getattr(worker, "mode", None) == getattr(
        module, "SCRIPT_MODE", object()
    )


def _workers_get_switch(module: ModuleType) -> bool:
    """Whether the workers of the connected job get the switch: its env, or a cluster of ours."""
    job_env = module.get_runtime_context().runtime_env
    if ENV_VAR in (job_env.get("env_vars") or {}):
        return True
    node = getattr(sys.modules.get(f"{MODULE}._private.worker"), "_global_node", None)
    # A cluster this process started: its raylet, so its workers, took our environment.
    return bool(getattr(node, "head", False)) and ENV_VAR in os.environ


def _on_import(module: ModuleType) -> None:
    """The hook run each time ``ray`` is executed; never raises."""
    with _lock:
        if not _names:
            return
        try:
            _patch(module)
        except Exception as error:  # wrapt missing or Ray changed: say so in the driver
            _warn(
                f"ray.init could not be wrapped ({type(error).__name__}: {error}); the "
                f"workers of a cluster this process did not start get no {ENV_VAR} from it"
            )


def _initializing(module: ModuleType | None) -> bool:
    return bool(getattr(getattr(module, "__spec__", None), "_initializing", False))


def carry(names: tuple[str, ...], generation: int) -> None:
    """Carry the guard for *names* (``()``: none) to the workers of Ray jobs this process starts.

    Called by :mod:`._transformers` whenever the guard changes, with a number
    that grows with each change: of two calls that race, the later change
    wins, whichever runs last. Ray is never
    imported here: ``ray.init`` is wrapped when Ray is, or at once if it is.
    A driver already connected cannot change its job's runtime env: it is
    warned, unless that env carries the switch.
    """
    global _names, _generation
    with _lock:
        if generation < _generation:
            return
        _names, _generation = names, generation
        if not names:
            return
    lock: AbstractContextManager[object] | None = None
    if not _import_cut_by_fork:  # else its lock stays held by a thread the fork left behind
        try:
            lock = module_lock(MODULE)
            lock.__enter__()
        except RuntimeError:  # CPython's deadlock detection: this thread waits on the importer
            lock = None
    try:
        with _lock:  # an import of Ray that began is over; one that begins meets the hook
            when_imported(MODULE, _on_import)
    finally:
        if lock is not None:
            lock.__exit__(None, None, None)
    module = sys.modules.get(MODULE)
    if module is None or _initializing(module):
        return
    _on_import(module)
    try:
        unguarded = _driver_already_connected(module) and not _workers_get_switch(module)
    except Exception:  # a Ray without these: nothing more to check
        unguarded = False
    if unguarded:
        _warn(
            f"Ray was initialized before the guard came on, without {ENV_VAR} in the job's "
            f"runtime env: workers on a cluster this process did not start are NOT guarded "
            f"(call guard_transformers() in train_loop_per_worker, or pass "
            f"runtime_env=single_instance_build.ray_runtime_env() to ray.init; docs/ray.md)"
        )


def carried() -> tuple[str, ...]:
    """The names the next ``ray.init`` of this process carries to the workers; ``()``: none."""
    return _names


# True in a child forked while Ray was being imported by another thread: that
# import's lock is never released there, so carry() must not wait for it.
_import_cut_by_fork = False


def _after_fork_in_child() -> None:
    global _lock, _import_cut_by_fork
    _lock = RLock()
    _import_cut_by_fork = _initializing(sys.modules.get(MODULE))


if hasattr(os, "register_at_fork"):  # POSIX only
    os.register_at_fork(after_in_child=_after_fork_in_child)
