"""Under a real torchrun launch, guarded builds give every rank a full, exact model copy.

Transformers 4.53.3 turns ``from_pretrained(..., device_map="auto")`` into tensor
parallelism when ``WORLD_SIZE`` is set; the control shows that this happens here.
Under CI (``CI=true``) a missing torch, transformers or accelerate is an error,
never a skip: these tests are the proof this project exists for.
"""

from __future__ import annotations

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
    EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "data_parallel_eval.py"

    def test_guarded_evaluation_scores_full_marks(self, launcher: Launcher) -> None:
        launch = launcher.torchrun(
            str(self.EXAMPLE), f"--model-dir={launcher.scratch / 'example-model'}"
        )
        assert launch.returncodes == [0], launch.output[-4000:]
        assert "rank 0: full copy, 12/12 correct" in launch.output
        assert "rank 1: full copy, 12/12 correct" in launch.output
        assert "accuracy: 24/24 = 100.0%" in launch.output

    def test_without_guard_shows_the_failure_and_exits_non_zero(self, launcher: Launcher) -> None:
        launch = launcher.torchrun(
            str(self.EXAMPLE), "--no-guard", f"--model-dir={launcher.scratch / 'example-model'}"
        )
        assert launch.returncodes != [0]
        assert "SHARDED (21 of 21 parameters are DTensors)" in launch.output
        assert "FAILED: the model was sharded" in launch.output
