"""What ``SINGLE_INSTANCE_BUILD`` costs every interpreter start, unset and set, from a wheel.

Run it with ``python benchmarks/bench_startup.py`` (``--help`` for options);
``--project DIR`` measures another checkout (an older commit, say) the same way.

It builds the project's wheel and installs it, without dependencies, into a
fresh virtual environment whose site-packages links to this Python's wrapt,
as an install would put it there; a second fresh environment holds nothing.
It then times ``python -c pass``, one start of each variant in turn: the bare
environment, the variable unset, ``SINGLE_INSTANCE_BUILD=1`` and a mistyped
value, each against the bare environment, in wall-clock and in CPU time (the
children's user and system time, which a busy neighbour disturbs less). On
Python 3.15 and later a third environment adds the PEP 829
``single_instance_build.start`` file that 0.2.0 shipped, so that its cost
shows beside the ``.pth`` line alone. It also lists the modules each variant
has in ``sys.modules`` or names in ``-X importtime`` (which on 3.15 misses
some) beyond the bare start, and whether wrapt or Transformers is among them.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import venv
from pathlib import Path

import wrapt

ROOT = Path(__file__).resolve().parent.parent
ENV_VAR = "SINGLE_INSTANCE_BUILD"
#: The entry point of the ``.start`` file 0.2.0 shipped; only Python 3.15+ reads one.
START_LINE = "single_instance_build._startup:activate"


def build_wheel(project: Path, into: Path) -> Path:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(into), str(project)],
        check=True,
    )
    (wheel,) = into.glob("single_instance_build-*.whl")
    return wheel


def make_environment(root: Path, wheel: Path | None, start_file: bool = False) -> Path:
    """A fresh virtual environment, with *wheel* and wrapt if given; returns its python.

    *start_file* adds ``single_instance_build.start`` beside the wheel's ``.pth``.
    """
    venv.create(root, with_pip=False, symlinks=True)
    python = root / "bin" / "python"
    if wheel is not None:
        subprocess.run(
            [sys.executable, "-m", "pip", "--python", str(python), "install", "-q",
             "--no-deps", "--no-index", str(wheel)],
            check=True,
        )  # fmt: skip
        (site_packages,) = root.glob("lib/python*/site-packages")
        # No path file of its own: any .pth makes site do work a bare start skips.
        (site_packages / "wrapt").symlink_to(Path(wrapt.__file__).parent)
        if start_file:
            (site_packages / "single_instance_build.start").write_text(f"{START_LINE}\n")
    return python


def environment(value: str | None) -> dict[str, str]:
    drop = (ENV_VAR, "PYTHONPATH", "PYTHONDONTWRITEBYTECODE")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    if value is not None:
        env[ENV_VAR] = value
    return env


def start_seconds(python: Path, env: dict[str, str]) -> tuple[float, float]:
    """Wall-clock and CPU seconds of one ``python -c pass``."""
    cpu_before = children_cpu_seconds()
    start = time.perf_counter()
    subprocess.run([str(python), "-c", "pass"], env=env, check=True, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    return wall, children_cpu_seconds() - cpu_before


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def imported_modules(python: Path, env: dict[str, str]) -> set[str]:
    """The modules in ``sys.modules`` once the program starts, and those ``-X importtime`` names."""
    code = "import sys; print(' '.join(sys.modules))"
    completed = subprocess.run(
        [str(python), "-X", "importtime", "-c", code],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    timed = {
        line.rsplit("|", 1)[1].strip()
        for line in completed.stderr.splitlines()
        if line.startswith("import time:") and not line.rstrip().endswith("package")
    }
    return timed | set(completed.stdout.split())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--project", type=Path, default=ROOT, help="checkout to build (this one)")
    parser.add_argument("--repeats", type=int, default=21, help="interleaved rounds (default 21)")
    parser.add_argument("--number", type=int, default=5, help="turns per round (default 5)")
    options = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        wheel = build_wheel(options.project.resolve(), Path(scratch) / "wheel")
        bare = make_environment(Path(scratch) / "bare", None)
        installed = make_environment(Path(scratch) / "installed", wheel)
        variants = {
            "bare environment": (bare, environment(None)),
            "installed, variable unset": (installed, environment(None)),
            f"installed, {ENV_VAR}=1": (installed, environment("1")),
            f"installed, {ENV_VAR}=ture": (installed, environment("ture")),
        }
        if sys.version_info >= (3, 15):
            with_start = make_environment(Path(scratch) / "with-start", wheel, start_file=True)
            variants["with .start file, variable unset"] = (with_start, environment(None))
            variants[f"with .start file, {ENV_VAR}=1"] = (with_start, environment("1"))
        names = list(variants)
        samples: dict[str, list[tuple[float, float]]] = {name: [] for name in names}
        # One start of each variant in turn, the order rotated: a burst of load
        # from a neighbour then falls on all variants alike.
        for turn in range(options.repeats * options.number):
            for name in names[turn % len(names) :] + names[: turn % len(names)]:
                python, env = variants[name]
                samples[name].append(start_seconds(python, env))
        baseline_modules = imported_modules(bare, environment(None))
        modules = {
            name: imported_modules(python, env) - baseline_modules
            for name, (python, env) in variants.items()
        }

    walls = {name: [wall for wall, _ in values] for name, values in samples.items()}
    cpus = {name: [cpu for _, cpu in values] for name, values in samples.items()}
    bare_wall = statistics.median(walls["bare environment"])
    bare_cpu = statistics.median(cpus["bare environment"])
    starts = options.repeats * options.number
    print(f"{wheel.name}, python {sys.version.split()[0]}, {starts} starts of each, interleaved")
    print()
    print(
        "| `python -c pass` | median ms | vs bare | fastest ms | CPU ms | CPU vs bare "
        "| modules beyond bare |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name in names:
        wall, cpu = statistics.median(walls[name]), statistics.median(cpus[name])
        print(
            f"| {name} | {wall * 1e3:.1f} | {wall / bare_wall:.2f}x | {min(walls[name]) * 1e3:.1f} "
            f"| {cpu * 1e3:.1f} | {cpu / bare_cpu:.2f}x | {len(modules[name])} |"
        )
    print()
    for name, extra in modules.items():
        heavy = sorted(m for m in extra if m.split(".")[0] in ("wrapt", "transformers"))
        print(f"{name}: wrapt or transformers imported at start-up: {', '.join(heavy) or 'none'}")


if __name__ == "__main__":
    main()
