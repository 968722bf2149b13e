"""What ``SINGLE_INSTANCE_BUILD`` costs every interpreter start, unset and set, from a wheel.

Run it with ``python benchmarks/bench_startup.py`` (``--help`` for options);
``--project DIR`` measures another checkout (an older commit, say) the same way.

It builds the project's wheel and installs it, without dependencies, into a
fresh virtual environment, which reaches wrapt through a path file that names
a directory holding wrapt alone; a second fresh environment holds nothing.
It then times ``python -c pass``, one start of each variant in turn: the bare
environment, the variable unset, ``SINGLE_INSTANCE_BUILD=1`` and a mistyped
value. It also lists, from ``python -X importtime -c pass``, the modules each
variant imports beyond the bare start, and whether wrapt or Transformers is
among them.
"""

from __future__ import annotations

import argparse
import os
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


def build_wheel(project: Path, into: Path) -> Path:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(into), str(project)],
        check=True,
    )
    (wheel,) = into.glob("single_instance_build-*.whl")
    return wheel


def make_environment(root: Path, wheel: Path | None) -> Path:
    """A fresh virtual environment, with *wheel* and wrapt if given; returns its python."""
    venv.create(root, with_pip=False, symlinks=True)
    python = root / "bin" / "python"
    if wheel is not None:
        subprocess.run(
            [sys.executable, "-m", "pip", "--python", str(python), "install", "-q",
             "--no-deps", "--no-index", str(wheel)],
            check=True,
        )  # fmt: skip
        (site_packages,) = root.glob("lib/python*/site-packages")
        alone = root / "wrapt-alone"
        alone.mkdir()
        (alone / "wrapt").symlink_to(Path(wrapt.__file__).parent)
        (site_packages / "wrapt-alone.pth").write_text(f"{alone}\n")
    return python


def environment(value: str | None) -> dict[str, str]:
    drop = (ENV_VAR, "PYTHONPATH", "PYTHONDONTWRITEBYTECODE")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    if value is not None:
        env[ENV_VAR] = value
    return env


def start_seconds(python: Path, env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run([str(python), "-c", "pass"], env=env, check=True, stderr=subprocess.DEVNULL)
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
        names = list(variants)
        samples: dict[str, list[float]] = {name: [] for name in names}
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

    unset = statistics.median(samples["installed, variable unset"])
    starts = options.repeats * options.number
    print(f"{wheel.name}, python {sys.version.split()[0]}, {starts} starts of each, interleaved")
    print()
    print("| `python -c pass` | median ms | vs unset | fastest ms | modules beyond bare |")
    print("|---|---:|---:|---:|---:|")
    for name, values in samples.items():
        median = statistics.median(values)
        print(
            f"| {name} | {median * 1e3:.1f} | {median / unset:.2f}x "
            f"| {min(values) * 1e3:.1f} | {len(modules[name])} |"
        )
    print()
    for name, extra in modules.items():
        heavy = sorted(m for m in extra if m.split(".")[0] in ("wrapt", "transformers"))
        print(f"{name}: wrapt or transformers imported at start-up: {', '.join(heavy) or 'none'}")


if __name__ == "__main__":
    main()
