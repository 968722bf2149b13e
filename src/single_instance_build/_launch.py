"""The zero-edit launch: run an unmodified script or module with Transformers guarded.

``python -m single_instance_build.run [--env-var NAMES]... [--local-rank=N] (SCRIPT | -m MODULE)
[ARGS...]``
calls ``guard_transformers()``, sets ``SINGLE_INSTANCE_BUILD`` to the same
names so that the Python processes it starts hide exactly what it hides, then
runs the program as plain ``python`` would: a script (source or ``.pyc``), a
directory or zipapp with a ``__main__.py``, or a module, as ``__main__``, with
``sys.argv``, ``sys.path[0]`` and the module's attributes as python sets them.
The ``--local_rank=N`` (or ``--local-rank=N``) that DeepSpeed and
``torch.distributed.launch`` put before SCRIPT reaches the program where plain
python under them would put it, first among its arguments. The program's
exit status, its ``SystemExit``, its uncaught exceptions (printed without the
launcher's frames) and ``KeyboardInterrupt`` behave as without the launcher.
So ``torchrun --nproc_per_node=N -m single_instance_build.run eval.py`` fixes a
launch without touching ``eval.py``.
"""

from __future__ import annotations

import argparse
import os
import pkgutil
import runpy
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import FrameType, TracebackType
from typing import cast

from . import _program
from ._names import DEFAULT_ENV_VARS, split_name_list
from ._startup import ENV_VAR
from ._transformers import activate, status

__all__ = ["ORIGIN", "launch", "main"]

ORIGIN = "python -m single_instance_build.run"
_USAGE = (
    f"{ORIGIN} [--env-var NAMES]... [--local-rank=N] (SCRIPT | DIR | ZIPAPP | -m MODULE) [ARGS...]"
)
# What DeepSpeed (--local_rank=N) and torch.distributed.launch (--local-rank=N
# from torch 2.0, --local_rank=N before) put first, always in this one form.
_LOCAL_RANK = ("--local-rank", "--local_rank")

# What the interpreter itself calls for "python -m MODULE" and "python DIR":
# running through it gives the program the same module attributes, error
# messages and traceback frames as plain python.
_run_module_as_main = cast(
    "Callable[[str, bool], object]",
    getattr(runpy, "_run_module_as_main"),  # noqa: B009  # private, so typeshed omits it
)


@dataclass(frozen=True)
class _Options:
    names: tuple[str, ...]
    module: str | None  # -m MODULE, or None for a script
    script: str | None
    args: list[str]  # the launchers' --local-rank=N first, as plain python would get them


def _parser() -> argparse.ArgumentParser:
    """Only for --help and usage errors: the command line is read by :func:`_parse`."""
    parser = argparse.ArgumentParser(
        prog=ORIGIN,
        usage=_USAGE,
        description=(
            "Run a Python script, directory, zipapp or module, unmodified, with Transformers' "
            "PreTrainedModel.from_pretrained guarded: under torchrun, a load with "
            "device_map='auto' builds one full model per process instead of switching "
            "to tensor parallelism. Sets SINGLE_INSTANCE_BUILD so that Python "
            "processes it starts hide the same variables. Exits with the program's status."
        ),
    )
    parser.add_argument(
        "--env-var",
        metavar="NAMES",
        action="append",
        help=(
            "a variable to hide, or a comma-separated list of them, as in the list form of "
            "SINGLE_INSTANCE_BUILD (may repeat); names are upper-case ASCII letters, digits "
            "and _, not starting with a digit; default: WORLD_SIZE"
        ),
    )
    parser.add_argument(
        *_LOCAL_RANK,
        metavar="N",
        help=(
            "the local rank that DeepSpeed and torch.distributed.launch put first, as "
            "--local_rank=N or --local-rank=N; the program gets it, as given, first among its "
            "arguments, as plain python under those launchers would"
        ),
    )
    parser.add_argument("-m", metavar="MODULE", help="run a module, as python -m does")
    parser.add_argument(
        "script", metavar="SCRIPT", nargs="?", help="the script, directory or zipapp to run"
    )
    parser.add_argument("args", metavar="ARGS", nargs="*", help="passed to the program as is")
    return parser


def _names(parser: argparse.ArgumentParser, values: list[str]) -> tuple[str, ...]:
    """The names that ``--env-var`` values give, in the grammar of ``SINGLE_INSTANCE_BUILD``."""
    if not values:
        return DEFAULT_ENV_VARS
    names: list[str] = []
    for value in values:
        try:
            names.extend(split_name_list(value))
        except ValueError as error:
            # exits with status 2, as python does, before anything runs
            parser.error(f"argument --env-var: bad value {value!r}: {error}")
    return tuple(dict.fromkeys(names))


def _parse(argv: Sequence[str]) -> _Options:
    """Read the launcher's options up to SCRIPT or ``-m MODULE``; the rest is the program's."""
    parser = _parser()
    env_vars: list[str] = []
    local_rank: list[str] = []
    position = 0
    while position < len(argv):
        name, equals, value = argv[position].partition("=")
        if name == "--env-var":
            if not equals:
                position += 1
                if position == len(argv):
                    parser.error("argument --env-var: expected one argument")
                value = argv[position]
            env_vars.append(value)
        elif name in _LOCAL_RANK:
            if not (equals and value.isascii() and value.isdecimal()):
                parser.error(
                    f"argument {name}: expected {name}=N with N a whole number, "
                    f"as launchers pass it; got {argv[position]!r}"
                )
            if local_rank:
                parser.error(
                    f"argument {name}: given twice, as {local_rank[0]!r} and {argv[position]!r}"
                )
            local_rank.append(argv[position])
        else:
            break
        position += 1
    names = _names(parser, env_vars)
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
        return _Options(names, module, None, [*local_rank, *rest[1 if rest[0][2:] else 2 :]])
    elif rest and rest[0].startswith("-"):
        parser.error(f"unrecognized option {rest[0]!r} (the script's own options go after it)")
    if not rest:
        parser.error("a SCRIPT or -m MODULE to run is required")
    return _Options(names, None, rest[0], [*local_rank, *rest[1:]])


def _run_script(script: str, args: list[str]) -> None:
    sys.argv[:] = [script, *args]
    path = os.path.join(os.getcwd(), script)  # as is, if absolute
    if pkgutil.get_importer(path) is None:  # neither a directory nor a zip file
        _program.run_file(path, ORIGIN)
        return
    # A directory or a zipapp: python puts it first on sys.path, even under -P,
    # and runs its __main__ module from there.
    if getattr(sys.flags, "safe_path", False):
        sys.path.insert(0, path)
    else:
        sys.path[0] = path
    _program.new_main()
    _run_module_as_main("__main__", False)


def _run_module(module: str, args: list[str]) -> None:
    sys.argv[:] = ["-m", *args]  # as python has it until the module is found
    _program.new_main()
    _run_module_as_main(module, True)


def main(argv: Sequence[str] | None = None) -> int:
    """Guard Transformers, then run the script, directory, zipapp or module that *argv* names.

    *argv* defaults to ``sys.argv[1:]``. Returns 0 when the program ends
    normally; its ``SystemExit`` and exceptions propagate unchanged, and usage
    errors exit with status 2 before anything runs.
    """
    options = _parse(sys.argv[1:] if argv is None else argv)
    activate(options.names, ORIGIN)
    # The Python processes it starts hide the same names, read back by start-up.
    os.environ[ENV_VAR] = ",".join(status().names)
    if options.module is not None:
        _run_module(options.module, options.args)
    else:
        assert options.script is not None
        _run_script(options.script, options.args)
    return 0


_LAUNCHER_GLOBALS = (globals(), vars(_program))


def _is_launchers(frame: FrameType) -> bool:
    """Whether *frame* is the launcher's: of its modules, or the stand-in below a script."""
    return any(frame.f_globals is g for g in _LAUNCHER_GLOBALS) or frame.f_code is _program.RUNNING


def _program_frames(error: BaseException) -> TracebackType | None:
    """*error*'s traceback without its first frames, the launcher's own.

    None where the program's code could not be read (a ``SyntaxError``, a bad
    ``.pyc``): python prints that without a traceback. All of them are kept
    where no frame of the program follows otherwise (a failure of the launcher).
    """
    traceback = program = last = error.__traceback__
    while program is not None and _is_launchers(program.tb_frame):
        last, program = program, program.tb_next
    if program is None and last is not None and last.tb_frame.f_code not in _program.READING:
        return traceback
    return program


class _ReportedOnce:
    """``sys.excepthook`` for one exception that was already reported: stays silent, once.

    The exception still propagates to the interpreter, which then exits as for
    any uncaught exception (status 1, or by SIGINT for ``KeyboardInterrupt``)
    after the atexit handlers, or under ``python -i`` opens the prompt.
    """

    def __init__(self, error: BaseException, hook: Callable[..., object]) -> None:
        self.error = error
        self.traceback = error.__traceback__
        self.hook = hook

    def __call__(
        self, kind: type[BaseException], error: BaseException, traceback: TracebackType | None
    ) -> None:
        if sys.excepthook is self:
            sys.excepthook = self.hook
        if error is not self.error:
            self.hook(kind, error, traceback)
            return
        # What python -i's pdb.pm() and traceback.print_last() read.
        error.__traceback__ = sys.last_traceback = self.traceback
        if sys.version_info >= (3, 12):
            sys.last_exc = error


def _report(error: BaseException) -> None:
    """Print *error* as python prints an uncaught exception, from the program's first frame."""
    error.__traceback__ = _program_frames(error)
    sys.last_type, sys.last_value, sys.last_traceback = type(error), error, error.__traceback__
    if sys.version_info >= (3, 12):
        sys.last_exc = error
    hook = sys.excepthook
    try:
        hook(type(error), error, error.__traceback__)
    except BaseException as hook_error:  # as python does when the hook itself fails
        print("Error in sys.excepthook:", file=sys.stderr)
        sys.__excepthook__(type(hook_error), hook_error, hook_error.__traceback__)
        print("\nOriginal exception was:", file=sys.stderr)
        sys.__excepthook__(type(error), error, error.__traceback__)
    sys.excepthook = _ReportedOnce(error, hook)


def launch() -> None:
    """``python -m single_instance_build.run``: :func:`main`, ending as plain python ends.

    An uncaught exception of the program is printed by ``sys.excepthook``
    without the launcher's frames, then left to propagate, so the interpreter
    exits as it would have (or opens ``python -i``'s prompt). A normal end
    raises no ``SystemExit``, which ``python -i`` would print.
    """
    try:
        main()
    except SystemExit as error:
        if sys.flags.inspect:  # python -i prints it: show the program's frames only
            _report(error)
            _program.forget_file()
        raise
    except BaseException as error:
        _report(error)
        _program.forget_file()
        raise
