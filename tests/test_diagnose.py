"""The diagnosis command, ``python -m single_instance_build``."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

import pytest
import wrapt

import single_instance_build
from single_instance_build import _ranks, guard_transformers, unguard_transformers
from single_instance_build._diagnose import (
    LAUNCHER_VARIABLES,
    Diagnosis,
    diagnose,
    is_affected_version,
    main,
    report,
    report_others,
)
from single_instance_build._ranks import Launch


@pytest.fixture(autouse=True)
def _no_launcher_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (*LAUNCHER_VARIABLES, "TORCHELASTIC_ERROR_FILE"):
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

    def test_world_size_zero_does_not_switch_and_is_not_called_unset(self) -> None:
        os.environ["WORLD_SIZE"] = "0"
        status, text = run("--transformers-version", "4.53.3")
        assert status == 3
        assert "launcher variables set in this process: WORLD_SIZE" in text
        assert "not set" not in text
        assert "WORLD_SIZE is set but reads as 0" in text

    @pytest.mark.parametrize("value", ["", "two", "abc"])
    def test_non_integer_world_size_gets_its_own_verdict(self, value: str) -> None:
        """from_pretrained raises ValueError there: the verdict must not say "sharded"."""
        os.environ["WORLD_SIZE"] = value
        status, text = run("--transformers-version", "4.53.3")
        assert status == 1
        verdicts = [line for line in text.splitlines() if line.startswith("verdict:")]
        assert verdicts == [
            "verdict: THIS PROCESS IS AFFECTED. WORLD_SIZE is set but is not an integer, so "
            "from_pretrained(..., device_map='auto') raises ValueError here."
        ]
        assert "sharded" not in text

    @pytest.mark.parametrize("version", ["main", "", "four", "latest"])
    def test_version_without_release_number_is_a_usage_error(
        self, version: str, capsys: pytest.CaptureFixture[str]
    ) -> None:
        with pytest.raises(SystemExit) as info:
            main(["--transformers-version", version], io.StringIO())
        assert info.value.code == 2
        assert (
            f"--transformers-version {version!r} has no release number" in capsys.readouterr().err
        )

    def test_installed_version_without_release_number_cannot_tell(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr(metadata, "version", lambda name: "1!weird")
        status, text = run()
        assert status == 4
        assert "verdict: CANNOT TELL" in text

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
        assert "exit status: 0 not affected: Transformers is absent" in completed.stdout
        assert "Under a launcher (LOCAL_RANK set), every process exits 0" in " ".join(
            completed.stdout.split()
        )


class TestGuardAtTheSource:
    @pytest.fixture(autouse=True)
    def _unguard(self) -> Iterator[None]:
        yield
        unguard_transformers()

    def test_affected_setup_is_protected_while_guard_transformers_is_active(self) -> None:
        os.environ["WORLD_SIZE"] = "2"
        guard_transformers()
        status, text = run("--transformers-version", "4.53.3")
        assert status == 0
        # In place once Transformers is imported; until then, armed by the import hook.
        state, when = (
            ("ACTIVE", "")
            if "transformers.modeling_utils" in sys.modules
            else ("ARMED", " once transformers.modeling_utils is imported")
        )
        assert (
            f"guard at the source: {state} in this process, hiding WORLD_SIZE in "
            f"from_pretrained(..., device_map='auto'){when}; switched on by guard_transformers()"
        ) in text
        assert "verdict: protected." in text
        assert "what to do" not in text

    def test_guard_that_wrapt_cannot_put_in_place_does_not_protect(self) -> None:
        """Armed without a working wrapt, the guard would never be installed: no false claim."""
        code = (
            "import sys; sys.modules['wrapt'] = None\n"
            "from single_instance_build import guard_transformers\n"
            "from single_instance_build._diagnose import main\n"
            "guard_transformers()\n"
            "sys.exit(main(['--transformers-version', '4.53.3']))\n"
        )
        env = {**os.environ, "WORLD_SIZE": "2"}
        env.pop("SINGLE_INSTANCE_BUILD", None)
        completed = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=False
        )
        assert completed.returncode == 1, completed.stdout + completed.stderr
        assert "guard at the source: BROKEN in this process" in completed.stdout
        assert "never: wrapt cannot be imported" in completed.stdout
        assert "verdict: protected." not in completed.stdout

    def test_finder_ahead_of_the_import_hook_is_not_called_protected(self) -> None:
        """Issue 18.3: a finder put ahead of the hook can import Transformers past it."""
        code = (
            "import sys\n"
            "from single_instance_build import guard_transformers\n"
            "from single_instance_build._diagnose import main\n"
            "class Ahead:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        return None\n"
            "guard_transformers()\n"
            "sys.meta_path.insert(0, Ahead())\n"
            "print('status', main(['--transformers-version', '4.53.3']))\n"
            "guard_transformers()  # puts the hook ahead again\n"
            "print('status', main(['--transformers-version', '4.53.3']))\n"
        )
        env = {**os.environ, "WORLD_SIZE": "2"}
        env.pop("SINGLE_INSTANCE_BUILD", None)
        completed = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=False
        )
        assert completed.returncode == 0, completed.stderr
        before, after, _ = completed.stdout.split("status ")
        assert "guard at the source: BYPASSABLE in this process" in before
        assert "__main__.Ahead is ahead of its import hook in sys.meta_path" in before
        assert "verdict: THIS PROCESS IS AFFECTED" in before
        assert "guard at the source: ARMED in this process" in after
        assert "verdict: protected." in after
        assert completed.stdout.count("status ") == 2
        assert [line for line in completed.stdout.splitlines() if "status" in line] == [
            "status 1",
            "status 0",
        ]

    def test_guard_of_other_names_only_does_not_protect(self) -> None:
        os.environ["WORLD_SIZE"] = "2"
        guard_transformers(env_vars="RANK")
        status, text = run("--transformers-version", "4.53.3")
        assert status == 1
        assert "hiding RANK" in text

    def test_reports_guard_not_active(self) -> None:
        status, text = run("--transformers-version", "4.53.3")
        assert status == 3
        assert "guard at the source: not active in this process" in text

    def test_advice_leads_with_the_zero_edit_options(self) -> None:
        os.environ["WORLD_SIZE"] = "2"
        _, text = run("--transformers-version", "4.53.3")
        advice = text[text.index("what to do") :]
        zero_edit = ("-m single_instance_build.run", "SINGLE_INSTANCE_BUILD=1")
        in_code = ("guard_transformers()", "@single_instance_build", "guard_registry")
        assert max(advice.index(option) for option in zero_edit) < min(
            advice.index(option) for option in in_code
        )

    def test_advice_is_short_steps_a_line_each(self) -> None:
        os.environ["WORLD_SIZE"] = "2"
        _, text = run("--transformers-version", "4.53.3")
        steps = text[text.index("what to do") :].splitlines()
        assert len(steps) >= 6
        assert max(len(step) for step in steps) <= 80
        assert sum(step.startswith("  - ") for step in steps) >= 4

    def test_environment_variable_is_named_as_what_switched_guard_on(self) -> None:
        env = {**os.environ, "WORLD_SIZE": "2", "SINGLE_INSTANCE_BUILD": "1"}
        completed = subprocess.run(
            [sys.executable, "-m", "single_instance_build", "--transformers-version", "4.53.3"],
            capture_output=True,
            text=True,
            env=env,
        )
        assert completed.returncode == 0, completed.stdout + completed.stderr
        assert "switched on by SINGLE_INSTANCE_BUILD" in completed.stdout
        assert "verdict: protected." in completed.stdout

    def test_says_when_the_variable_is_set_but_the_pth_file_did_not_run(self) -> None:
        """python -S runs no .pth file: the package is then found on sys.path only."""
        paths = [
            str(Path(module.__file__).parent.parent)  # type: ignore[arg-type]  # both have one
            for module in (single_instance_build, wrapt)
        ]
        code = (
            f"import sys; sys.path[:0] = {paths!r}\n"
            "from single_instance_build._diagnose import main\n"
            "sys.exit(main(['--transformers-version', '4.53.3']))"
        )
        env = {**os.environ, "WORLD_SIZE": "2", "SINGLE_INSTANCE_BUILD": "1"}
        completed = subprocess.run(
            [sys.executable, "-S", "-c", code], capture_output=True, text=True, env=env
        )
        assert completed.returncode == 1, completed.stderr
        assert "guard at the source: not active in this process" in completed.stdout
        assert "SINGLE_INSTANCE_BUILD is set but did not switch the guard on" in completed.stdout

    def test_guard_findings_round_trip_through_json(self) -> None:
        guard_transformers()
        found = diagnose("4.53.3")
        assert found.guard_names == ("WORLD_SIZE",)
        assert Diagnosis.from_json(json.loads(json.dumps(dataclasses.asdict(found)))) == found


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


AFFECTED_HERE = Diagnosis("4.53.3", True, ("WORLD_SIZE", "LOCAL_RANK"), True, True)
NOT_AFFECTED = Diagnosis("4.54.0", False, ("WORLD_SIZE", "LOCAL_RANK"), True, True)
THREE_LOCAL_RANKS = Launch(rank=0, local_rank=0, local_world_size=3, exchange=None)


def render(others: dict[int, Diagnosis | None] | None) -> str:
    """Local rank 0's report under a launcher, as main() writes it."""
    out = io.StringIO()
    out.write(THREE_LOCAL_RANKS.header())
    report(AFFECTED_HERE, out)
    report_others(AFFECTED_HERE, others, THREE_LOCAL_RANKS.local_world_size, 30, out)
    return out.getvalue()


class TestLaunchReport:
    def test_one_report_and_one_line_when_every_rank_agrees(self) -> None:
        text = render({1: AFFECTED_HERE, 2: AFFECTED_HERE})
        assert text.count("verdict:") == 1
        assert text.startswith("under a launcher: the report of local rank 0 (rank 0)")
        assert text.endswith("local ranks 1 to 2: the same findings\n")

    def test_a_line_only_for_the_rank_that_differs(self) -> None:
        text = render({1: AFFECTED_HERE, 2: NOT_AFFECTED})
        lines = text.splitlines()
        assert lines[-1] == (
            "local rank 2 DIFFERS: transformers 4.54.0, launcher variables WORLD_SIZE, "
            "LOCAL_RANK; verdict: not affected. The guard is harmless here and needs no change."
        )
        assert "local rank 1" not in text
        assert "the same findings" not in text

    def test_a_rank_that_never_reported_is_named(self) -> None:
        text = render({1: AFFECTED_HERE, 2: None})
        assert text.endswith("local rank 2: no findings within 30 s\n")
        assert "the same findings" not in text

    def test_without_an_exchange_says_the_other_ranks_print_a_line(self) -> None:
        assert render(None).endswith("the other local ranks print one line each\n")


class TestUnderALauncher:
    """main() in the places torchrun gives its processes, without torchrun itself."""

    @pytest.fixture
    def attempt(self, tmp_path: Path) -> Path:
        """torchrun's per-launch folder: one sub-folder per local rank."""
        for local_rank in range(2):
            (tmp_path / str(local_rank)).mkdir()
        return tmp_path

    def as_rank(self, local_rank: int, attempt: Path | None) -> None:
        os.environ.update(
            WORLD_SIZE="2", RANK=str(local_rank), LOCAL_RANK=str(local_rank), LOCAL_WORLD_SIZE="2"
        )
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT="29500")  # as torchrun sets them
        if attempt is not None:
            os.environ["TORCHELASTIC_ERROR_FILE"] = str(attempt / str(local_rank) / "error.json")

    def test_other_rank_leaves_its_findings_prints_nothing_and_exits_0(self, attempt: Path) -> None:
        self.as_rank(1, attempt)
        status, text = run("--transformers-version", "4.53.3")
        assert (status, text) == (0, "")
        posted = Diagnosis.from_json(json.loads((attempt / "1" / _ranks.FILE_NAME).read_text()))
        assert posted == diagnose("4.53.3")

    def test_local_rank_0_reports_for_the_node_and_exits_0(self, attempt: Path) -> None:
        self.as_rank(1, attempt)
        run("--transformers-version", "4.53.3")
        self.as_rank(0, attempt)
        status, text = run("--transformers-version", "4.53.3")
        assert status == 0
        assert "verdict: THIS PROCESS IS AFFECTED" in text
        assert text.endswith("local rank 1: the same findings\n")

    def test_without_torchrun_folders_every_rank_prints_one_line(self) -> None:
        self.as_rank(1, None)
        status, text = run("--transformers-version", "4.53.3")
        assert status == 0
        assert text == (
            "rank 1 (local rank 1): verdict: THIS PROCESS IS AFFECTED. A model built here with "
            "device_map='auto' is sharded across the processes of the launch when every "
            "process loads it; a load in some processes only waits for the others until the "
            "process group's timeout.\n"
        )

    def test_rank_without_its_torchrun_folder_prints_its_line_instead(self, attempt: Path) -> None:
        self.as_rank(1, attempt)
        (attempt / "1").rmdir()
        (attempt / "1").write_text("not a folder")
        status, text = run("--transformers-version", "4.54.0")
        assert status == 0
        assert text == (
            "rank 1 (local rank 1): verdict: not affected. The guard is harmless here and needs "
            "no change.\n"
        )

    def test_findings_round_trip_through_json(self) -> None:
        found = diagnose("4.53.3")
        assert Diagnosis.from_json(dataclasses.asdict(found)) == found
