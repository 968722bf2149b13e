"""The Ray integration without Ray: the runtime env it gives, and how ``ray.init`` is wrapped.

What Ray's workers do with it is proven with the real Ray in
tests/integration/test_ray.py. Here: the merge with a user's runtime env and a
submitted job's, the worker's setup hook, and the wrapping of whatever module
named ``ray`` a driver imports (a stand-in with ``init`` and ``is_initialized``,
in a fresh interpreter).
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import single_instance_build
from single_instance_build import (
    _ray,
    guard_transformers,
    ray_runtime_env,
    ray_worker_setup,
    unguard_transformers,
)
from single_instance_build._transformers import status

HOOK = "single_instance_build.ray_worker_setup"


@pytest.fixture(autouse=True)
def _unguard() -> Iterator[None]:
    yield
    unguard_transformers()


class TestRayRuntimeEnv:
    def test_default_carries_the_switch_and_names_the_setup_hook(self) -> None:
        assert ray_runtime_env() == {
            "env_vars": {"SINGLE_INSTANCE_BUILD": "1"},
            "worker_process_setup_hook": HOOK,
        }

    def test_the_setup_hook_name_resolves_to_ray_worker_setup(self) -> None:
        """Ray imports the module part of the name and takes the attribute."""
        module, _, name = HOOK.rpartition(".")
        assert getattr(importlib.import_module(module), name) is ray_worker_setup

    def test_adds_to_a_users_runtime_env_without_changing_it(self) -> None:
        mine = {"pip": ["numpy"], "env_vars": {"HF_HUB_OFFLINE": "1"}}
        merged = ray_runtime_env(mine)
        assert merged == {
            "pip": ["numpy"],
            "env_vars": {"HF_HUB_OFFLINE": "1", "SINGLE_INSTANCE_BUILD": "1"},
            "worker_process_setup_hook": HOOK,
        }
        assert mine == {"pip": ["numpy"], "env_vars": {"HF_HUB_OFFLINE": "1"}}

    @pytest.mark.parametrize("value", ["0", "1", "WORLD_SIZE,RANK"])
    def test_never_overrides_a_users_own_switch(self, value: str) -> None:
        merged = ray_runtime_env({"env_vars": {"SINGLE_INSTANCE_BUILD": value}})
        assert merged["env_vars"] == {"SINGLE_INSTANCE_BUILD": value}

    def test_other_names_are_carried_as_a_list(self) -> None:
        merged = ray_runtime_env(env_vars=["WORLD_SIZE", "LOCAL_WORLD_SIZE"])
        assert merged["env_vars"] == {"SINGLE_INSTANCE_BUILD": "WORLD_SIZE,LOCAL_WORLD_SIZE"}

    def test_its_own_setup_hook_twice_is_fine(self) -> None:
        assert ray_runtime_env(ray_runtime_env()) == ray_runtime_env()

    def test_another_setup_hook_is_refused_by_name(self) -> None:
        with pytest.raises(ValueError, match=r"worker_process_setup_hook \('my\.hook'\)"):
            ray_runtime_env({"worker_process_setup_hook": "my.hook"})

    @pytest.mark.parametrize(
        ("runtime_env", "message"),
        [
            (["env_vars"], "runtime_env must be a mapping .* got a list"),
            ({"env_vars": ["SINGLE_INSTANCE_BUILD=1"]}, r"\['env_vars'\] must be a mapping"),
        ],
        ids=["list", "env-vars-list"],
    )
    def test_a_runtime_env_that_is_not_a_mapping_fails_early(
        self, runtime_env: Any, message: str
    ) -> None:
        with pytest.raises(TypeError, match=message):
            ray_runtime_env(runtime_env)

    def test_a_bad_name_fails_early(self) -> None:
        with pytest.raises(ValueError, match="world_size"):
            ray_runtime_env(env_vars="world_size")

    def test_is_exported(self) -> None:
        assert "ray_runtime_env" in single_instance_build.__all__
        assert "ray_worker_setup" in single_instance_build.__all__


class FakeJobConfig:
    def __init__(self, runtime_env: dict[str, Any] | None) -> None:
        self.runtime_env = runtime_env


class TestInitArguments:
    """What the driver's ``ray.init`` is given while the guard is on."""

    NAMES = ("WORLD_SIZE",)

    def test_a_bare_init_gets_the_switch_and_the_hook(self) -> None:
        kwargs = _ray._init_kwargs({"address": "auto"}, self.NAMES)
        assert kwargs == {"address": "auto", "runtime_env": ray_runtime_env()}

    def test_a_users_switch_is_left_alone(self) -> None:
        given = {"runtime_env": {"env_vars": {"SINGLE_INSTANCE_BUILD": "0"}}}
        assert _ray._init_kwargs(given, self.NAMES) is given

    def test_a_users_setup_hook_is_kept_and_the_switch_added(self) -> None:
        given = {"runtime_env": {"worker_process_setup_hook": "my.hook"}}
        assert _ray._init_kwargs(given, self.NAMES)["runtime_env"] == {
            "worker_process_setup_hook": "my.hook",
            "env_vars": {"SINGLE_INSTANCE_BUILD": "1"},
        }

    def test_the_job_configs_runtime_env_is_the_base(self) -> None:
        """A runtime_env argument replaces job_config's: the merge must start from it."""
        given = {"job_config": FakeJobConfig({"pip": ["numpy"]})}
        assert _ray._init_kwargs(given, self.NAMES)["runtime_env"] == ray_runtime_env(
            {"pip": ["numpy"]}
        )

    @pytest.mark.parametrize("empty", [None, {}], ids=["none", "empty-dict"])
    def test_an_empty_runtime_env_leaves_the_job_configs_as_the_base(
        self, empty: dict[str, Any] | None
    ) -> None:
        """Ray takes an empty runtime_env argument as none: job_config's applies."""
        given = {"runtime_env": empty, "job_config": FakeJobConfig({"pip": ["numpy"]})}
        assert _ray._init_kwargs(given, self.NAMES)["runtime_env"] == ray_runtime_env(
            {"pip": ["numpy"]}
        )

    def test_a_submitted_job_does_not_merge_the_job_configs_runtime_env(self) -> None:
        """Ray replaces job_config's env by the submitted job's merged with the argument.

        Passed as the argument, job_config's fields would conflict with the job's.
        """
        os.environ["RAY_JOB_CONFIG_JSON_ENV_VAR"] = json.dumps({"runtime_env": {"pip": ["x"]}})
        given = {"job_config": FakeJobConfig({"pip": ["numpy"]})}
        assert _ray._init_kwargs(given, self.NAMES)["runtime_env"] == ray_runtime_env()

    def test_a_submitted_jobs_switch_is_not_repeated(self) -> None:
        """Ray refuses a ray.init env var that the submitted job's runtime env has too."""
        job = {"runtime_env": {"env_vars": {"SINGLE_INSTANCE_BUILD": "1"}}}
        os.environ["RAY_JOB_CONFIG_JSON_ENV_VAR"] = json.dumps(job)
        assert _ray._init_kwargs({}, self.NAMES) == {}

    def test_a_submitted_jobs_setup_hook_is_not_repeated(self) -> None:
        job = {"runtime_env": {"worker_process_setup_hook": "their.hook"}}
        os.environ["RAY_JOB_CONFIG_JSON_ENV_VAR"] = json.dumps(job)
        assert _ray._init_kwargs({}, self.NAMES) == {
            "runtime_env": {"env_vars": {"SINGLE_INSTANCE_BUILD": "1"}}
        }

    def test_names_other_than_the_default_are_carried_as_a_list(self) -> None:
        kwargs = _ray._init_kwargs({}, ("WORLD_SIZE", "LOCAL_WORLD_SIZE"))
        assert kwargs["runtime_env"]["env_vars"] == {
            "SINGLE_INSTANCE_BUILD": "WORLD_SIZE,LOCAL_WORLD_SIZE"
        }


class TestCarried:
    def test_the_guard_is_carried_until_it_is_undone(self) -> None:
        assert _ray.carried() == ()
        guard_transformers(env_vars=["WORLD_SIZE", "LOCAL_WORLD_SIZE"])
        assert _ray.carried() == ("WORLD_SIZE", "LOCAL_WORLD_SIZE")
        unguard_transformers()
        assert _ray.carried() == ()

    def test_an_older_change_that_arrives_last_loses(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(_ray, "_names", ())
        monkeypatch.setattr(_ray, "_generation", _ray._generation)
        newer = _ray._generation + 2
        _ray.carry((), newer)
        _ray.carry(("WORLD_SIZE",), newer - 1)
        assert _ray.carried() == ()


class TestRayWorkerSetup:
    def test_unset_guards_world_size(self) -> None:
        ray_worker_setup()
        assert status().names == ("WORLD_SIZE",)
        assert "ray_worker_setup()" in status().origins

    def test_the_list_form_is_honoured(self) -> None:
        os.environ["SINGLE_INSTANCE_BUILD"] = "WORLD_SIZE,LOCAL_WORLD_SIZE"
        ray_worker_setup()
        assert status().names == ("WORLD_SIZE", "LOCAL_WORLD_SIZE")

    def test_off_leaves_the_worker_unguarded(self) -> None:
        os.environ["SINGLE_INSTANCE_BUILD"] = "0"
        ray_worker_setup()
        assert status().names == ()

    def test_a_mistyped_switch_fails_naming_the_variable_not_its_value(self) -> None:
        os.environ["SINGLE_INSTANCE_BUILD"] = "ture-secret"
        with pytest.raises(ValueError, match="SINGLE_INSTANCE_BUILD in this Ray worker") as raised:
            ray_worker_setup()
        assert "ture-secret" not in str(raised.value)
        assert status().names == ()

    def test_without_wrapt_it_raises_instead_of_guarding_nothing(self) -> None:
        completed = run(
            "import sys; sys.modules['wrapt'] = None\n"
            "from single_instance_build import ray_worker_setup\n"
            "try:\n    ray_worker_setup()\nexcept ImportError as e:\n    print('raised', e.name)\n",
        )
        assert completed.stdout.strip() == "raised wrapt", completed.stderr


# A stand-in for Ray: only what the wrapper touches, where Ray keeps it (ray.init is
# ray._private.worker.init, re-exported).
FAKE_WORKER = """\
SCRIPT_MODE, WORKER_MODE = 0, 1
calls = []
class Worker:
    mode = None
global_worker = Worker()
_global_node = None
def is_initialized():
    return global_worker.mode is not None
def init(address=None, **kwargs):
    calls.append(kwargs)
    global_worker.mode = SCRIPT_MODE
class Context:
    runtime_env = {}
def get_runtime_context():
    return Context()
"""
FAKE_RAY = """\
from ray._private.worker import (
    SCRIPT_MODE, calls, get_runtime_context, init, is_initialized,
)
"""

DRIVER = """\
import json, sys
{before}
import ray
{after}
ray.init()
ray.init(ignore_reinit_error=True)
print(json.dumps(ray.calls))
"""


def run(code: str, value: str | None = None, path: Path | None = None) -> Any:
    env = {k: v for k, v in os.environ.items() if k not in ("SINGLE_INSTANCE_BUILD", "PYTHONPATH")}
    if value is not None:
        env["SINGLE_INSTANCE_BUILD"] = value
    if path is not None:
        env["PYTHONPATH"] = str(path)
    return subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )


class TestDriversRayInit:
    """The first ``ray.init`` of a guarded driver carries the switch; a nested one is untouched."""

    @pytest.fixture
    def fake_ray(self, tmp_path: Path) -> Path:
        (tmp_path / "ray" / "_private").mkdir(parents=True)
        (tmp_path / "ray" / "__init__.py").write_text(FAKE_RAY)
        (tmp_path / "ray" / "_private" / "__init__.py").write_text("")
        (tmp_path / "ray" / "_private" / "worker.py").write_text(FAKE_WORKER)
        return tmp_path

    def calls(self, fake_ray: Path, value: str | None, before: str = "", after: str = "") -> Any:
        completed = run(DRIVER.format(before=before, after=after), value, fake_ray)
        assert completed.returncode == 0, completed.stderr
        return json.loads(completed.stdout)

    def test_the_variable_in_the_driver_reaches_the_job(self, fake_ray: Path) -> None:
        first, nested = self.calls(fake_ray, "1")
        assert first == {"runtime_env": ray_runtime_env()}
        assert nested == {"ignore_reinit_error": True}

    def test_guard_transformers_after_import_ray_reaches_the_job(self, fake_ray: Path) -> None:
        after = "from single_instance_build import guard_transformers; guard_transformers()"
        first, _ = self.calls(fake_ray, None, after=after)
        assert first == {"runtime_env": ray_runtime_env()}

    def test_an_unguarded_driver_passes_everything_through(self, fake_ray: Path) -> None:
        before = "import single_instance_build._transformers"
        assert self.calls(fake_ray, None, before=before) == [{}, {"ignore_reinit_error": True}]

    def test_unguard_stops_carrying(self, fake_ray: Path) -> None:
        after = "from single_instance_build import unguard_transformers; unguard_transformers()"
        first, _ = self.calls(fake_ray, "1", after=after)
        assert first == {}

    def test_a_users_switch_in_the_call_is_kept(self, fake_ray: Path) -> None:
        code = (
            "import json, ray\n"
            "ray.init(runtime_env={'env_vars': {'SINGLE_INSTANCE_BUILD': '0'}})\n"
            "print(json.dumps(ray.calls))\n"
        )
        completed = run(code, "1", fake_ray)
        assert json.loads(completed.stdout) == [
            {"runtime_env": {"env_vars": {"SINGLE_INSTANCE_BUILD": "0"}}}
        ], completed.stderr

    def test_both_names_of_init_are_wrapped(self, fake_ray: Path) -> None:
        code = (
            "import json, ray, ray._private.worker as w\n"
            "w.init()\n"
            "print(json.dumps([ray.init is w.init, ray.calls]))\n"
        )
        completed = run(code, "1", fake_ray)
        assert json.loads(completed.stdout) == [True, [{"runtime_env": ray_runtime_env()}]]

    def test_a_driver_connected_before_the_guard_is_warned(self, fake_ray: Path) -> None:
        code = (
            "import ray\nray.init()\n"
            "from single_instance_build import guard_transformers\nguard_transformers()\n"
        )
        completed = run(code, None, fake_ray)
        assert completed.returncode == 0, completed.stderr
        assert "Ray was initialized before the guard came on" in completed.stderr
        assert "workers on a cluster this process did not start are NOT guarded" in (
            completed.stderr
        )

    def test_a_connected_job_that_carries_the_switch_is_not_warned(self, fake_ray: Path) -> None:
        code = (
            "import ray\nray.init()\n"
            "ray._private.worker.Context.runtime_env = "
            "{'env_vars': {'SINGLE_INSTANCE_BUILD': '1'}}\n"
            "from single_instance_build import guard_transformers\nguard_transformers()\n"
        )
        completed = run(code, None, fake_ray)
        assert completed.returncode == 0, completed.stderr
        assert completed.stderr == ""

    def test_a_worker_calling_guard_transformers_is_not_warned(self, fake_ray: Path) -> None:
        """In a Ray worker, ray is initialized in WORKER_MODE: the loop's own guard is right."""
        code = (
            "import ray, ray._private.worker as w\nw.global_worker.mode = w.WORKER_MODE\n"
            "from single_instance_build import guard_transformers\nguard_transformers()\n"
        )
        completed = run(code, None, fake_ray)
        assert completed.returncode == 0, completed.stderr
        assert completed.stderr == ""
