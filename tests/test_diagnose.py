"""The diagnosis command, ``python -m single_instance_build``."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from single_instance_build._diagnose import LAUNCHER_VARIABLES, diagnose, is_affected_version, main


@pytest.fixture(autouse=True)
def _no_launcher_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in LAUNCHER_VARIABLES:
        monkeypatch.delenv(name, raising=False)


def run(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    status = main(list(argv), out)
    return status, out.getvalue()


class TestVersionBoundaries:
    @pytest.mark.parametrize(
        ("version", "affected"),
        [
            ("4.49.0", False),
            ("4.49.99", False),
            ("4.50.0", True),
            ("4.50.0rc1", True),
            ("4.50.3", True),
            ("4.51", True),
            ("4.53.3", True),
            ("4.53.99", True),
            ("4.54.0.dev0", False),
            ("4.54.0", False),
            ("4.57.1", False),
            ("5.0.0", False),
            ("3.5.1", False),
            ("v4.52.0", True),
        ],
    )
    def test_affected_exactly_from_4_50_0_to_before_4_54_0(
        self, version: str, affected: bool
    ) -> None:
        assert is_affected_version(version) is affected

    @pytest.mark.parametrize("version", ["main", "", "four"])
    def test_unreadable_version_is_unknown(self, version: str) -> None:
        assert is_affected_version(version) is None


class TestExitStatus:
    def test_affected_version_with_world_size_is_affected_now(self) -> None:
        os.environ["WORLD_SIZE"] = "2"
        status, text = run("--transformers-version", "4.53.3")
        assert status == 1
        assert "THIS PROCESS IS AFFECTED" in text
        assert "@single_instance_build" in text

    def test_affected_version_without_launcher_warns_about_torchrun(self) -> None:
        status, text = run("--transformers-version", "4.50.0")
        assert status == 3
        assert "processes started by torchrun will be" in text

    @pytest.mark.parametrize("version", ["4.49.0", "4.54.0", "5.1.0"])
    def test_unaffected_version_is_fine_even_under_a_launcher(self, version: str) -> None:
        os.environ["WORLD_SIZE"] = "8"
        status, text = run("--transformers-version", version)
        assert status == 0
        assert "not affected" in text

    def test_world_size_zero_does_not_switch(self) -> None:
        os.environ["WORLD_SIZE"] = "0"
        assert run("--transformers-version", "4.53.3")[0] == 3

    @pytest.mark.parametrize("value", ["", "two"])
    def test_non_integer_world_size_is_reported_as_a_failure(self, value: str) -> None:
        os.environ["WORLD_SIZE"] = value
        status, text = run("--transformers-version", "4.53.3")
        assert status == 1
        assert "not an integer" in text

    def test_installed_version_is_read_without_importing_transformers(self) -> None:
        code = (
            "import sys; from single_instance_build._diagnose import diagnose; d = diagnose(); "
            "print(d.transformers_version, 'transformers' in sys.modules, 'torch' in sys.modules)"
        )
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        ).stdout.split()
        assert out[1:] == ["False", "False"]
        assert out[0] == str(diagnose().transformers_version)

    def test_usage_error_exits_2(self) -> None:
        with pytest.raises(SystemExit) as info:
            main(["--no-such-option"], io.StringIO())
        assert info.value.code == 2


class TestReport:
    def test_names_launcher_variables_never_values(self) -> None:
        os.environ.update(WORLD_SIZE="2", RANK="1", MASTER_ADDR="secret-host.internal")
        os.environ["MASTER_PORT"] = "31337"
        _, text = run("--transformers-version", "4.53.3")
        assert "WORLD_SIZE, RANK, MASTER_ADDR, MASTER_PORT" in text
        assert "secret-host" not in text
        assert "31337" not in text

    def test_says_when_transformers_is_missing(self, monkeypatch: pytest.MonkeyPatch) -> None:
        def not_installed(name: str) -> str:
            raise metadata.PackageNotFoundError(name)

        monkeypatch.setattr(metadata, "version", not_installed)
        os.environ["WORLD_SIZE"] = "2"
        status, text = run()
        assert status == 0
        assert "transformers: not installed" in text

    def test_help_explains_the_exit_status(self) -> None:
        completed = subprocess.run(
            [sys.executable, "-m", "single_instance_build", "--help"],
            capture_output=True,
            text=True,
            check=True,
        )
        assert "exit status: 0 not affected; 1 this process is affected" in completed.stdout


class TestEntryPoints:
    def test_python_dash_m_reports_and_exits_with_the_status(self) -> None:
        env = {**os.environ, "WORLD_SIZE": "2"}
        completed = subprocess.run(
            [sys.executable, "-m", "single_instance_build", "--transformers-version", "4.52.0"],
            capture_output=True,
            text=True,
            env=env,
        )
        assert completed.returncode == 1
        assert "launcher variables set in this process: WORLD_SIZE" in completed.stdout

    def test_console_script_is_installed(self) -> None:
        script = shutil.which("single-instance-build", path=str(Path(sys.executable).parent))
        assert script is not None
        completed = subprocess.run(
            [script, "--transformers-version", "4.54.0"], capture_output=True, text=True
        )
        assert completed.returncode == 0
        assert "not affected" in completed.stdout
