"""Ray's ``worker_process_setup_hook``: the guard in a worker, or a worker that does not start.

:func:`ray_worker_setup` is what :data:`._ray.SETUP_HOOK` names; Ray imports it
by that name in every worker of a job and calls it before the worker takes any
task. A worker where this package is missing fails on the import, and one
where the guard cannot be installed (wrapt missing, a mistyped switch) fails
here: Ray reports the error in the driver and the task or actor fails, instead
of training on a sharded model.
"""

from __future__ import annotations

import os

from ._names import DEFAULT_ENV_VARS
from ._switch import ENV_VAR
from ._transformers import activate

__all__ = ["ORIGIN", "ray_worker_setup"]

ORIGIN = "ray_worker_setup()"


def ray_worker_setup() -> None:
    """Guard Transformers in this Ray worker as ``SINGLE_INSTANCE_BUILD`` says; raise if it cannot.

    Name it as Ray's ``worker_process_setup_hook``
    (``"single_instance_build.ray_worker_setup"``, as :func:`ray_runtime_env`
    does), or call it at the top of a setup hook of your own. Unset, the
    variable counts as ``1`` (the hook is a request for the guard); off
    (``0``, ``false``, ...) leaves the worker unguarded, as asked.

    Raises:
        ValueError: the variable is neither a switch word nor a list of names.
        ImportError: wrapt cannot be imported: the guard could not be installed.
    """
    from ._startup import names_from

    value = os.environ.get(ENV_VAR)
    try:
        names = DEFAULT_ENV_VARS if value is None else names_from(value)
    except ValueError as error:  # the value is the user's: name the variable, not what it holds
        raise ValueError(f"{ENV_VAR} in this Ray worker: {error}") from None
    if not names:
        return
    from . import _from_pretrained  # noqa: F401 -- wrapt, now, rather than a log line later

    activate(names, ORIGIN)
