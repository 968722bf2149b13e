"""The ``SINGLE_INSTANCE_BUILD`` switch: its name, and the values that turn it on or off.

Shared by the start-up activation (:mod:`._startup`), which reads the switch,
and the Ray integration (:mod:`._ray`), which writes it into a job's runtime
env. It imports nothing: every interpreter of the environment may import it at
start-up.
"""

from __future__ import annotations

__all__ = ["ENV_VAR", "OFF", "ON", "value_for"]

ENV_VAR = "SINGLE_INSTANCE_BUILD"
#: Values that leave the guard off, once stripped and lower-cased.
OFF = ("", "0", "false", "no", "off")
#: Values that hide ``WORLD_SIZE``, once stripped and lower-cased.
ON = ("1", "true", "yes", "on")
_DEFAULT = ("WORLD_SIZE",)  # _names.DEFAULT_ENV_VARS, without importing it at start-up


def value_for(names: tuple[str, ...]) -> str:
    """The value of the switch that hides *names* (checked): ``1`` for the default.

    >>> value_for(("WORLD_SIZE",)), value_for(("WORLD_SIZE", "LOCAL_WORLD_SIZE"))
    ('1', 'WORLD_SIZE,LOCAL_WORLD_SIZE')
    """
    return "1" if names == _DEFAULT else ",".join(names)
