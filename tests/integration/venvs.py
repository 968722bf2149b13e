"""Venvs of their own for the integration tests whose packages are heavy or pinned apart.

The version matrix, lm-evaluation-harness, the training engines and Ray Train each
install this project's wheel, as users do, beside packages of their own.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from torchrun_launcher import LAUNCH_TIMEOUT

ROOT = Path(__file__).resolve().parents[2]
INSTALL_TIMEOUT = 900  # seconds for one pip install; 1-2 minutes on 2 idle cores
# --no-compile: byte-compiling all of torch (and ray) costs minutes on 2 cores; Python
# compiles the modules a launch imports, and only those.
PIP_INSTALL = ("-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-compile")


def run_checked(
    command: Sequence[str],
    *,
    timeout: float = LAUNCH_TIMEOUT,
    env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run *command*; if it fails, fail the test with the command and its output's tail."""
    completed = subprocess.run(
        command, capture_output=True, text=True, timeout=timeout, check=False, env=env
    )
    assert completed.returncode == 0, (command, completed.stdout[-2000:], completed.stderr[-4000:])
    return completed


def project_wheel(folder: Path) -> Path:
    """This project's wheel, built into *folder*."""
    build = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(folder), str(ROOT)]
    run_checked(build)
    (wheel,) = folder.glob("single_instance_build-*.whl")
    return wheel


def make_venv(venv: Path, packages: Sequence[str], *, timeout: float = INSTALL_TIMEOUT) -> str:
    """A new venv at *venv* with *packages* (requirements or wheel paths); its interpreter."""
    run_checked([sys.executable, "-m", "venv", str(venv)])
    python = str(venv / "bin" / "python")
    pip_install(python, packages, timeout=timeout)
    return python


def pip_install(
    python: str,
    packages: Sequence[str],
    *options: str,
    timeout: float = INSTALL_TIMEOUT,
    env: Mapping[str, str] | None = None,
) -> None:
    """Install *packages* into the environment of *python*, with pip's *options*."""
    run_checked([python, *PIP_INSTALL, *options, *packages], timeout=timeout, env=env)
