"""Under the real ``python -m torch.distributed.launch``, which puts ``--local-rank=N`` first.

That launcher (kept in torch 2.13, deprecated) starts ``python -u -m
single_instance_build.run --local-rank=N SCRIPT ARGS...``; DeepSpeed's starts the
same with ``--local_rank=N``. The program must get the option where plain python
under the same launcher gets it, and run guarded. Under CI a missing torch or
transformers is an error, never a skip.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import textwrap
from pathlib import Path
from typing import Any

import pytest

from torchrun_launcher import LAUNCH_TIMEOUT, Launcher, free_port, require

pytestmark = pytest.mark.integration

# Each rank writes what it was started with, and whether the guard is in place.
REPORTER = textwrap.dedent(
    """\
    import json, os, sys
    import transformers.modeling_utils
    from single_instance_build import _transformers
    status = _transformers.status()
    report = {
        "argv": sys.argv,
        "name": __name__,
        "guarded": list(status.names),
        "installed": status.installed,
        "world_size": os.environ.get("WORLD_SIZE"),
        "local_rank": os.environ.get("LOCAL_RANK"),
    }
    folder = os.environ["REPORT_DIR"]
    with open(os.path.join(folder, f"rank{os.environ['RANK']}.json"), "w") as file:
        json.dump(report, file)
    """
)


@pytest.fixture(scope="module")
def launcher(tmp_path_factory: pytest.TempPathFactory) -> Launcher:
    require("torch", "transformers")
    return Launcher(tmp_path_factory.mktemp("local-rank"))


@pytest.fixture(scope="module")
def program(launcher: Launcher) -> Path:
    """A script ``job.py`` and a module ``pkg.job``, the same reporter."""
    root = launcher.scratch / "program"
    (root / "pkg").mkdir(parents=True)
    (root / "job.py").write_text(REPORTER)
    (root / "pkg" / "__init__.py").write_text("")
    (root / "pkg" / "job.py").write_text(REPORTER)
    return root


def legacy_launch(launcher: Launcher, cwd: Path, name: str, *args: str) -> list[dict[str, Any]]:
    """``python -m torch.distributed.launch --nproc_per_node=2 ARGS`` in *cwd*: the 2 reports."""
    report_dir = launcher.scratch / f"reports-{name}"
    report_dir.mkdir()
    command = [
        launcher.python, "-m", "torch.distributed.launch", "--nproc_per_node=2",
        "--master_addr=127.0.0.1", f"--master_port={free_port()}", *args,
    ]  # fmt: skip
    env = {**launcher.env, "REPORT_DIR": str(report_dir)}
    process = subprocess.Popen(
        command,
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output = process.communicate(timeout=LAUNCH_TIMEOUT)[0]
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    assert process.returncode == 0, output[-4000:]
    reports = [json.loads(path.read_text()) for path in sorted(report_dir.glob("rank*.json"))]
    assert len(reports) == 2, output[-4000:]
    return reports


LAUNCHER = ("-m", "single_instance_build.run")


class TestTorchDistributedLaunch:
    @pytest.mark.parametrize(
        "target", [["job.py", "--flag", "x"], ["-m", "pkg.job", "--flag"]], ids=["script", "module"]
    )
    def test_program_gets_local_rank_where_plain_python_does_and_runs_guarded(
        self, launcher: Launcher, program: Path, target: list[str]
    ) -> None:
        name = "-".join(target[:2]).replace(".", "-")
        plain = legacy_launch(launcher, program, f"plain{name}", *target)
        launched = legacy_launch(launcher, program, f"launched{name}", *LAUNCHER, *target)
        for rank, (before, after) in enumerate(zip(plain, launched, strict=True)):
            assert after["argv"] == before["argv"]
            assert after["argv"][1] == f"--local-rank={rank}"  # what the launcher inserted
            assert after["name"] == before["name"] == "__main__"
            assert before["installed"] is False
            assert before["guarded"] == []
            assert after["installed"] is True
            assert after["guarded"] == ["WORLD_SIZE"]
            assert after["world_size"] == before["world_size"] == "2"
            assert after["local_rank"] == before["local_rank"] == str(rank)
