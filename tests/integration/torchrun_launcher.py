"""Starting real torchrun launches on this machine, and reading what their ranks reported."""

from __future__ import annotations

import importlib
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

WORKER = Path(__file__).with_name("rank_worker.py")
LAUNCH_TIMEOUT = 300  # seconds; a launch takes 10-20 s on 2 cores
LAUNCHER_VARIABLES = (
    "WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "ROLE_RANK",
    "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID",
    "SINGLE_INSTANCE_BUILD",  # start-up activation: a launch is guarded only where a test asks
)  # fmt: skip


def require(*modules: str) -> None:
    """Skip without the [torch] extra, except under CI, where its absence is an error."""
    for module in modules:
        if os.environ.get("CI") == "true":
            importlib.import_module(module)  # an ImportError fails the test
        else:
            pytest.importorskip(module, reason=f"{module} is in the [torch] extra")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Launch:
    """The outcome of one or more torchrun launchers that ran together."""

    returncodes: list[int]
    output: str
    reports: list[dict[str, Any]]


class Launcher:
    """Starts torchrun on this machine with a scratch TMPDIR and a free port each time."""

    def __init__(self, scratch: Path, python: str = sys.executable) -> None:
        self.scratch = scratch
        self.python = python  # the interpreter, and so the environment, torchrun runs in
        self.env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARIABLES}
        self.env.update(
            TMPDIR=str(scratch), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1"
        )

    def torchrun(
        self, *args: str, nodes: int = 1, nproc: int = 2, report_dir: Path | None = None
    ) -> Launch:
        """Run ``torchrun ARGS`` as *nodes* launchers of *nproc* processes each.

        The launchers share one rendezvous on 127.0.0.1.
        """
        port = str(free_port())
        commands = [
            [
                self.python, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
                f"--nnodes={nodes}", f"--node_rank={node_rank}",
                "--master_addr=127.0.0.1", f"--master_port={port}", *args,
            ]
            for node_rank in range(nodes)
        ]  # fmt: skip
        return self.run_together(commands, report_dir)

    def run_together(
        self, commands: Sequence[Sequence[str]], report_dir: Path | None = None
    ) -> Launch:
        """Run *commands* (launchers of any kind) at once, each in a session of its own."""
        processes = [
            subprocess.Popen(
                command,
                env=self.env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                start_new_session=True,
            )
            for command in commands
        ]
        outputs = []
        try:
            for process in processes:
                outputs.append(process.communicate(timeout=LAUNCH_TIMEOUT)[0])
        finally:
            for process in processes:
                if process.poll() is None:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait()
        reports = []
        if report_dir is not None:
            reports = [json.loads(p.read_text()) for p in sorted(report_dir.glob("rank*.json"))]
        return Launch([p.returncode for p in processes], "\n".join(outputs), reports)

    def worker(self, mode: str, model_dir: Path, nodes: int = 1) -> Launch:
        report_dir = self.scratch / f"reports-{mode}-{nodes}"
        report_dir.mkdir()
        launch = self.torchrun(
            str(WORKER), mode, str(model_dir), str(report_dir), nodes=nodes, report_dir=report_dir
        )
        assert launch.returncodes == [0] * nodes, launch.output[-4000:]
        assert len(launch.reports) == 2 * nodes, launch.output[-4000:]
        return launch


def run_python(args: Sequence[str], env: dict[str, str]) -> None:
    subprocess.run([sys.executable, *args], env=env, check=True, timeout=LAUNCH_TIMEOUT)
