"""Under a real torchrun launch, guarded builds give every rank a full, exact model copy.

Transformers 4.53.3 turns ``from_pretrained(..., device_map="auto")`` into tensor
parallelism when ``WORLD_SIZE`` is set; the control shows that this happens here.
Under CI (``CI=true``) a missing torch, transformers or accelerate is an error,
never a skip: these tests are the proof this project exists for.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from torchrun_launcher import WORKER, Launch, Launcher, require, run_python

pytestmark = pytest.mark.integration

PARAMETERS = 21  # of the tiny Llama: embeddings, 2 layers of 9, final norm, lm_head


@pytest.fixture(scope="session")
def launcher(tmp_path_factory: pytest.TempPathFactory) -> Launcher:
    require("torch", "transformers", "accelerate")
    return Launcher(tmp_path_factory.mktemp("torchrun"))


@pytest.fixture(scope="session")
def tiny_model(launcher: Launcher) -> Path:
    """A tiny Llama, saved once per session by a plain single process."""
    model_dir = launcher.scratch / "tiny-llama"
    run_python([str(WORKER), "make-model", str(model_dir)], launcher.env)
    return model_dir


def assert_full_exact_copies(launch: Launch, world_size: str) -> None:
    for report in launch.reports:
        assert report["dtensor_parameters"] == 0, report
        assert report["parameters"] == PARAMETERS
        assert report["q_proj_local_shape"] == [64, 64]
        assert report["max_abs_logit_diff"] == 0.0, report
        assert report["seen"]["world_size"] is None
        assert report["seen"]["original_world_size"] == world_size
        assert report["world_size_before"] == report["world_size_after"] == world_size


class TestControl:
    def test_without_guard_model_is_sharded_and_logits_silently_wrong(
        self, launcher: Launcher, tiny_model: Path
    ) -> None:
        """If this fails, the launch no longer reproduces the bug and proves nothing."""
        launch = launcher.worker("control", tiny_model)
        for report in launch.reports:
            assert report["seen"]["world_size"] == "2"
            assert report["dtensor_parameters"] == PARAMETERS
            assert report["q_proj_local_shape"] == [32, 64]
        assert max(report["max_abs_logit_diff"] for report in launch.reports) > 1e-2


class TestGuarded:
    def test_decorated_factory_builds_full_exact_copy_on_every_rank(
        self, launcher: Launcher, tiny_model: Path
    ) -> None:
        assert_full_exact_copies(launcher.worker("decorated", tiny_model), world_size="2")

    def test_guarded_vlmevalkit_registry_builds_full_exact_copy_on_every_rank(
        self, launcher: Launcher, tiny_model: Path
    ) -> None:
        launch = launcher.worker("registry", tiny_model)
        assert_full_exact_copies(launch, world_size="2")
        assert all(report["seen"]["kwargs"] == {"max_new_tokens": 8} for report in launch.reports)

    def test_two_nodes_of_two_processes_each(self, launcher: Launcher, tiny_model: Path) -> None:
        """Two launchers with --nnodes=2 on one machine, as users run across nodes: 4 ranks."""
        launch = launcher.worker("decorated", tiny_model, nodes=2)
        assert sorted(report["rank"] for report in launch.reports) == [0, 1, 2, 3]
        assert_full_exact_copies(launch, world_size="4")


class TestDataParallelExample:
    """The example's one-line verdict and exit status in every launch shape."""

    EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "data_parallel_eval.py"

    def run_example(self, launcher: Launcher, *args: str, nproc: int = 2) -> Launch:
        model_dir = f"--model-dir={launcher.scratch / 'example-model'}"  # made once, then reused
        return launcher.torchrun(str(self.EXAMPLE), *args, model_dir, nproc=nproc)

    def test_guarded_evaluation_scores_full_marks_and_removes_its_model(
        self, launcher: Launcher
    ) -> None:
        launch = launcher.torchrun(str(self.EXAMPLE))  # the default: a new temporary folder
        assert launch.returncodes == [0], launch.output[-4000:]
        assert "rank 0: full copy, 12/12 correct" in launch.output
        assert "rank 1: full copy, 12/12 correct" in launch.output
        assert "accuracy: 24/24 = 100.0%" in launch.output
        assert "OK: every process built a full copy; WORLD_SIZE is back to 2" in launch.output
        assert not list(launcher.scratch.glob("single-instance-build-example-*"))

    def test_without_guard_shows_the_failure_and_exits_non_zero(self, launcher: Launcher) -> None:
        launch = self.run_example(launcher, "--no-guard")
        assert launch.returncodes == [1]
        assert "SHARDED (21 of 21 parameters are DTensors)" in launch.output
        assert "FAILED: the model was sharded across the processes; the scores are wrong" in (
            launch.output
        )

    def test_one_process_without_guard_is_sharded_with_right_scores_and_fails(
        self, launcher: Launcher
    ) -> None:
        """WORLD_SIZE=1 is truthy: sharded over one process, still not the full copy asked for."""
        launch = self.run_example(launcher, "--no-guard", nproc=1)
        assert launch.returncodes == [1], launch.output[-4000:]
        assert "rank 0: SHARDED (21 of 21 parameters are DTensors), 24/24 correct" in launch.output
        assert (
            "FAILED: the model was sharded (tensor parallel over 1 process), not built as one "
            "full copy per process; the scores are right only because one process holds every "
            "shard"
        ) in launch.output

    def test_one_process_with_guard_builds_the_full_copy(self, launcher: Launcher) -> None:
        """The guarded side of the one-process launch: no tensor parallelism over one process."""
        launch = self.run_example(launcher, nproc=1)
        assert launch.returncodes == [0], launch.output[-4000:]
        assert "rank 0: full copy, 24/24 correct" in launch.output
        assert "OK: every process built a full copy; WORLD_SIZE is back to 1" in launch.output

    def test_three_processes_without_guard_report_the_crash_sharding_causes(
        self, launcher: Launcher
    ) -> None:
        """4 attention heads do not divide by 3: one verdict line, not a traceback per rank."""
        launch = self.run_example(launcher, "--no-guard", nproc=3)
        assert launch.returncodes == [1], launch.output[-4000:]
        for rank in range(3):
            assert f"rank {rank}: SHARDED (21 of 21 parameters are DTensors), crashed: " in (
                launch.output
            )
        assert (
            "FAILED: the model was sharded across the processes, and the sharded model crashed "
            "on ranks 0, 1, 2: RuntimeError: shape '[1, 6, -1, 16]' is invalid"
        ) in launch.output
        assert f'File "{self.EXAMPLE}"' not in launch.output  # no traceback from the example

    def test_without_torchrun_says_how_to_start_it(self, launcher: Launcher) -> None:
        completed = subprocess.run(
            [sys.executable, str(self.EXAMPLE)],
            env=launcher.env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert completed.returncode == 2
        assert completed.stdout == ""
        assert completed.stderr == (
            "not started by torchrun (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT not set): this "
            "example runs several processes, so start it with\n"
            f"  torchrun --nproc_per_node=2 {self.EXAMPLE}\n"
        )
