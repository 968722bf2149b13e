"""The documentation runs: module doctests, README code blocks and the README's commands."""

from __future__ import annotations

import doctest
import importlib
import pkgutil
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

import single_instance_build
from single_instance_build._diagnose import EXIT_STATUSES, UNDER_LAUNCHER_HELP

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")


def fenced_blocks(language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", README, flags=re.MULTILINE | re.DOTALL)


def package_modules() -> list[ModuleType]:
    names = [info.name for info in pkgutil.iter_modules(single_instance_build.__path__)]
    return [single_instance_build] + [
        importlib.import_module(f"single_instance_build.{name}")
        for name in names
        if name != "__main__"
    ]


class TestDoctests:
    @pytest.mark.parametrize("module", package_modules(), ids=lambda module: module.__name__)
    def test_module_doctests_pass(self, module: ModuleType) -> None:
        result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
        assert result.failed == 0


class TestReadme:
    @pytest.mark.parametrize(
        "code", fenced_blocks("python"), ids=lambda code: code.strip().splitlines()[-1][:40]
    )
    def test_python_block_runs(self, code: str) -> None:
        completed = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
        )
        assert completed.returncode == 0, completed.stderr

    def test_ci_runs_the_readme_test_command(self) -> None:
        commands = [line for block in fenced_blocks("bash") for line in block.splitlines()]
        test_command = next(line for line in commands if "pytest" in line)
        assert test_command in (ROOT / ".ci" / "run").read_text(encoding="utf-8")

    def test_install_clones_the_project_s_own_repository(self) -> None:
        pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
        homepage = re.findall(r'^Homepage = "(.*)"$', pyproject, flags=re.MULTILINE)[0]
        install = README.split("## Install\n")[1].split("\n## ")[0]
        clone = f"git clone {homepage}.git\ncd {homepage.rsplit('/', 1)[1]}\npip install .  #"
        assert clone in install

    def test_sdist_ships_the_ci_script_this_test_reads(self) -> None:
        """The tests pass in the unpacked sdist only if it holds .ci/run."""
        pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
        section = pyproject.split("[tool.hatch.build.targets.sdist]")[1].split("\n[")[0]
        assert '".ci/run"' in section

    def test_exit_status_table_is_the_one_of_the_command(self) -> None:
        section = README.split("## Is my job affected?")[1].split("\n## ")[0]
        rows = re.findall(r"^\| (\d+) \| (.*) \|$", section, flags=re.MULTILINE)
        assert {int(status): meaning for status, meaning in rows} == EXIT_STATUSES
        assert " ".join(UNDER_LAUNCHER_HELP.split()) in " ".join(section.split())

    @pytest.mark.parametrize(
        ("script", "expected"),
        [
            (
                "quickstart.py",
                ["factory saw WORLD_SIZE=None", "afterwards:            WORLD_SIZE=2"],
            ),
            (
                "vlm_registry.py",
                [
                    "guard_registry(supported_VLM): 3 of 3 entries guarded",
                    "building QwenVL('/models/local-qwen', {}) in process main",
                    "QwenVL('/models/local-qwen', {'temperature': 0})",
                    "copy.copy(supported_VLM): 4 of 4 entries guarded, the same entry objects: "
                    "True",
                    "copy.deepcopy(supported_VLM): 4 of 4 entries guarded, new entry objects: True",
                    "pickle.loads(pickle.dumps(entry)): a new object True, guarded for WORLD_SIZE "
                    "True",
                    "building LLaVA('liuhaotian/llava-tiny', {}) in process spawned worker: "
                    "WORLD_SIZE=None, launcher's WORLD_SIZE=2",
                    "the spawned worker saw WORLD_SIZE=None while building (launcher's 2), and "
                    "WORLD_SIZE=2 afterwards",
                    "afterwards: WORLD_SIZE=2",
                ],
            ),
        ],
    )
    def test_torch_free_example_runs(self, script: str, expected: list[str]) -> None:
        completed = subprocess.run(
            [sys.executable, str(ROOT / "examples" / script)],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        for fragment in expected:
            assert fragment in completed.stdout
        assert "WORLD_SIZE=2, launcher" not in completed.stdout  # no factory saw it


class TestBenchmarks:
    @pytest.mark.parametrize(
        "script", ["bench_overhead.py", "bench_registry.py", "bench_startup.py"]
    )
    def test_benchmark_script_prints_its_table(self, script: str) -> None:
        """A smoke run with tiny counts; the figures themselves are not judged here."""
        completed = subprocess.run(
            [sys.executable, str(ROOT / "benchmarks" / script), "--repeats", "2", "--number", "5"],
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        assert "|---" in completed.stdout

    @pytest.mark.parametrize("script", ["bench_overhead.py", "bench_registry.py"])
    @pytest.mark.parametrize("option", ["--repeats", "--number"])
    def test_count_below_one_is_refused_naming_it(self, script: str, option: str) -> None:
        completed = subprocess.run(
            [sys.executable, str(ROOT / "benchmarks" / script), option, "0"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert completed.returncode == 2
        assert f"argument {option}: expected a whole number of at least 1, got '0'" in (
            completed.stderr
        )


def test_py_typed_is_shipped() -> None:
    assert (Path(single_instance_build.__file__).parent / "py.typed").is_file()
