"""A script's code, its ``__main__`` and its caller frame, as plain ``python SCRIPT`` makes them.

The launcher runs a script file itself (a directory, zipapp or module goes
through runpy, as in python). This module reads the file as python's own
start-up does, source or compiled ``.pyc``, builds the new ``__main__`` with
what the interpreter's own holds on this version, runs the code from a frame
that looks, to ``warnings``, like the missing frame of plain python (module
``sys``, at ``sys:1``; ``<sys>:0`` from Python 3.13), and takes ``__file__``
out of ``__main__`` when the script ends, as python does.
"""

from __future__ import annotations

import builtins
import importlib.util
import marshal
import os
import sys
import types
from importlib.machinery import SourceFileLoader, SourcelessFileLoader
from typing import Any

__all__ = ["READING", "RUNNING", "forget_file", "new_main", "read_code", "run_file"]


def _is_pyc(path: str, data: bytes) -> bool:
    """Whether python runs *path* as compiled code: by its name, or by half its magic number."""
    return path.endswith(".pyc") or data[:2] == importlib.util.MAGIC_NUMBER[:2]


def _code_of_pyc(data: bytes) -> types.CodeType:
    """The code object of a ``.pyc`` file's bytes, with the errors python's ``run_pyc_file`` gives.

    As python, only the magic number of the 16-byte header is checked, not the
    source's time or hash: a stale ``.pyc`` given as the script runs as it is.
    """
    magic = importlib.util.MAGIC_NUMBER
    if len(data) < len(magic) and sys.version_info >= (3, 13):
        raise EOFError("EOF read where not expected")  # 3.13's marshal reads 4 bytes or fails
    if data[: len(magic)] != magic:
        raise RuntimeError("Bad magic number in .pyc file")
    if len(data) < 16:
        raise EOFError("EOF read where not expected")
    try:
        code = marshal.loads(memoryview(data)[16:])  # ignores what follows, as python
    except (EOFError, ValueError, TypeError):
        code = None
    if not isinstance(code, types.CodeType):
        raise RuntimeError("Bad code object in .pyc file") from None
    return code


def read_code(path: str) -> tuple[types.CodeType, bool]:
    """The code of the script file at *path*, and whether it was compiled (a ``.pyc``).

    Raises:
        OSError: the file cannot be read.
        SyntaxError, RuntimeError, EOFError: as python for bad source or a bad ``.pyc``.
    """
    with open(path, "rb") as file:
        data = file.read()
    if _is_pyc(path, data):
        return _code_of_pyc(data), True
    return compile(data, path, "exec", dont_inherit=True), False


# The frames an error can come from while the program's code is read: python
# reports such an error without a traceback.
READING = frozenset({read_code.__code__, _code_of_pyc.__code__})


# The __main__ namespace of the script file being run: python takes its
# __file__ out once the script has ended (see forget_file).
_script: dict[str, Any] | None = None


def new_main(path: str | None = None, compiled: bool = False) -> types.ModuleType:
    """A new ``__main__``: what the interpreter's own holds before a program runs.

    With *path*, the attributes python adds for the script file at *path*,
    compiled or not. The module replaces ``sys.modules["__main__"]`` and is
    not put back afterwards, as python does not: threads and atexit handlers of
    the program may still pickle objects by their ``__main__`` names, and
    ``python -i``'s prompt runs in it.
    """
    global _script
    main = types.ModuleType("__main__")
    main.__builtins__ = builtins  # type: ignore[attr-defined]
    if sys.version_info < (3, 14):  # PEP 649/749: from 3.14 python no longer adds it
        main.__annotations__ = {}
    if path is not None:
        loader = SourcelessFileLoader if compiled else SourceFileLoader
        main.__file__ = path
        if sys.version_info < (3, 15):  # 3.15 no longer sets __cached__ for a script
            main.__cached__ = None  # type: ignore[attr-defined]
        main.__loader__ = loader("__main__", path)
    _script = main.__dict__ if path is not None else None
    sys.modules["__main__"] = main
    return main


def forget_file() -> None:
    """Take ``__file__`` (and before 3.15 ``__cached__``) out of the script's ``__main__``.

    As python does once a script file has ended: from 3.14 at once, however it
    ended; before, at a normal end or after printing the exception that ended
    it, and never when a ``SystemExit`` ends the process. So the program's
    excepthook, atexit handlers and ``python -i``'s prompt see what they see
    under plain python. Does nothing for a module, directory or zipapp.
    """
    global _script
    namespace, _script = _script, None
    if namespace is not None:
        namespace.pop("__file__", None)
        if sys.version_info < (3, 15):  # 3.15 neither sets nor takes it out
            namespace.pop("__cached__", None)


_NAME = "<single_instance_build.run>"  # what a stack shows of the stand-in frame
# Where warnings puts a warning whose stacklevel goes past the outermost frame
# (python/cpython gh-117535 changed it in 3.13; 3.12 kept "sys", 1).
_FILE, _LINE = ("<sys>", 0) if sys.version_info >= (3, 13) else ("sys", 1)


def _trampoline() -> types.FunctionType:
    """``(run, code, namespace) -> run(code, namespace)``, from a stand-in frame.

    The frame's file and line are ``sys`` and 1 (``<sys>`` and 0 from 3.13) and
    its globals are ``sys``'s own: what ``warnings`` uses where plain python has
    no caller frame. So ``warnings.warn(..., stacklevel=2)`` at a script's top
    level is reported at ``sys:1``, for module ``sys``, with its registry in
    ``sys``, as under plain python.
    """
    # Its body reads only its arguments: its globals are never looked up or changed.
    lambda_code = compile("lambda run, code, namespace: run(code, namespace)", _FILE, "eval")
    code = next(c for c in lambda_code.co_consts if isinstance(c, types.CodeType))
    # Its lines are counted from the first: all of them become _LINE.
    code = code.replace(co_name=_NAME, co_firstlineno=_LINE)
    if sys.version_info >= (3, 11):
        code = code.replace(co_qualname=_NAME)
    return types.FunctionType(code, sys.__dict__, _NAME)


_RUN = _trampoline()
# The frame that stands for plain python's missing one: tracebacks leave it out.
RUNNING = _RUN.__code__


def run_file(path: str, origin: str) -> None:
    """Run the script file at *path*, source or ``.pyc``, as python runs ``python SCRIPT``.

    *origin* names the command in the message for a file that cannot be read.
    """
    try:
        code, compiled = read_code(path)
    except OSError as error:
        print(f"{origin}: can't open file {path!r}: {error}", file=sys.stderr)
        raise SystemExit(2) from None  # python's own status for a missing script
    if not getattr(sys.flags, "safe_path", False):  # python -P (3.11+) adds none
        sys.path[0] = os.path.dirname(os.path.realpath(path))  # symbolic links resolved
    main = new_main(path, compiled)
    try:
        _RUN(exec, code, main.__dict__)
    except BaseException:
        # Python 3.14 takes __file__ out at once; before, only once the error
        # is printed (the launcher does it), and never on a SystemExit's exit.
        if sys.version_info >= (3, 14):
            forget_file()
        raise
    forget_file()
