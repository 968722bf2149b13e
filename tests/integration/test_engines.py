"""The training engines people launch with, unguarded and guarded, with the real packages.

Marker ``engines``, deselected by default: ``python -m pytest -m engines`` runs it
(``.ci/run`` does). TRL, PEFT and DeepSpeed get a venv of their own, made once per
session: the same ``torch==2.13.0`` and ``transformers==4.53.3``, ``accelerate``,
``trl``, ``peft``, ``deepspeed`` (built without its ops and without build isolation,
against that torch) and this project's wheel. TRL 0.20.0 is the last release that
allows Transformers 4.53.3.

Each engine runs ``engine_worker.py`` on 2 CPU processes (gloo) with the tiny Llama of
the other integration tests, its tokenizer saved beside it, and data made in memory.
Unguarded, each rank's model is sharded (21 of 21 parameters are DTensors) and DDP
raises ``mixed torch.Tensor and DTensor``; the same launch then trains with
``WORLD_SIZE`` popped by hand around the load, for the reference. Guarded the way
docs/engines.md tells users for that engine, every rank trains a full copy and logs
the reference's very numbers.

A launch is judged by the reports its ranks write once their work is done: gloo on
torch 2.13 aborts about a third of runs at interpreter exit, afterwards, with
``terminate called without an active exception``; such a run passes, any other
non-zero status fails.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from torchrun_launcher import (
    WORKER,
    Launch,
    Launcher,
    free_port,
    require,
    run_python,
)
from venvs import make_venv, pip_install, project_wheel, run_checked

pytestmark = [pytest.mark.integration, pytest.mark.engines]

ENGINE_WORKER = Path(__file__).with_name("engine_worker.py")
LM_EVAL_WORKER = Path(__file__).with_name("lm_eval_worker.py")  # its make-tokenizer
PACKAGES = (
    "torch==2.13.0",  # never another: this CPU wheel is on disk, any other is gigabytes
    "transformers==4.53.3",  # the last release that switches to tensor parallelism
    "accelerate==1.15.0",
    "trl==0.20.0",  # the last TRL that allows Transformers 4.53.3 (0.21 needs 4.55)
    "peft==0.21.2",
)
# An sdist whose build imports torch: built against the venv's torch, without its ops.
DEEPSPEED = "deepspeed==0.19.8"
PARAMETERS = 21  # of the tiny Llama: embeddings, 2 layers of 9, final norm, lm_head
DDP_ERROR = "mixed torch.Tensor and DTensor"
PEFT_ERROR = "The base model is tensor-parallel sharded"
ABORT_AT_EXIT = "terminate called without an active exception"


@pytest.fixture(scope="session")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    require("torch", "transformers", "accelerate")
    return tmp_path_factory.mktemp("engines")


@pytest.fixture(scope="session")
def python(scratch: Path) -> Iterator[str]:
    """The interpreter of the engines' venv, removed at the end of the session."""
    wheel = project_wheel(scratch / "wheels")
    venv = scratch / "venv"
    try:
        python = make_venv(venv, [*PACKAGES, "setuptools", "wheel", str(wheel)])
        # DeepSpeed's setup.py imports torch: the venv's, with no op built. torch is
        # named again so that pip keeps it.
        env = {**Launcher(scratch).env, "DS_BUILD_OPS": "0"}
        pip_install(python, [DEEPSPEED, PACKAGES[0]], "--no-build-isolation", env=env)
        version = "import torch; assert torch.__version__ == '2.13.0+cpu', torch.__version__"
        run_checked([python, "-c", version])
        yield python
    finally:
        shutil.rmtree(venv, ignore_errors=True)


@pytest.fixture(scope="session")
def launcher(scratch: Path, python: str) -> Launcher:
    launcher = Launcher(scratch, python=python)
    launcher.env.update(
        HF_DATASETS_OFFLINE="1",
        HF_HOME=str(scratch / "hf-home"),  # no accelerate config of the user's
    )
    return launcher


@pytest.fixture(scope="session")
def model_dir(launcher: Launcher) -> Path:
    """The tiny Llama of the other integration tests, with a word-level tokenizer beside it."""
    model_dir = launcher.scratch / "tiny-llama"
    run_python([str(WORKER), "make-model", str(model_dir)], launcher.env)
    make_tokenizer = [launcher.python, str(LM_EVAL_WORKER), "make-tokenizer", str(model_dir)]
    run_checked(make_tokenizer, env=launcher.env)
    return model_dir


def judged(launch: Launch) -> list[dict[str, Any]]:
    """The ranks' reports; a non-zero status only from gloo's abort at exit, after them."""
    assert [report["rank"] for report in launch.reports] == [0, 1], launch.output[-4000:]
    if any(launch.returncodes):
        assert ABORT_AT_EXIT in launch.output, launch.output[-4000:]
    return launch.reports


class Engine:
    """Starts a job of engine_worker.py under one engine's launch line."""

    def __init__(self, launcher: Launcher, model_dir: Path) -> None:
        self.launcher = launcher
        self.model_dir = model_dir

    def bin(self, name: str) -> str:
        return str(Path(self.launcher.python).with_name(name))

    def launch(
        self, name: str, line: list[str], job: str, *options: str, **env: str
    ) -> list[dict[str, Any]]:
        """Run ``LINE engine_worker.py JOB MODEL_DIR REPORT_DIR OPTIONS``: the reports."""
        report_dir = self.launcher.scratch / f"reports-{name}"
        report_dir.mkdir()
        launcher = Launcher(self.launcher.scratch, python=self.launcher.python)
        launcher.env.update(self.launcher.env, **env)
        worker = [str(ENGINE_WORKER), job, str(self.model_dir), str(report_dir), *options]
        return judged(launcher.run_together([[*line, *worker]], report_dir))

    def torchrun(self, *options: str) -> list[str]:
        port = f"--master_port={free_port()}"
        return [
            self.launcher.python,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node=2",
            port,
            *options,
        ]

    def accelerate(self, *options: str) -> list[str]:
        return [
            self.bin("accelerate"), "launch", "--multi_gpu", "--num_processes", "2",
            "--main_process_port", str(free_port()), *options,
        ]  # fmt: skip

    def deepspeed(self, *options: str) -> list[str]:
        port = str(free_port())
        return [self.bin("deepspeed"), "--num_gpus", "2", "--master_port", port, *options]

    def distributed_launch(self, *options: str) -> list[str]:
        return [
            self.launcher.python, "-m", "torch.distributed.launch", "--nproc_per_node=2",
            f"--master_port={free_port()}", *options,
        ]  # fmt: skip


LAUNCHER = ("-m", "single_instance_build.run")


@pytest.fixture(scope="session")
def engine(launcher: Launcher, model_dir: Path) -> Engine:
    return Engine(launcher, model_dir)


def assert_unguarded_fails_on_a_sharded_model(
    reports: list[dict[str, Any]], *runs: str, error: str = DDP_ERROR
) -> None:
    for report in reports:
        assert report["package_imported_at_end"] is False, report  # no guard anywhere
        for name in runs:
            run = report["runs"][name]
            assert run["dtensor_parameters"] == PARAMETERS, (name, report)
            assert error in run["error"], (name, report)
            assert "steps" not in run


def assert_same_as_the_reference(
    reports: list[dict[str, Any]], references: list[dict[str, Any]], *runs: str
) -> None:
    """Every rank trained a full copy, as the load with WORLD_SIZE popped by hand did."""
    for report, reference in zip(reports, references, strict=True):
        assert report["world_size"] == report["world_size_after"] == "2", report
        assert report["package_imported_at_end"] is True, report
        for name in runs:
            expected, measured = reference["reference"][name], report["runs"][name]
            assert "error" not in expected, (name, reference)
            assert expected["dtensor_parameters"] == 0, (name, reference)
            assert "error" not in measured, (name, report)
            assert measured["dtensor_parameters"] == 0, (name, report)
            assert measured["parameters"] == expected["parameters"], (name, report)
            assert len(measured["steps"]) == 3, (name, report)
            assert measured["steps"] == expected["steps"], (name, report)


@pytest.fixture(scope="session")
def trainer_unguarded(engine: Engine) -> list[dict[str, Any]]:
    return engine.launch("trainer-unguarded", engine.torchrun(), "trainer", "--reference")


@pytest.fixture(scope="session")
def peft_unguarded(engine: Engine) -> list[dict[str, Any]]:
    return engine.launch("peft-unguarded", engine.torchrun(), "peft", "--reference")


@pytest.fixture(scope="session")
def trl_unguarded(engine: Engine) -> list[dict[str, Any]]:
    return engine.launch("trl-unguarded", engine.accelerate(), "trl", "--reference")


def spawn(engine: Engine, name: str, *options: str) -> list[dict[str, Any]]:
    """``python engine_worker.py spawn ...``: MASTER_PORT is the one variable the test sets."""
    line = [engine.launcher.python]
    return engine.launch(name, line, "spawn", *options, MASTER_PORT=str(free_port()))


@pytest.fixture(scope="session")
def spawn_unguarded(engine: Engine) -> list[dict[str, Any]]:
    return spawn(engine, "spawn-unguarded", "--reference")


class TestHuggingFaceTrainer:
    """``Trainer`` on a model loaded with ``device_map="auto"``, under torchrun."""

    def test_unguarded_trainer_fails_in_ddp_on_a_sharded_model(
        self, trainer_unguarded: list[dict[str, Any]]
    ) -> None:
        assert_unguarded_fails_on_a_sharded_model(trainer_unguarded, "trainer")

    def test_launcher_trains_full_copies_as_the_load_without_world_size(
        self, engine: Engine, trainer_unguarded: list[dict[str, Any]]
    ) -> None:
        reports = engine.launch("trainer-launcher", engine.torchrun(*LAUNCHER), "trainer")
        assert all(report["package_imported_at_start"] for report in reports)
        assert_same_as_the_reference(reports, trainer_unguarded, "trainer")


class TestPeftLora:
    """A LoRA adapter (``get_peft_model``) on a model loaded with ``device_map="auto"``."""

    def test_unguarded_lora_refuses_the_sharded_model(
        self, peft_unguarded: list[dict[str, Any]]
    ) -> None:
        """PEFT 0.21 finds the base model sharded before DDP would fail on it."""
        assert_unguarded_fails_on_a_sharded_model(peft_unguarded, "peft", error=PEFT_ERROR)

    def test_variable_trains_full_copies_as_the_load_without_world_size(
        self, engine: Engine, peft_unguarded: list[dict[str, Any]]
    ) -> None:
        reports = engine.launch(
            "peft-variable", engine.torchrun(), "peft", SINGLE_INSTANCE_BUILD="1"
        )
        assert all(report["package_imported_at_start"] for report in reports)  # by the .pth
        assert_same_as_the_reference(reports, peft_unguarded, "peft")


TRL_RUNS = ("sft", "grpo", "grpo_model_init_kwargs")


class TestTrl:
    """``SFTTrainer`` and ``GRPOTrainer`` under ``accelerate launch --multi_gpu`` on the CPU.

    GRPO runs twice: on a model loaded by the user with ``device_map="auto"``, and
    loading the model itself with ``model_init_kwargs={"device_map": "auto"}``.
    """

    def test_unguarded_sft_and_grpo_fail_in_ddp_on_a_sharded_model(
        self, trl_unguarded: list[dict[str, Any]]
    ) -> None:
        assert_unguarded_fails_on_a_sharded_model(trl_unguarded, *TRL_RUNS)

    def test_launcher_after_accelerate_trains_full_copies_as_without_world_size(
        self, engine: Engine, trl_unguarded: list[dict[str, Any]]
    ) -> None:
        reports = engine.launch("trl-launcher", engine.accelerate(*LAUNCHER), "trl")
        assert all(report["package_imported_at_start"] for report in reports)
        assert_same_as_the_reference(reports, trl_unguarded, *TRL_RUNS)


class TestSpawn:
    """``torch.multiprocessing.spawn`` of 2 DDP workers, ``WORLD_SIZE`` set by the script."""

    def test_unguarded_workers_fail_in_ddp_on_a_sharded_model(
        self, spawn_unguarded: list[dict[str, Any]]
    ) -> None:
        assert_unguarded_fails_on_a_sharded_model(spawn_unguarded, "spawn")

    def test_guard_call_in_each_worker_trains_full_copies_as_without_world_size(
        self, engine: Engine, spawn_unguarded: list[dict[str, Any]]
    ) -> None:
        reports = spawn(engine, "spawn-guard-call", "--guard-call")
        assert not any(report["package_imported_at_start"] for report in reports)
        assert_same_as_the_reference(reports, spawn_unguarded, "spawn")


class TestLocalRankFirst:
    """Launchers that put ``--local_rank=N`` (``--local-rank=N``) before the program's options.

    The job is the HF ``Trainer`` one; the reference is that of ``TestHuggingFaceTrainer``.
    """

    def test_deepspeed_unguarded_fails_in_ddp_on_a_sharded_model(self, engine: Engine) -> None:
        reports = engine.launch("deepspeed-unguarded", engine.deepspeed(), "trainer")
        assert [report["argv"][0] for report in reports] == ["--local_rank=0", "--local_rank=1"]
        assert_unguarded_fails_on_a_sharded_model(reports, "trainer")

    def test_deepspeed_module_launcher_gives_the_program_its_local_rank(
        self, engine: Engine, trainer_unguarded: list[dict[str, Any]]
    ) -> None:
        line = engine.deepspeed("--module", "single_instance_build.run")
        reports = engine.launch("deepspeed-launcher", line, "trainer")
        assert [report["argv"][0] for report in reports] == ["--local_rank=0", "--local_rank=1"]
        assert [report["local_rank_option"] for report in reports] == [0, 1]
        assert all(report["package_imported_at_start"] for report in reports)
        assert_same_as_the_reference(reports, trainer_unguarded, "trainer")

    def test_distributed_launch_module_launcher_gives_the_program_its_local_rank(
        self, engine: Engine, trainer_unguarded: list[dict[str, Any]]
    ) -> None:
        reports = engine.launch(
            "distributed-launch-launcher", engine.distributed_launch(*LAUNCHER), "trainer"
        )
        assert [report["argv"][0] for report in reports] == ["--local-rank=0", "--local-rank=1"]
        assert [report["local_rank_option"] for report in reports] == [0, 1]
        assert_same_as_the_reference(reports, trainer_unguarded, "trainer")
