"""What the ``single_instance_build.pth`` line costs every interpreter start, unset and set.

Run it with ``python benchmarks/bench_startup.py`` (``--help`` for options).

It makes two throwaway virtual environments that differ only in that line:
both reach this package and wrapt through a plain path file, one also holds
``single_instance_build.pth``. It then times ``python -c pass`` in each,
one start of each in turn, without the line, with it and the variable unset,
with ``SINGLE_INSTANCE_BUILD=0`` and with ``=1``. It also counts the modules each start
imports (``python -X importtime``), and times the line alone, executed in
this process with the variable unset.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import timeit
import venv
from pathlib import Path

import wrapt

import single_instance_build
from single_instance_build._startup import ENV_VAR, PTH_LINE


def make_environment(root: Path, with_line: bool) -> Path:
    """A bare virtual environment that finds this package; returns its python."""
    venv.create(root, with_pip=False, symlinks=True)
    (site_packages,) = root.glob("lib/python*/site-packages")
    reach = [Path(single_instance_build.__file__).parent.parent, Path(wrapt.__file__).parent.parent]
    (site_packages / "reach.pth").write_text("".join(f"{path}\n" for path in reach))
    if with_line:
        (site_packages / "single_instance_build.pth").write_text(PTH_LINE + "\n")
    return root / "bin" / "python"


def environment(value: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in (ENV_VAR, "PYTHONPATH")}
    if value is not None:
        env[ENV_VAR] = value
    return env


def start_seconds(python: Path, env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run([str(python), "-c", "pass"], env=env, check=True)
    return time.perf_counter() - start


def imported_modules(python: Path, env: dict[str, str]) -> set[str]:
    completed = subprocess.run(
        [str(python), "-X", "importtime", "-c", "pass"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return {
        line.rsplit("|", 1)[1].strip()
        for line in completed.stderr.splitlines()
        if line.startswith("import time:") and not line.rstrip().endswith("package")
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=21, help="interleaved rounds (default 21)")
    parser.add_argument("--number", type=int, default=5, help="turns per round (default 5)")
    options = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        without = make_environment(Path(scratch) / "without", with_line=False)
        with_line = make_environment(Path(scratch) / "with", with_line=True)
        variants = {
            "no .pth line": (without, environment(None)),
            "line, variable unset": (with_line, environment(None)),
            f"line, {ENV_VAR}=0": (with_line, environment("0")),
            f"line, {ENV_VAR}=1": (with_line, environment("1")),
        }
        samples: dict[str, list[float]] = {name: [] for name in variants}
        names = list(variants)
        # One start of each variant in turn, the order rotated: a burst of load
        # from a neighbour then falls on all variants alike.
        for turn in range(options.repeats * options.number):
            for name in names[turn % len(names) :] + names[: turn % len(names)]:
                python, env = variants[name]
                samples[name].append(start_seconds(python, env))
        baseline_modules = imported_modules(without, environment(None))
        modules = {
            name: imported_modules(python, env) - baseline_modules
            for name, (python, env) in variants.items()
        }

    baseline = statistics.median(samples["no .pth line"])
    starts = options.repeats * options.number
    print(f"python {sys.version.split()[0]}, {starts} starts of each variant, interleaved")
    print()
    print("| `python -c pass` | median ms | vs no line | fastest ms | modules beyond no line |")
    print("|---|---:|---:|---:|---:|")
    for name, values in samples.items():
        median = statistics.median(values)
        print(
            f"| {name} | {median * 1e3:.1f} | {(median - baseline) * 1e3:+.1f} ms "
            f"| {min(values) * 1e3:.1f} | {len(modules[name])} |"
        )

    os.environ.pop(ENV_VAR, None)
    code = compile(PTH_LINE, "single_instance_build.pth", "exec")
    number = 200_000
    seconds = min(timeit.repeat(lambda: exec(code, {}), number=number, repeat=5)) / number
    print()
    print(f"the line alone, variable unset, executed in this process: {seconds * 1e9:.0f} ns")


if __name__ == "__main__":
    main()
