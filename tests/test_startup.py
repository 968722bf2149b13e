"""SINGLE_INSTANCE_BUILD guards every new interpreter through the installed .pth file.

The tests start real interpreters of the environment the package is installed
in (``sys.executable``), editable or not: both installs put
``single_instance_build.pth`` into site-packages. The post-import hook is
checked in fresh interpreters too, where Transformers is not imported yet.
"""

from __future__ import annotations

import ast
import io
import json
import os
import site
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest

import single_instance_build
from single_instance_build import _startup, _transformers, unguard_transformers

from support import require

ROOT = Path(__file__).resolve().parent.parent

STATUS = """\
import json, sys
from single_instance_build import _transformers
status = _transformers.status()
print(json.dumps({
    "names": list(status.names),
    "origins": list(status.origins),
    "installed": status.installed,
    "transformers_imported": "transformers" in sys.modules,
}))
"""

# What the .pth line may load before the program starts, with the variable off.
LOADED = (
    "import sys; print(sorted(m for m in sys.modules if 'single_instance' in m or 'wrapt' in m))"
)


def environment(value: str | None, **extra: str) -> dict[str, str]:
    """This environment with ``SINGLE_INSTANCE_BUILD`` set to *value* (unset for None)."""
    env = {k: v for k, v in os.environ.items() if k not in ("SINGLE_INSTANCE_BUILD", "PYTHONPATH")}
    if value is not None:
        env["SINGLE_INSTANCE_BUILD"] = value
    env.update(extra)
    return env


def python(
    code: str, value: str | None, *options: str, **extra: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *options, "-c", code],
        env=environment(value, **extra),
        capture_output=True,
        text=True,
        timeout=120,
    )


def status_in_new_interpreter(value: str | None, **extra: str) -> dict[str, Any]:
    completed = python(STATUS, value, **extra)
    assert completed.returncode == 0, completed.stderr
    result: dict[str, Any] = json.loads(completed.stdout)
    result["stderr"] = completed.stderr
    return result


@pytest.fixture(autouse=True)
def _unguard() -> Any:
    yield
    unguard_transformers()


def installed_pth() -> Path:
    for directory in [*site.getsitepackages(), site.getusersitepackages()]:
        candidate = Path(directory) / "single_instance_build.pth"
        if candidate.is_file():
            return candidate
    pytest.fail("single_instance_build.pth is not installed: reinstall the package")


class TestPthFile:
    def test_repository_file_holds_the_line_and_is_installed(self) -> None:
        shipped = (ROOT / "src" / "single_instance_build.pth").read_text(encoding="utf-8")
        assert shipped.strip() == _startup.PTH_LINE
        assert installed_pth().read_text(encoding="utf-8").strip() == _startup.PTH_LINE

    @pytest.mark.parametrize("value", [None, "", "0", " 0 "], ids=repr)
    def test_off_loads_nothing(self, value: str | None) -> None:
        completed = python(LOADED, value)
        assert completed.stdout.strip() == "[]"
        assert completed.stderr == ""


class TestActivation:
    @pytest.mark.parametrize(
        ("value", "names"),
        [
            ("1", ["WORLD_SIZE"]),
            ("true", ["WORLD_SIZE"]),
            ("WORLD_SIZE,LOCAL_WORLD_SIZE", ["WORLD_SIZE", "LOCAL_WORLD_SIZE"]),
            (" RANK , WORLD_SIZE ", ["RANK", "WORLD_SIZE"]),
        ],
        ids=repr,
    )
    def test_value_guards_its_names_without_importing_transformers(
        self, value: str, names: list[str]
    ) -> None:
        status = status_in_new_interpreter(value)
        assert status["names"] == names
        assert status["origins"] == ["SINGLE_INSTANCE_BUILD"]
        assert not status["transformers_imported"]
        assert status["stderr"] == ""

    @pytest.mark.parametrize("value", ["false", "OFF", "no"], ids=repr)
    def test_words_for_off_guard_nothing(self, value: str) -> None:
        status = status_in_new_interpreter(value)
        assert (status["names"], status["stderr"]) == ([], "")

    @pytest.mark.parametrize(
        "value",
        [
            *("A=B", ",", "WORLD_SIZE,,RANK", "X\x01=Y", "2", "1,2", "00"),
            *("ture", "y", "n", "enable", "world_size", "MY-VAR", "WORLD_SIZE,rank"),
        ],
        ids=repr,
    )
    def test_bad_value_starts_anyway_with_one_line_and_guards_world_size(self, value: str) -> None:
        """A typo of the switch (lower case is never a name) must not leave the launch unguarded."""
        status = status_in_new_interpreter(value, SECRET_TOKEN="s3cr3t-value")
        assert status["names"] == ["WORLD_SIZE"]
        lines = status["stderr"].splitlines()
        assert len(lines) == 1
        assert repr(value) in lines[0]
        assert "SINGLE_INSTANCE_BUILD" in lines[0]
        assert "s3cr3t-value" not in status["stderr"]

    def test_activate_reads_the_given_environment(self) -> None:
        err = io.StringIO()
        _startup.activate({"SINGLE_INSTANCE_BUILD": "RANK"}, err)
        assert _transformers.status().names == ("RANK",)
        assert err.getvalue() == ""

    def test_activate_acts_once_per_process(self) -> None:
        """site may run .pth files twice; a second activation changes nothing."""
        _startup.activate({"SINGLE_INSTANCE_BUILD": "RANK"})
        _startup.activate({"SINGLE_INSTANCE_BUILD": "WORLD_SIZE"})
        assert _transformers.status().names == ("RANK",)


@pytest.mark.transformers
class TestPostImportHook:
    """In fresh interpreters: Transformers is imported only after the guard was asked for."""

    @pytest.fixture(autouse=True)
    def _transformers_installed(self) -> None:
        require("torch", "transformers", "accelerate")

    def test_environment_guard_installs_when_transformers_is_imported(self) -> None:
        code = (
            "from transformers import LlamaForCausalLM\n"
            "from single_instance_build import is_guarded\n"
            "print(is_guarded(LlamaForCausalLM.from_pretrained))"
        )
        completed = python(code, "1")
        assert completed.stdout.strip() == "True", completed.stderr

    def test_hook_still_pending_after_unguard_does_nothing(self) -> None:
        code = (
            "from single_instance_build import guard_transformers, unguard_transformers\n"
            "guard_transformers(); unguard_transformers()\n"
            "from transformers.modeling_utils import PreTrainedModel\n"
            "print(type(vars(PreTrainedModel)['from_pretrained']).__name__)"
        )
        completed = python(code, None)
        assert completed.stdout.strip() == "classmethod", completed.stderr

    def test_guard_again_before_import_installs_one_layer_for_the_union(self) -> None:
        code = (
            "from single_instance_build import _transformers, guard_transformers\n"
            "from single_instance_build import unguard_transformers\n"
            "guard_transformers(); unguard_transformers(); guard_transformers(env_vars='RANK')\n"
            "from transformers.modeling_utils import PreTrainedModel\n"
            "installed = vars(PreTrainedModel)['from_pretrained']\n"
            "print(type(installed.__wrapped__).__name__, _transformers.status().names)"
        )
        completed = python(code, "1")  # the environment's guard was asked for first
        assert completed.stdout.strip() == "classmethod ('RANK',)", completed.stderr


class TestNeverImportsTransformers:
    def test_guard_transformers_leaves_transformers_unimported(self) -> None:
        code = (
            "import sys\nfrom single_instance_build import guard_transformers\n"
            "guard_transformers()\nprint('transformers' in sys.modules)"
        )
        completed = python(code, None)
        assert completed.stdout.strip() == "False", completed.stderr


# What a start with the variable set may import beyond one with it unset.
STARTUP_MODULES = {
    "__future__",
    "single_instance_build",
    "single_instance_build._startup",
    "single_instance_build._transformers",
    "single_instance_build._import_hook",
    "single_instance_build._names",
    "single_instance_build._switch",
    "single_instance_build._ray",  # waits for Ray's import, as _transformers waits for its own
}


def imported_at_start(value: str | None) -> set[str]:
    """The modules in ``sys.modules`` when the program starts, and any ``-X importtime`` names.

    ``sys.modules`` is the truth: on Python 3.15 ``-X importtime`` leaves out
    modules imported through ``importlib.import_module``, as ``site`` imports
    a ``.start`` file's entry point. The program's own ``import sys`` adds nothing.
    """
    completed = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import sys; print(' '.join(sys.modules))"],
        env=environment(value),
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    timed = {
        line.rsplit("|", 1)[1].strip()
        for line in completed.stderr.splitlines()
        if line.startswith("import time:") and not line.rstrip().endswith("package")
    }
    return timed | set(completed.stdout.split())


class TestLazyStartup:
    @pytest.mark.parametrize("value", ["1", "WORLD_SIZE,RANK", "ture"], ids=repr)
    def test_variable_set_imports_neither_wrapt_nor_transformers_nor_the_machinery(
        self, value: str
    ) -> None:
        extra = imported_at_start(value) - imported_at_start(None)
        assert extra <= STARTUP_MODULES

    def test_guard_asked_for_at_start_is_not_claimed_installed(self) -> None:
        status = status_in_new_interpreter("1")
        assert (status["names"], status["installed"]) == (["WORLD_SIZE"], False)


# As site would process them, the installed start-up files in a directory of
# their own: -S keeps this Python's site-packages out, and a .pth file read
# first (3.13+ decode them as utf-8-sig) leaves only what ours cost.
AS_SITE = """\
import sys, site
sys.path.insert(0, {package_parent!r})
site.addsitedir({warm!r})
before = set(sys.modules)
site.addsitedir({ours!r})
loaded = sorted(set(sys.modules) - before)
from single_instance_build import _transformers
print(repr((loaded, _transformers.status().origins, getattr(sys, "pth_line_ran", False))))
"""


def startup_files() -> list[Path]:
    """The package's files in site-packages that site runs: the .pth, and any .start beside it."""
    pth = installed_pth()
    return [pth, *pth.parent.glob("single_instance_build*.start")]


def run_as_site(
    tmp_path: Path, value: str | None, files: list[Path]
) -> tuple[list[str], tuple[str, ...], bool, str]:
    """Modules *files* load, the guard's origins, whether a test line ran, and stderr."""
    warm, ours = tmp_path / "warm", tmp_path / "ours"
    warm.mkdir()
    ours.mkdir()
    (warm / "warm.pth").write_text("# nothing\n", encoding="utf-8")
    for file in files:
        (ours / file.name).write_bytes(file.read_bytes())
    package_parent = str(Path(single_instance_build.__file__).resolve().parent.parent)
    code = AS_SITE.format(package_parent=package_parent, warm=str(warm), ours=str(ours))
    completed = python(code, value, "-S")
    assert completed.returncode == 0, completed.stderr
    loaded, origins, ran = ast.literal_eval(completed.stdout)
    return loaded, origins, ran, completed.stderr


class TestStartupFiles:
    """What site makes of the installed files, on the Python that runs the tests."""

    def test_wheel_ships_the_pth_and_no_start_file(self, tmp_path: Path) -> None:
        """On 3.15 any .start file makes site import pkgutil, re and enum at every start.

        Python 3.15 to 3.17 run the .pth line, which costs nothing when the
        variable is off; 3.18 ignores it (the test of site below notices that).
        """
        subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path), ROOT],
            check=True,
            capture_output=True,
            timeout=600,
        )
        (wheel,) = tmp_path.glob("single_instance_build-*.whl")
        with zipfile.ZipFile(wheel) as archive:
            top_level = [name for name in archive.namelist() if "/" not in name]
            pth = archive.read("single_instance_build.pth").decode()
        assert top_level == ["single_instance_build.pth"]
        assert pth.strip() == _startup.PTH_LINE

    def test_none_is_installed_beside_the_pth(self) -> None:
        assert [file.name for file in startup_files()] == ["single_instance_build.pth"]

    @pytest.mark.parametrize("value", [None, "", "0", "off"], ids=repr)
    def test_off_they_import_nothing(self, tmp_path: Path, value: str | None) -> None:
        loaded, origins, _, stderr = run_as_site(tmp_path, value, startup_files())
        assert (loaded, origins, stderr) == ([], (), "")

    @pytest.mark.parametrize("value", ["1", "WORLD_SIZE,RANK"], ids=repr)
    def test_on_they_switch_the_guard_on_importing_only_small_modules(
        self, tmp_path: Path, value: str
    ) -> None:
        loaded, origins, _, stderr = run_as_site(tmp_path, value, startup_files())
        assert (origins, stderr) == (("SINGLE_INSTANCE_BUILD",), "")
        assert set(loaded) <= STARTUP_MODULES

    def test_site_of_this_python_runs_import_lines_of_pth_files(self, tmp_path: Path) -> None:
        """The switch rests on this: PEP 829 ignores import lines in .pth files from 3.18."""
        line = tmp_path / "line.pth"
        line.write_text("import sys; sys.pth_line_ran = True\n", encoding="utf-8")
        _, _, ran, stderr = run_as_site(tmp_path, None, [line])
        assert ran, (
            f"Python {sys.version_info[0]}.{sys.version_info[1]} ignores import lines in .pth "
            "files (PEP 829): SINGLE_INSTANCE_BUILD needs a single_instance_build.start file "
            "naming single_instance_build._startup:activate, shipped beside the .pth"
        )
        assert stderr == ""

    @pytest.mark.parametrize("value", [None, "1"], ids=repr)
    def test_interpreter_starts_cleanly_with_warnings_as_errors(self, value: str | None) -> None:
        """No Python warns about the .pth's import line before 3.18, even under -W error."""
        completed = python("pass", value, "-W", "error", "-X", "dev")
        assert (completed.returncode, completed.stderr) == (0, "")


BROKEN_WRAPT = {
    "missing": "import sys; sys.modules['wrapt'] = None\n",
    "raising": "",  # a wrapt package that raises, first on the path
}


@pytest.mark.transformers
class TestWraptUnusableWhenTransformersIsImported:
    @pytest.mark.parametrize("how", list(BROKEN_WRAPT), ids=str)
    def test_import_goes_on_with_one_line_and_no_traceback(self, how: str, tmp_path: Path) -> None:
        require("torch", "transformers", "accelerate")
        (tmp_path / "wrapt").mkdir()
        (tmp_path / "wrapt" / "__init__.py").write_text("raise RuntimeError('broken wrapt')\n")
        code = BROKEN_WRAPT[how] + (
            "import importlib, sys\n"
            "import transformers.modeling_utils as mu\n"
            "importlib.reload(mu)\n"
            "del sys.modules['transformers.modeling_utils']\n"
            "import transformers.modeling_utils\n"
            "from single_instance_build import _transformers\n"
            "print('went on', _transformers.status().installed)"
        )
        extra = {"PYTHONPATH": str(tmp_path)} if how == "raising" else {}
        completed = python(code, "1", **extra)
        assert completed.returncode == 0, completed.stderr
        assert completed.stdout.strip() == "went on False"
        lines = completed.stderr.splitlines()
        assert len(lines) == 1, completed.stderr
        assert lines[0].startswith("single-instance-build: Transformers is NOT guarded")


class TestLazyPackage:
    def test_importing_the_package_imports_none_of_its_modules(self) -> None:
        code = (
            "import sys, single_instance_build\n"
            "print(sorted(m for m in sys.modules if 'single' in m))"
        )
        completed = python(code, None)
        assert completed.stdout.strip() == "['single_instance_build']", completed.stderr

    @pytest.mark.parametrize("name", single_instance_build.__all__)
    def test_every_public_name_imports_and_is_listed(self, name: str) -> None:
        namespace: dict[str, Any] = {}
        exec(f"from single_instance_build import {name}", namespace)
        assert namespace[name] is getattr(single_instance_build, name)
        assert name in dir(single_instance_build)

    def test_unknown_name_raises_attribute_error_naming_it(self) -> None:
        with pytest.raises(AttributeError, match="'no_such_name'"):
            single_instance_build.no_such_name  # type: ignore[attr-defined]  # noqa: B018
