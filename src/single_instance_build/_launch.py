"""The zero-edit launch: run an unmodified script or module with Transformers guarded.

``python -m single_instance_build.run [--env-var NAME]... (SCRIPT | -m MODULE) [ARGS...]``
calls ``guard_transformers()``, sets ``SINGLE_INSTANCE_BUILD`` so that the
Python processes it starts are guarded too, then runs the script or module as
``__main__`` with ``sys.argv``, ``sys.path[0]``, ``__file__`` and ``__spec__``
as plain ``python`` sets them. The script's exit status passes through: its
``SystemExit`` and uncaught exceptions propagate as they would without the
launcher. So ``torchrun --nproc_per_node=N -m single_instance_build.run eval.py``
fixes a launch without touching ``eval.py``.
"""

from __future__ import annotations

import argparse
import builtins
import importlib.util
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.machinery import ModuleSpec, SourceFileLoader
from types import CodeType, ModuleType

from ._names import DEFAULT_ENV_VARS, normalize_env_vars
from ._startup import ENV_VAR
from ._transformers import activate, status

__all__ = ["ORIGIN", "main"]

ORIGIN = "python -m single_instance_build.run"
_USAGE = f"{ORIGIN} [--env-var NAME]... (SCRIPT | -m MODULE) [ARGS...]"


@dataclass(frozen=True)
class _Options:
    names: tuple[str, ...]
    module: str | None  # -m MODULE, or None for a script
    script: str | None
    args: list[str]


def _parser() -> argparse.ArgumentParser:
    """Only for --help and usage errors: the command line is read by :func:`_parse`."""
    parser = argparse.ArgumentParser(
        prog=ORIGIN,
        usage=_USAGE,
        description=(
            "Run a Python script or module, unmodified, with Transformers' "
            "PreTrainedModel.from_pretrained guarded: under torchrun, a load with "
            "device_map='auto' builds one full model per process instead of switching "
            "to tensor parallelism. Sets SINGLE_INSTANCE_BUILD so that Python "
            "processes it starts are guarded too. Exits with the script's status."
        ),
    )
    parser.add_argument(
        "--env-var",
        metavar="NAME",
        action="append",
        help="a variable to hide (repeat for several); default: WORLD_SIZE",
    )
    parser.add_argument("-m", metavar="MODULE", help="run a module, as python -m does")
    parser.add_argument("script", metavar="SCRIPT", nargs="?", help="the script to run")
    parser.add_argument("args", metavar="ARGS", nargs="*", help="passed to the script as is")
    return parser


def _parse(argv: Sequence[str]) -> _Options:
    """Read the launcher's options up to SCRIPT or ``-m MODULE``; the rest is the script's."""
    parser = _parser()
    env_vars: list[str] = []
    position = 0
    while position < len(argv) and argv[position].startswith("--env-var"):
        name, equals, value = argv[position].partition("=")
        if name != "--env-var":
            break
        if not equals:
            position += 1
            if position == len(argv):
                parser.error("argument --env-var: expected one argument")
            value = argv[position]
        env_vars.append(value)
        position += 1
    try:
        names = normalize_env_vars(env_vars) if env_vars else DEFAULT_ENV_VARS
    except (TypeError, ValueError) as error:
        parser.error(f"argument --env-var: {error}")  # exits with status 2, as python does
    rest = list(argv[position:])
    if rest[:1] == ["--"]:
        rest = rest[1:]
    elif rest and rest[0] in ("-h", "--help"):
        parser.print_help()
        raise SystemExit(0)
    elif rest and rest[0].startswith("-m"):
        module = rest[0][2:] or (rest[1] if len(rest) > 1 else "")
        if not module:
            parser.error("argument -m: expected a module name")
        return _Options(names, module, None, rest[1 if rest[0][2:] else 2 :])
    elif rest and rest[0].startswith("-"):
        parser.error(f"unrecognized option {rest[0]!r} (the script's own options go after it)")
    if not rest:
        parser.error("a SCRIPT or -m MODULE to run is required")
    return _Options(names, None, rest[0], rest[1:])


def _run_as_main(code: CodeType, attributes: dict[str, object]) -> None:
    """Execute *code* as the module ``__main__``, as the interpreter runs a program."""
    main = ModuleType("__main__")
    main.__dict__.update(attributes, __builtins__=builtins)
    # Not put back afterwards, as python does not: threads and atexit handlers
    # of the program may still pickle objects by their __main__ names.
    sys.modules["__main__"] = main
    exec(code, main.__dict__)


def _script_path0(script: str) -> str:
    """The ``sys.path[0]`` python sets for a script: its directory, symbolic links resolved."""
    return os.path.dirname(os.path.realpath(script))


def _run_script(script: str, args: list[str]) -> None:
    path = script if os.path.isabs(script) else os.path.join(os.getcwd(), script)
    try:
        with open(path, "rb") as file:
            source = file.read()
    except OSError as error:
        print(f"{ORIGIN}: can't open file {path!r}: {error}", file=sys.stderr)
        raise SystemExit(2) from None  # python's own status for a missing script
    code = compile(source, path, "exec", dont_inherit=True)
    sys.argv[:] = [script, *args]
    if not getattr(sys.flags, "safe_path", False):  # python -P adds no directory
        sys.path[0] = _script_path0(script)
    attributes: dict[str, object] = {
        "__file__": path,
        "__cached__": None,
        "__loader__": SourceFileLoader("__main__", path),
        "__spec__": None,
        "__package__": None,
    }
    _run_as_main(code, attributes)


def _find_main_spec(module: str) -> ModuleSpec:
    """The spec of *module*, or of its ``__main__`` if it is a package, as ``python -m``."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError) as error:
        raise SystemExit(f"{ORIGIN}: error while finding module {module!r}: {error}") from error
    if spec is not None and spec.submodule_search_locations is not None:
        return _find_main_spec(f"{module}.__main__")
    if spec is None or spec.loader is None:
        raise SystemExit(f"{ORIGIN}: no module named {module!r}")
    return spec


def _run_module(module: str, args: list[str]) -> None:
    spec = _find_main_spec(module)
    loader = spec.loader
    get_code = getattr(loader, "get_code", None)
    code = get_code(spec.name) if get_code is not None else None
    if code is None:
        raise SystemExit(f"{ORIGIN}: no code object available for {module!r}")
    origin = spec.origin or module
    sys.argv[:] = [origin, *args]
    attributes: dict[str, object] = {
        "__file__": spec.origin,
        "__cached__": spec.cached,
        "__loader__": loader,
        "__spec__": spec,
        "__package__": spec.parent,
    }
    _run_as_main(code, attributes)


def main(argv: Sequence[str] | None = None) -> int:
    """Guard Transformers, then run the script or module that *argv* names.

    *argv* defaults to ``sys.argv[1:]``. Returns 0 when the program ends
    normally; its ``SystemExit`` and exceptions propagate unchanged, and usage
    errors exit with status 2.
    """
    options = _parse(sys.argv[1:] if argv is None else argv)
    activate(options.names, ORIGIN)
    os.environ[ENV_VAR] = ",".join(status().names)  # Python processes it starts guard too
    if options.module is not None:
        _run_module(options.module, options.args)
    else:
        assert options.script is not None
        _run_script(options.script, options.args)
    return 0
