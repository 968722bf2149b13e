"""Jobs of the README's "Is my job affected?" table, unguarded and guarded, under real torchrun.

Transformers 4.53.3, torch 2.13.0 on the CPU, the tiny Llama of 21 parameters.
The scripts launched stand for user code: they never import this package, and
whatever guards them comes from outside (``SINGLE_INSTANCE_BUILD=1`` or
``python -m single_instance_build.run``). Under CI a missing dependency is an
error, never a skip.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from torchrun_launcher import WORKER, Launch, Launcher, require, run_python

pytestmark = pytest.mark.integration

ONE_RANK_WORKER = Path(__file__).with_name("one_rank_worker.py")
UNMODIFIED = Path(__file__).with_name("unmodified_load.py")
PARAMETERS = 21  # of the tiny Llama: embeddings, 2 layers of 9, final norm, lm_head
TIMEOUT_SECONDS = 10  # stands for torch's default process-group timeout, shortened
DEFAULT_GLOO_TIMEOUT_SECONDS = 30 * 60  # torch's default_pg_timeout, for gloo and the rest


@pytest.fixture(scope="module")
def launcher(tmp_path_factory: pytest.TempPathFactory) -> Launcher:
    require("torch", "transformers", "accelerate")
    return Launcher(tmp_path_factory.mktemp("affected-jobs"))


@pytest.fixture(scope="module")
def tiny_model(launcher: Launcher) -> Path:
    model_dir = launcher.scratch / "tiny-llama"
    run_python([str(WORKER), "make-model", str(model_dir)], launcher.env)
    return model_dir


def guarded_by_the_variable(launcher: Launcher) -> Launcher:
    guarded = Launcher(launcher.scratch)
    guarded.env["SINGLE_INSTANCE_BUILD"] = "1"
    return guarded


def reports_of(launcher: Launcher, name: str, *args: str, nproc: int = 2) -> list[dict[str, Any]]:
    """Launch ``ARGS... REPORT_DIR`` on *nproc* ranks; each must exit 0 and report."""
    report_dir = launcher.scratch / f"reports-{name}"
    report_dir.mkdir()
    launch: Launch = launcher.torchrun(*args, str(report_dir), nproc=nproc, report_dir=report_dir)
    assert launch.returncodes == [0], launch.output[-4000:]
    assert [report["rank"] for report in launch.reports] == list(range(nproc)), launch.output
    return launch.reports


class TestModelLoadedOnOneRank:
    """A judge or verifier model that rank 0 alone loads, the other rank loading nothing."""

    def test_unguarded_load_waits_for_the_other_ranks(
        self, launcher: Launcher, tiny_model: Path
    ) -> None:
        """Rank 0 tries to start a process group the other rank never joins, until the timeout.

        The worker shortens torch's default timeout to TIMEOUT_SECONDS: Transformers
        passes none, and no environment variable sets it. With the default, the same
        wait lasts 30 minutes, then the load fails the same way.
        """
        rank0, rank1 = reports_of(
            launcher,
            "one-rank-unguarded",
            str(ONE_RANK_WORKER),
            f"--timeout={TIMEOUT_SECONDS}",
            str(tiny_model),
        )
        assert rank0["default_pg_timeout_seconds"] == DEFAULT_GLOO_TIMEOUT_SECONDS
        assert rank1["process_group_started"] is False  # it had finished before rank 0 loaded
        assert "parameters" not in rank0, rank0  # the load never finished
        error, *causes = rank0["error"]
        assert error.startswith("OSError: We tried to initialize torch.distributed for you"), error
        # gloo waited for rank 1's address in the store until the timeout, then gave up.
        assert f"DistStoreError: wait timeout after {TIMEOUT_SECONDS * 1000}ms" in causes[0], causes

    @pytest.mark.parametrize("guard", ["variable", "launcher"])
    def test_guarded_load_finishes_without_the_other_ranks(
        self, launcher: Launcher, tiny_model: Path, guard: str
    ) -> None:
        """No timeout is shortened here: the guarded load starts no process group at all."""
        args = [str(ONE_RANK_WORKER), str(tiny_model)]
        if guard == "variable":
            rank0, rank1 = reports_of(guarded_by_the_variable(launcher), "one-rank-variable", *args)
        else:
            launch_args = ["-m", "single_instance_build.run", *args]
            rank0, rank1 = reports_of(launcher, "one-rank-launcher", *launch_args)
        assert "error" not in rank0, rank0
        assert rank0["parameters"] == PARAMETERS, rank0
        assert rank0["dtensor_parameters"] == 0, rank0
        assert rank0["process_group_started"] is False
        assert rank1["process_group_started"] is False


class TestSingleProcessLaunch:
    """``--nproc_per_node=1``: ``WORLD_SIZE=1`` is enough for Transformers to switch.

    On a GPU machine ``device_map="auto"`` should spread the model over the visible
    GPUs; unguarded, it is tensor parallel over one process instead. A CPU shows
    the switch (DTensor parameters, one shard holding everything) but not the GPUs
    left unused.
    """

    def test_unguarded_one_process_is_tensor_parallel(
        self, launcher: Launcher, tiny_model: Path
    ) -> None:
        (report,) = reports_of(
            launcher, "one-process-unguarded", str(UNMODIFIED), str(tiny_model), nproc=1
        )
        assert report["dtensor_parameters"] == PARAMETERS, report
        assert report["q_proj_local_shape"] == [64, 64]  # one shard of the whole weight
        assert report["max_abs_logit_diff"] == 0.0  # one process holds every shard
        assert report["world_size_before"] == report["world_size_after"] == "1"

    def test_guarded_one_process_builds_plain_tensors(
        self, launcher: Launcher, tiny_model: Path
    ) -> None:
        (report,) = reports_of(
            guarded_by_the_variable(launcher),
            "one-process-guarded",
            str(UNMODIFIED),
            str(tiny_model),
            nproc=1,
        )
        assert report["parameters"] == PARAMETERS, report
        assert report["dtensor_parameters"] == 0, report
        assert report["q_proj_local_shape"] == [64, 64]
        assert report["max_abs_logit_diff"] == 0.0
        assert report["package_imported"] is True  # by the .pth line, not the script
        assert report["world_size_before"] == report["world_size_after"] == "1"
