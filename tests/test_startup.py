"""SINGLE_INSTANCE_BUILD guards every new interpreter through the installed .pth file.

The tests start real interpreters of the environment the package is installed
in (``sys.executable``), editable or not: both installs put
``single_instance_build.pth`` into site-packages. The post-import hook is
checked in fresh interpreters too, where Transformers is not imported yet.
"""

from __future__ import annotations

import io
import json
import os
import site
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

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


def python(code: str, value: str | None, **extra: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("SINGLE_INSTANCE_BUILD", "PYTHONPATH")}
    if value is not None:
        env["SINGLE_INSTANCE_BUILD"] = value
    env.update(extra)
    return subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
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
        "value", ["A=B", ",", "WORLD_SIZE,,RANK", "X\x01=Y", "2", "1,2", "00"], ids=repr
    )
    def test_bad_value_starts_anyway_with_one_line_and_guards_world_size(self, value: str) -> None:
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
