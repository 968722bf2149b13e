"""Guarding Transformers at the source, under real torchrun launches on the CPU.

An unmodified script, fixed from outside (``SINGLE_INSTANCE_BUILD=1``, ``python -m
single_instance_build.run``); a VLMEvalKit-shaped class that plans devices from
``WORLD_SIZE``; an explicit ``tp_plan``; DDP fine-tuning; and the zero-edit example.
Each runs with Transformers 4.53.3, whose plain launches shard the model (the
controls here show it). Under CI a missing dependency is an error, never a skip.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from torchrun_launcher import WORKER, Launch, Launcher, require, run_python

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
UNMODIFIED = Path(__file__).with_name("unmodified_load.py")
SOURCE_WORKER = Path(__file__).with_name("source_worker.py")
DDP_EXAMPLE = ROOT / "examples" / "ddp_finetune.py"
EVAL_EXAMPLE = ROOT / "examples" / "unmodified_eval.py"
PARAMETERS = 21  # of the tiny Llama: embeddings, 2 layers of 9, final norm, lm_head
DDP_ERROR = "RuntimeError: aten.cat.default got mixed torch.Tensor and DTensor"


@pytest.fixture(scope="module")
def launcher(tmp_path_factory: pytest.TempPathFactory) -> Launcher:
    require("torch", "transformers", "accelerate")
    return Launcher(tmp_path_factory.mktemp("source-guard"))


@pytest.fixture(scope="module")
def tiny_model(launcher: Launcher) -> Path:
    model_dir = launcher.scratch / "tiny-llama"
    run_python([str(WORKER), "make-model", str(model_dir)], launcher.env)
    return model_dir


def reports_of(launcher: Launcher, name: str, *args: str) -> Launch:
    """Launch ``ARGS... REPORT_DIR`` on 2 ranks; both must exit 0 and report."""
    report_dir = launcher.scratch / f"reports-{name}"
    report_dir.mkdir()
    launch = launcher.torchrun(*args, str(report_dir), report_dir=report_dir)
    assert launch.returncodes == [0], launch.output[-4000:]
    assert [report["rank"] for report in launch.reports] == [0, 1], launch.output[-4000:]
    return launch


def assert_full_exact_copy(measured: dict[str, Any]) -> None:
    assert measured["parameters"] == PARAMETERS, measured
    assert measured["dtensor_parameters"] == 0, measured
    assert measured["q_proj_local_shape"] == [64, 64], measured
    assert measured["max_abs_logit_diff"] == 0.0, measured


def assert_sharded(reports: list[dict[str, Any]]) -> None:
    for measured in reports:
        assert measured["dtensor_parameters"] == PARAMETERS, measured
        assert measured["q_proj_local_shape"] == [32, 64], measured
    assert max(measured["max_abs_logit_diff"] for measured in reports) > 1e-2


@pytest.fixture(scope="module")
def plain(launcher: Launcher, tiny_model: Path) -> Launch:
    """The unmodified script under plain torchrun: the control."""
    return reports_of(launcher, "plain", str(UNMODIFIED), str(tiny_model))


@pytest.fixture(scope="module")
def reports(launcher: Launcher, tiny_model: Path) -> list[dict[str, Any]]:
    """The three cases of ``source_worker.py``, from one launch."""
    return reports_of(launcher, "source", str(SOURCE_WORKER), str(tiny_model)).reports


class TestUnmodifiedScript:
    def test_unmodified_scripts_never_import_the_package(self) -> None:
        for script in (UNMODIFIED, EVAL_EXAMPLE):
            code = script.read_text(encoding="utf-8")
            assert not re.search(r"^\s*(import|from)\s+single_instance_build", code, re.M)
            assert "__import__" not in code
            assert "importlib" not in code

    def test_plain_launch_shards_the_model(self, plain: Launch) -> None:
        """The control: if this fails, the launch no longer shows the bug and proves nothing."""
        assert_sharded(plain.reports)
        assert all(report["package_imported"] is False for report in plain.reports)

    def test_environment_variable_gives_full_exact_copy_on_every_rank(
        self, launcher: Launcher, tiny_model: Path
    ) -> None:
        activated = Launcher(launcher.scratch)
        activated.env["SINGLE_INSTANCE_BUILD"] = "1"
        launch = reports_of(activated, "environment", str(UNMODIFIED), str(tiny_model))
        for report in launch.reports:
            assert_full_exact_copy(report)
            assert report["package_imported"] is True  # by the .pth line, not the script
            assert report["world_size_before"] == report["world_size_after"] == "2"

    def test_zero_edit_launcher_gives_full_exact_copy_on_every_rank(
        self, launcher: Launcher, tiny_model: Path, plain: Launch
    ) -> None:
        launch = reports_of(
            launcher, "run", "-m", "single_instance_build.run", str(UNMODIFIED), str(tiny_model)
        )
        for report, plain_report in zip(launch.reports, plain.reports, strict=True):
            assert_full_exact_copy(report)
            assert report["world_size_before"] == report["world_size_after"] == "2"
            for key in ("argv", "file", "path0"):  # as plain python sets them
                expected = plain_report[key]
                if key == "argv":
                    expected = [*expected[:-1], report["argv"][-1]]  # its own report folder
                assert report[key] == expected, key


class TestVLMEvalKitShapedClass:
    """A class whose ``__init__`` plans devices from ``WORLD_SIZE`` and then loads."""

    def test_source_guard_lets_constructor_read_world_size_and_loads_full_copy(
        self, reports: list[dict[str, Any]]
    ) -> None:
        for report in reports:
            assert report["source"]["world_size_read"] == 2
            assert report["source"]["devices"] == [report["rank"]]
            assert_full_exact_copy(report["source"])

    def test_class_decorator_hides_world_size_from_whole_constructor(
        self, reports: list[dict[str, Any]]
    ) -> None:
        """The documented trade-off: a full copy, but the device plan reads world size 1."""
        for report in reports:
            assert report["decorated"]["world_size_read"] == 1
            assert report["decorated"]["devices"] == [report["rank"], report["rank"] + 1]
            assert_full_exact_copy(report["decorated"])

    def test_explicit_tp_plan_still_shards_under_the_guard(
        self, reports: list[dict[str, Any]]
    ) -> None:
        assert_sharded([report["tp_plan"] for report in reports])
        assert all(report["world_size_after"] == "2" for report in reports)


@pytest.fixture(scope="module")
def guarded(launcher: Launcher) -> Launch:
    """One guarded launch of the DDP example, for the tests that read it."""
    return launcher.torchrun(str(DDP_EXAMPLE))


class TestDDPFineTuningExample:
    """Transformers issue 38771: DDP on a model loaded with ``device_map="auto"``."""

    def test_guarded_load_trains_as_data_parallel(self, guarded: Launch) -> None:
        launch = guarded
        assert launch.returncodes == [0], launch.output[-4000:]
        for rank in (0, 1):
            trained = rf"rank {rank}: full copy, loss [\d.]+ -> [\d.]+ in 5 steps"
            assert re.search(trained, launch.output), launch.output[-4000:]
        assert "OK: trained as data parallel; the 2 replicas are identical" in launch.output

    def test_guarded_run_prints_no_warning(self, guarded: Launch) -> None:
        """Reading the loss with float() on a tensor that requires grad warned on every rank."""
        assert guarded.returncodes == [0], guarded.output[-4000:]
        assert "Warning" not in guarded.output, guarded.output[-4000:]

    def test_without_guard_ddp_fails_on_every_rank(self, launcher: Launcher) -> None:
        launch = launcher.torchrun(str(DDP_EXAMPLE), "--no-guard")
        assert launch.returncodes != [0]
        for rank in (0, 1):
            sharded = f"rank {rank}: SHARDED (21 of 21 parameters are DTensors)"
            assert f"{sharded}, DDP failed: {DDP_ERROR}" in launch.output, launch.output[-4000:]
        assert "FAILED: " in launch.output


class TestZeroEditExample:
    COMMAND = "torchrun --nproc_per_node=2 -m single_instance_build.run examples/unmodified_eval.py"

    def test_readme_gives_the_command(self) -> None:
        assert self.COMMAND in (ROOT / "README.md").read_text(encoding="utf-8")

    def test_zero_edit_launch_scores_full_marks(self, launcher: Launcher) -> None:
        launch = launcher.torchrun("-m", "single_instance_build.run", str(EVAL_EXAMPLE))
        assert launch.returncodes == [0], launch.output[-4000:]
        assert "rank 0: full copy, 12/12 correct" in launch.output
        assert "rank 1: full copy, 12/12 correct" in launch.output
        assert "accuracy: 24/24 = 100.0%" in launch.output

    def test_plain_launch_shows_the_failure_and_exits_non_zero(self, launcher: Launcher) -> None:
        launch = launcher.torchrun(str(EVAL_EXAMPLE))
        assert launch.returncodes != [0]
        assert "SHARDED (21 of 21 parameters are DTensors)" in launch.output
        assert "FAILED: the model was sharded across the processes" in launch.output
