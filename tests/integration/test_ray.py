"""Ray Train ``TorchTrainer`` with 2 CPU workers, unguarded and guarded, on two kinds of cluster.

Marker ``ray``, deselected by default: ``python -m pytest -m ray`` runs it (``.ci/run``
does). Ray Train gets a venv of its own, made once per session: ``ray[train]==2.60.0``,
the same ``torch==2.13.0`` and ``transformers==4.53.3``, and this project's wheel.
tests/integration/ray_train_job.py is the driver; each worker loads the tiny Llama
with ``device_map="auto"`` and a reference with ``WORLD_SIZE`` popped by hand, and
trains both under DDP.

- A cluster that the driver's ``ray.init`` starts (the raylet takes the driver's
  environment): unguarded, then with ``SINGLE_INSTANCE_BUILD=1`` in the driver.
- A ``ray start --head`` cluster that the test starts without the variable, as an
  existing cluster is: unguarded; with ``runtime_env=ray_runtime_env()``; and with
  only ``SINGLE_INSTANCE_BUILD=1`` in the driver, which its ``ray.init`` carries.

Both are sized for 2 cores (2 CPUs, an 80 MB object store, no dashboard) on free
ports, under a short temp dir of their own (Ray's socket paths must stay under
107 bytes). Every process a test starts is stopped by its process id, never by
name: each cluster's processes carry a marker variable of its own.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from torchrun_launcher import LAUNCHER_VARIABLES, free_port
from venvs import make_venv, project_wheel, run_checked

pytestmark = [pytest.mark.integration, pytest.mark.ray]

JOB = Path(__file__).with_name("ray_train_job.py")
PACKAGES = (
    "torch==2.13.0",  # never another: this CPU wheel is on disk, any other is gigabytes
    "transformers==4.53.3",  # the last release that switches to tensor parallelism
    "accelerate==1.15.0",  # device_map needs it
    "ray[train]==2.60.0",
)
PARAMETERS = 21  # of the tiny Llama
TIMEOUT = 900  # seconds for one job; 1-3 minutes on 2 busy cores
DDP_ERROR = "mixed torch.Tensor and DTensor"


@pytest.fixture(scope="session")
def scratch() -> Iterator[Path]:
    """A short folder of the session's own: Ray's socket paths are built under it."""
    path = Path(tempfile.mkdtemp(prefix="ray", dir=os.environ.get("TMPDIR")))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def python(scratch: Path) -> str:
    """The interpreter of the Ray venv, removed with the scratch folder."""
    wheel = project_wheel(scratch / "wheels")
    python = make_venv(scratch / "venv", [*PACKAGES, str(wheel)])
    versions = run_checked(
        [python, "-c", "import torch, ray; print(torch.__version__, ray.__version__)"]
    )
    assert versions.stdout.split() == ["2.13.0+cpu", "2.60.0"], versions.stdout
    return python


@pytest.fixture(scope="session")
def env(scratch: Path) -> dict[str, str]:
    """The environment of every driver and head: offline, no launcher variables, no switch."""
    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARIABLES}
    (scratch / "home").mkdir()
    env.update(
        TMPDIR=str(scratch), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1",
        RAY_USAGE_STATS_ENABLED="0", RAY_JOB_TEMP_DIR=str(scratch / "local"),
        # Ray keeps an auth token in ~/.ray, shared by every cluster of the user: a token
        # that a local ray.init made there locks drivers out of a head without one.
        HOME=str(scratch / "home"), RAY_AUTH_MODE="disabled",
    )  # fmt: skip
    env.pop("RAY_ADDRESS", None)
    return env


@pytest.fixture(scope="session")
def model_dir(python: str, scratch: Path, env: dict[str, str]) -> Path:
    model_dir = scratch / "tiny-llama"
    run_checked([python, str(JOB), "make-model", str(model_dir)], env=env, timeout=TIMEOUT)
    return model_dir


# Every process of a cluster the test starts carries this variable, with a value of
# its own per cluster, in the environment it started with: the workers too, whose
# command line Ray rewrites (ray::RayTrainWorker). That is how teardown finds them.
MARKER = "SINGLE_INSTANCE_BUILD_TEST_RAY_CLUSTER"


def marked(value: str) -> set[int]:
    """The ids of the processes started with ``MARKER=value``, read from /proc."""
    needle = f"{MARKER}={value}".encode()
    found = set()
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if needle in environ.read_bytes().split(b"\0"):
                found.add(int(environ.parent.name))
        except OSError:  # gone meanwhile, or not ours to read
            continue
    return found


def stop(value: str) -> None:
    """SIGKILL, by id, every process still running with ``MARKER=value``."""
    for pid in marked(value):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


HEAD_ATTEMPTS = 3  # a raylet gives its agents 15 s to start: too few on 2 cores busy elsewhere


def start_head(python: str, scratch: Path, env: dict[str, str], attempt: int) -> tuple[Any, str]:
    """``ray start --head --block``, sized for 2 cores on free ports: the process and address."""
    temp_dir = scratch / f"head{attempt}"
    temp_dir.mkdir()
    port = free_port()
    ports = {
        name: str(free_port())
        for name in (
            "node-manager-port", "object-manager-port", "dashboard-port",
            "dashboard-agent-listen-port", "dashboard-agent-grpc-port", "metrics-export-port",
            "runtime-env-agent-port",
        )
    }  # fmt: skip
    command = [
        str(Path(python).with_name("ray")), "start", "--head", "--block",
        "--node-ip-address=127.0.0.1", f"--port={port}", "--num-cpus=2",
        f"--object-store-memory={80 * 1024**2}", "--include-dashboard=false",
        "--disable-usage-stats", f"--temp-dir={temp_dir}",
        *(f"--{name}={value}" for name, value in ports.items()),
    ]  # fmt: skip
    with (temp_dir / "head.log").open("w") as log:
        process = subprocess.Popen(
            command,
            env={**env, MARKER: f"{scratch.name}-head"},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return process, f"127.0.0.1:{port}"


def stop_head(process: Any, scratch: Path) -> None:
    """SIGTERM to the head's process group, then SIGKILL to whatever carries its marker."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    time.sleep(5)  # the raylet's workers see it gone and exit on their own
    stop(f"{scratch.name}-head")


@pytest.fixture(scope="session")
def head(python: str, scratch: Path, env: dict[str, str]) -> Iterator[str]:
    """A ``ray start --head`` of the test's own, without the switch: its address.

    Stopped by its process id, and every process left that carries its marker
    (the workers the raylet started lead process groups of their own).
    """
    for attempt in range(HEAD_ATTEMPTS):
        process, address = start_head(python, scratch, env, attempt)
        log = scratch / f"head{attempt}" / "head.log"
        try:
            deadline = time.monotonic() + 300
            while "Ray runtime started" not in log.read_text() and process.poll() is None:
                assert time.monotonic() < deadline, log.read_text()[-4000:]
                time.sleep(1)
            if process.poll() is None:
                yield address
                return
        finally:
            stop_head(process, scratch)
        print(f"ray start --head, attempt {attempt + 1}, failed: {log.read_text()[-300:]}")
    pytest.fail(f"ray start --head failed {HEAD_ATTEMPTS} times: {log.read_text()[-4000:]}")


def train(
    python: str, model_dir: Path, env: dict[str, str], address: str, way: str, **extra: str
) -> list[dict[str, Any]]:
    """Run the driver once; the workers' reports, rank 0 first."""
    report_dir = Path(tempfile.mkdtemp(prefix=f"{way}-", dir=env["TMPDIR"]))
    marker = report_dir.name  # the driver, and a cluster it starts
    started = time.monotonic()
    process = subprocess.Popen(
        [python, str(JOB), "train", str(model_dir), str(report_dir), address, way],
        env={**env, **extra, MARKER: marker},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output = process.communicate(timeout=TIMEOUT)[0]
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        stop(marker)  # what a cluster of the driver's own left behind
    print(f"ray job {address} {way} {extra}: {time.monotonic() - started:.0f} s")
    assert process.returncode == 0, output[-6000:]
    reports = [json.loads(p.read_text()) for p in sorted(report_dir.glob("rank*.json"))]
    assert [report["rank"] for report in reports] == [0, 1], output[-6000:]
    return reports


def assert_sharded(reports: list[dict[str, Any]]) -> None:
    for report in reports:
        assert report["world_size"] == "2", report
        assert report["parameters"] == PARAMETERS, report
        assert report["dtensor_parameters"] == PARAMETERS, report
        assert DDP_ERROR in report["error"], report
        assert report["reference_dtensor_parameters"] == 0, report


def assert_guarded(reports: list[dict[str, Any]]) -> None:
    for report in reports:
        assert report["world_size"] == "2", report
        assert report["parameters"] == PARAMETERS, report
        assert report["dtensor_parameters"] == 0, report
        assert "error" not in report, report
        assert report["losses"] == report["reference_losses"], report  # the very numbers
        assert report["switch_set"] is True, report
        assert report["package_imported"] is True, report
    assert reports[0]["losses"] != reports[1]["losses"]  # each rank trained on its own data


class TestLocalClusterStartedByTheDriver:
    def test_unguarded_shards_every_parameter_and_ddp_fails(
        self, python: str, model_dir: Path, env: dict[str, str]
    ) -> None:
        assert_sharded(train(python, model_dir, env, "local", "none"))

    def test_the_drivers_variable_reaches_the_workers(
        self, python: str, model_dir: Path, env: dict[str, str]
    ) -> None:
        reports = train(python, model_dir, env, "local", "none", SINGLE_INSTANCE_BUILD="1")
        assert_guarded(reports)


class TestRayStartCluster:
    """A head started without the switch, as an existing cluster is."""

    def test_unguarded_shards_every_parameter_and_ddp_fails(
        self, python: str, model_dir: Path, env: dict[str, str], head: str
    ) -> None:
        assert_sharded(train(python, model_dir, env, head, "none"))

    def test_ray_runtime_env_reaches_the_workers(
        self, python: str, model_dir: Path, env: dict[str, str], head: str
    ) -> None:
        assert_guarded(train(python, model_dir, env, head, "helper"))

    def test_the_drivers_variable_is_carried_by_its_ray_init(
        self, python: str, model_dir: Path, env: dict[str, str], head: str
    ) -> None:
        """Before this release the workers never saw it, and the model was sharded."""
        reports = train(python, model_dir, env, head, "none", SINGLE_INSTANCE_BUILD="1")
        assert_guarded(reports)
