"""The diagnosis command under a real torchrun launch: one readable report, and no failure."""

from __future__ import annotations

import pytest

from torchrun_launcher import Launcher, require

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def launcher(tmp_path_factory: pytest.TempPathFactory) -> Launcher:
    require("torch")
    return Launcher(tmp_path_factory.mktemp("torchrun-diagnose"))


class TestDiagnosisUnderTorchrun:
    def test_two_processes_give_one_report_and_exit_0(self, launcher: Launcher) -> None:
        launch = launcher.torchrun("-m", "single_instance_build", "--transformers-version=4.53.3")
        assert launch.returncodes == [0], launch.output
        assert launch.output.count("verdict:") == 1, launch.output
        assert "under a launcher: the report of local rank 0 (rank 0) for its 2 local" in (
            launch.output
        )
        assert "verdict: THIS PROCESS IS AFFECTED" in launch.output
        # torchrun sets every variable the process group needs: no error, a sharded model
        assert "is sharded across the processes of the launch" in launch.output
        assert "raises" not in launch.output
        assert "local rank 1: the same findings" in launch.output
        assert "Traceback" not in launch.output
        assert "ChildFailedError" not in launch.output
