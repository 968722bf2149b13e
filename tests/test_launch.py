"""python -m single_instance_build.run runs an unmodified program as plain python would, guarded."""

from __future__ import annotations

import json
import os
import py_compile
import subprocess
import sys
import textwrap
import zipapp
from pathlib import Path
from typing import Any

import pytest

from single_instance_build import _transformers, unguard_transformers
from single_instance_build._launch import ORIGIN, main

from support import require

LAUNCHER = [sys.executable, "-m", "single_instance_build.run"]

# What a program reports about how it was started. It names no dunder that a
# Python version may leave out (__annotations__ from 3.14, __cached__ from 3.15).
REPORTER = """\
import json, os, sys
from single_instance_build import _transformers
status = _transformers.status()
unset = "<unset>"
print(json.dumps({
    "name": __name__,
    "file": globals().get("__file__"),
    "spec": None if __spec__ is None else __spec__.name,
    "argv": sys.argv,
    "path0": sys.path[0],
    "main_is_this_module": sys.modules["__main__"].__dict__ is globals(),
    "dunders": sorted(name for name in globals() if name.startswith("__")),
    "package": __package__,
    "cached": globals().get("__cached__", unset),
    "loader": type(__loader__).__name__,
    "annotations": globals().get("__annotations__", unset),
    "doc": __doc__,
    "builtins": getattr(__builtins__, "__name__", unset),
    "guarded": list(status.names),
    "origins": list(status.origins),
    "env": os.environ.get("SINGLE_INSTANCE_BUILD"),
}))
"""


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("SINGLE_INSTANCE_BUILD", "PYTHONPATH")}
    env.update(extra)
    return env


def run(args: list[str], cwd: Path, **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args, cwd=cwd, env=clean_env(**extra), capture_output=True, text=True, timeout=120
    )


def report(completed: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert completed.returncode == 0, completed.stderr
    result: dict[str, Any] = json.loads(completed.stdout.splitlines()[-1])
    return result


@pytest.fixture
def program(tmp_path: Path) -> Path:
    """A package ``pkg`` with a module ``pkg.tool``, and a script ``scripts/tool.py``."""
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "tool.py").write_text(REPORTER)
    (tmp_path / "pkg" / "__main__.py").write_text(REPORTER)
    (tmp_path / "scripts").mkdir()
    (tmp_path / "scripts" / "tool.py").write_text(REPORTER)
    # compiled as a bare script is: python runs a .pyc by its name, or by its magic
    # number whatever the name
    py_compile.compile(str(tmp_path / "scripts" / "tool.py"), str(tmp_path / "compiled.pyc"))
    (tmp_path / "compiled_no_suffix").write_bytes((tmp_path / "compiled.pyc").read_bytes())
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "__main__.py").write_text(REPORTER)
    zipapp.create_archive(tmp_path / "app", tmp_path / "app.pyz")
    return tmp_path


class TestStartsProgramAsPlainPython:
    @pytest.mark.parametrize(
        "target",
        [
            ["scripts/tool.py", "--flag", "x"],
            ["-m", "pkg.tool", "--flag"],
            ["-m", "pkg", "a"],
            ["app", "--flag"],
            ["app.pyz", "--flag"],
            ["compiled.pyc", "--flag"],
            ["compiled_no_suffix"],
        ],
        ids=["script", "module", "package", "directory", "zipapp", "pyc", "pyc-by-magic"],
    )
    def test_module_attributes_argv_and_path0_match_plain_python(
        self, program: Path, target: list[str]
    ) -> None:
        """Compared with plain python on this interpreter, whatever its version sets."""
        plain = report(run([sys.executable, *target], program))
        launched = report(run([*LAUNCHER, *target], program))
        assert launched == {
            **plain,
            "guarded": ["WORLD_SIZE"],
            "origins": [ORIGIN],
            "env": "WORLD_SIZE",
        }
        assert launched["name"] == "__main__"
        assert launched["main_is_this_module"]

    @pytest.mark.skipif(sys.version_info < (3, 11), reason="python -P is new in 3.11")
    @pytest.mark.parametrize("target", ["scripts/tool.py", "app", "app.pyz"])
    def test_sys_path_under_safe_path_matches_plain_python(
        self, program: Path, target: str
    ) -> None:
        """python -P adds no script directory, but still a directory or zipapp it runs."""
        plain = report(run([sys.executable, "-P", target], program))
        launched = report(run([sys.executable, "-P", *LAUNCHER[1:], target], program))
        assert launched["path0"] == plain["path0"]

    def test_script_through_symbolic_link_gets_directory_of_its_target(self, program: Path) -> None:
        (program / "link.py").symlink_to(program / "scripts" / "tool.py")
        plain = report(run([sys.executable, "link.py"], program))
        launched = report(run([*LAUNCHER, "link.py"], program))
        assert launched["path0"] == plain["path0"] == str(program / "scripts")

    def test_program_runs_guarded_and_its_children_inherit_the_names(self, program: Path) -> None:
        launched = report(run([*LAUNCHER, "--env-var", "RANK", "scripts/tool.py"], program))
        assert launched["guarded"] == ["RANK"]
        assert launched["origins"] == [
            "python -m single_instance_build.run"
        ]  # transformers is not imported: the guard waits for it
        assert launched["env"] == "RANK"
        plain = report(run([sys.executable, "scripts/tool.py"], program))
        assert plain["guarded"] == []
        assert plain["env"] is None

    def test_default_guards_world_size(self, program: Path) -> None:
        launched = report(run([*LAUNCHER, "-m", "pkg.tool"], program))
        assert launched["guarded"] == ["WORLD_SIZE"]
        assert launched["env"] == "WORLD_SIZE"


class TestExitStatus:
    @pytest.mark.parametrize(
        ("body", "status", "stderr"),
        [
            ("pass", 0, ""),
            ("raise SystemExit(3)", 3, ""),
            ("import sys; sys.exit('stopped: bad input')", 1, "stopped: bad input"),
            ("raise ValueError('boom')", 1, "ValueError: boom"),
        ],
        ids=["normal", "exit-3", "exit-message", "uncaught"],
    )
    def test_status_and_message_are_the_programs(
        self, tmp_path: Path, body: str, status: int, stderr: str
    ) -> None:
        (tmp_path / "prog.py").write_text(body + "\n")
        plain = run([sys.executable, "prog.py"], tmp_path)
        launched = run([*LAUNCHER, "prog.py"], tmp_path)
        assert plain.returncode == launched.returncode == status
        assert stderr in launched.stderr
        if status == 1 and "Error" in stderr:
            assert "Traceback (most recent call last)" in launched.stderr

    @pytest.mark.parametrize(
        ("args", "message"),
        [
            ([], "a SCRIPT or -m MODULE to run is required"),
            (["--env-var"], "expected one argument"),
            (["--env-var", "A=B", "prog.py"], "'A=B'"),
            (["--verbose", "prog.py"], "unrecognized option '--verbose'"),
            (["-m"], "expected a module name"),
        ],
        ids=["nothing", "env-var-without-name", "bad-name", "unknown-option", "m-without-module"],
    )
    def test_usage_error_exits_2_naming_the_problem(
        self, tmp_path: Path, args: list[str], message: str
    ) -> None:
        completed = run([*LAUNCHER, *args], tmp_path)
        assert completed.returncode == 2
        assert message in completed.stderr

    def test_missing_script_exits_2_like_python(self, tmp_path: Path) -> None:
        plain = run([sys.executable, "missing.py"], tmp_path)
        launched = run([*LAUNCHER, "missing.py"], tmp_path)
        assert plain.returncode == launched.returncode == 2
        assert "can't open file" in launched.stderr

    def test_missing_module_fails_naming_it(self, tmp_path: Path) -> None:
        launched = run([*LAUNCHER, "-m", "no_such_module_here"], tmp_path)
        assert launched.returncode == 1
        assert "no_such_module_here" in launched.stderr

    def test_help_exits_0(self, tmp_path: Path) -> None:
        completed = run([*LAUNCHER, "--help"], tmp_path)
        assert completed.returncode == 0
        assert "--env-var NAME" in completed.stdout


class TestLocalRankFromLaunchers:
    """DeepSpeed and torch.distributed.launch put --local_rank=N / --local-rank=N first."""

    @pytest.mark.parametrize("option", ["--local_rank=0", "--local-rank=1", "--local_rank=12"])
    @pytest.mark.parametrize(
        "target",
        [
            ["scripts/tool.py", "--flag", "x"],
            ["-m", "pkg.tool", "--flag"],
            ["app.pyz"],
            ["-m", "pkg"],
        ],
        ids=["script", "module", "zipapp", "package"],
    )
    def test_program_gets_it_where_plain_python_under_the_launcher_would(
        self, program: Path, option: str, target: list[str]
    ) -> None:
        """``launcher --local_rank=N SCRIPT ARGS`` as ``python SCRIPT --local_rank=N ARGS``."""
        at = 2 if target[0] == "-m" else 1
        plain = report(run([sys.executable, *target[:at], option, *target[at:]], program))
        launched = report(run([*LAUNCHER, option, *target], program))
        assert launched["argv"] == plain["argv"]
        assert launched["argv"][1] == option
        assert launched["guarded"] == ["WORLD_SIZE"]

    @pytest.mark.parametrize(
        "options",
        [
            ["--local_rank=0", "--env-var", "RANK"],
            ["--env-var=RANK", "--local_rank=0"],
            ["--env-var", "RANK", "--local-rank=0", "--"],
        ],
        ids=["before-env-var", "after-env-var", "before-double-dash"],
    )
    def test_mixes_with_the_launchers_own_options(self, program: Path, options: list[str]) -> None:
        launched = report(run([*LAUNCHER, *options, "scripts/tool.py", "a"], program))
        rank = next(option for option in options if "local" in option)
        assert launched["argv"] == ["scripts/tool.py", rank, "a"]
        assert launched["guarded"] == ["RANK"]

    @pytest.mark.parametrize(
        ("args", "message"),
        [
            (["--local_rank", "0", "prog.py"], "expected --local_rank=N"),
            (["--local-rank=x", "prog.py"], "got '--local-rank=x'"),
            (["--local_rank=", "prog.py"], "got '--local_rank='"),
            (["--local_rank=-1", "prog.py"], "got '--local_rank=-1'"),
            (["--local_rank=0", "--local-rank=1", "prog.py"], "given twice"),
            (["--local_rank=0", "--local_rank=1", "prog.py"], "'--local_rank=1'"),
            (["--local_rank=0"], "a SCRIPT or -m MODULE to run is required"),
            (["--local_rank=0", "--verbose", "prog.py"], "unrecognized option '--verbose'"),
            (["--local_ranks=0", "prog.py"], "unrecognized option '--local_ranks=0'"),
        ],
        ids=["separate-value", "not-a-number", "empty", "negative", "twice", "twice-names-both",
             "no-program",
             "unknown-after-it", "other-name"],
    )  # fmt: skip
    def test_other_forms_are_a_usage_error_before_anything_runs(
        self, tmp_path: Path, args: list[str], message: str
    ) -> None:
        (tmp_path / "prog.py").write_text("open('ran', 'w').close()\n")
        completed = run([*LAUNCHER, *args], tmp_path)
        assert completed.returncode == 2
        assert message in completed.stderr
        assert not (tmp_path / "ran").exists()

    def test_help_after_it_still_prints_help_and_names_it(self, tmp_path: Path) -> None:
        completed = run([*LAUNCHER, "--local_rank=0", "--help"], tmp_path)
        assert completed.returncode == 0
        assert "--local-rank" in completed.stdout
        assert "--local_rank" in completed.stdout


# A program that reports the names it guards, and those of a Python process it starts.
CHILD_REPORTER = """\
import json, subprocess, sys
from single_instance_build import _transformers
names = list(_transformers.status().names)
if sys.argv[1:] == ["child"]:
    print(json.dumps(names))
else:
    child = subprocess.run([sys.executable, __file__, "child"], capture_output=True, text=True)
    print(json.dumps({"program": names, "child": json.loads(child.stdout)}))
"""


class TestEnvVarNames:
    """--env-var takes the names SINGLE_INSTANCE_BUILD takes, in the same spelling."""

    @pytest.mark.parametrize(
        ("options", "names"),
        [
            (["--env-var", "WORLD_SIZE,LOCAL_WORLD_SIZE"], ["WORLD_SIZE", "LOCAL_WORLD_SIZE"]),
            (["--env-var=WORLD_SIZE, RANK", "--env-var", "RANK"], ["WORLD_SIZE", "RANK"]),
            (["--env-var", "RANK", "--env-var", "WORLD_SIZE"], ["RANK", "WORLD_SIZE"]),
            ([], ["WORLD_SIZE"]),
        ],
        ids=["comma-list", "list-and-repeat", "repeated", "default"],
    )
    def test_program_and_its_child_processes_hide_the_same_names(
        self, tmp_path: Path, options: list[str], names: list[str]
    ) -> None:
        (tmp_path / "prog.py").write_text(CHILD_REPORTER)
        launched = report(run([*LAUNCHER, *options, "prog.py"], tmp_path))
        assert launched == {"program": names, "child": names}

    @pytest.mark.parametrize(
        "value", ["MY-VAR", "0", "world_size", "WORLD_SIZE,,RANK", "", "1", "RANK,"]
    )
    def test_name_outside_the_grammar_is_a_usage_error_before_anything_runs(
        self, tmp_path: Path, value: str
    ) -> None:
        (tmp_path / "prog.py").write_text("open('ran', 'w').close()\n")
        completed = run([*LAUNCHER, "--env-var", value, "prog.py"], tmp_path)
        assert completed.returncode == 2
        assert f"argument --env-var: bad value {value!r}" in completed.stderr
        assert "upper-case ASCII letters, digits and _" in completed.stderr or (
            "non-empty" in completed.stderr
        )
        assert not (tmp_path / "ran").exists()


class TestCallableFunction:
    def test_main_runs_script_in_process_and_returns_0(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        monkeypatch.setattr(sys, "argv", list(sys.argv))
        monkeypatch.setattr(sys, "path", list(sys.path))
        monkeypatch.setitem(sys.modules, "__main__", sys.modules["__main__"])
        (tmp_path / "prog.py").write_text("import sys\nprint('ran', sys.argv[1:], __name__)\n")
        try:
            assert main(["--env-var", "RANK", str(tmp_path / "prog.py"), "x"]) == 0
            assert _transformers.status().names == ("RANK",)
            assert os.environ["SINGLE_INSTANCE_BUILD"] == "RANK"
        finally:
            unguard_transformers()
        assert capsys.readouterr().out == "ran ['x'] __main__\n"


@pytest.mark.transformers
class TestUnmodifiedTransformersScript:
    def test_launcher_gives_full_model_where_plain_python_switches(self, tmp_path: Path) -> None:
        """WORLD_SIZE=2 without torchrun: plain python tries tensor parallelism and fails."""
        require("torch", "transformers", "accelerate")
        script = tmp_path / "load.py"
        script.write_text(
            textwrap.dedent(
                """\
                import sys, torch
                from torch.distributed.tensor import DTensor
                from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM
                config = LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                     num_attention_heads=2, num_key_value_heads=2, vocab_size=32)
                LlamaForCausalLM(config).save_pretrained(sys.argv[1])
                model = AutoModelForCausalLM.from_pretrained(sys.argv[1], device_map="auto")
                print("dtensors", sum(isinstance(p, DTensor) for p in model.parameters()))
                """
            )
        )
        env = {"WORLD_SIZE": "2", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
        plain = run([sys.executable, str(script), str(tmp_path / "a")], tmp_path, **env)
        assert plain.returncode == 1
        assert "initialize torch.distributed" in plain.stderr
        launched = run([*LAUNCHER, str(script), str(tmp_path / "b")], tmp_path, **env)
        assert launched.returncode == 0, launched.stderr
        assert launched.stdout.splitlines()[-1] == "dtensors 0"

    def test_program_and_its_child_process_hide_the_same_names_in_a_real_load(
        self, tmp_path: Path
    ) -> None:
        """A model's __init__ runs inside from_pretrained: it sees what the guard hides."""
        require("torch", "transformers", "accelerate")
        script = tmp_path / "probe.py"
        script.write_text(
            textwrap.dedent(
                """\
                import json, os, subprocess, sys
                from transformers import LlamaConfig, LlamaForCausalLM
                NAMES = ("WORLD_SIZE", "LOCAL_WORLD_SIZE", "RANK")
                hidden = []
                class Probe(LlamaForCausalLM):
                    def __init__(self, config):
                        super().__init__(config)
                        hidden[:] = [name for name in NAMES if name not in os.environ]
                folder = sys.argv[1]
                if sys.argv[2:] != ["child"]:
                    config = LlamaConfig(
                        hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                        num_attention_heads=2, num_key_value_heads=2, vocab_size=32,
                    )
                    LlamaForCausalLM(config).save_pretrained(folder)
                Probe.from_pretrained(folder, device_map="auto")
                if sys.argv[2:] == ["child"]:
                    print(json.dumps(hidden))
                else:
                    child = subprocess.run([sys.executable, __file__, folder, "child"],
                                           capture_output=True, text=True)
                    assert child.returncode == 0, child.stderr
                    print(json.dumps({"program": hidden, "child": json.loads(child.stdout)}))
                """
            )
        )
        env = {"WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2", "RANK": "0", "HF_HUB_OFFLINE": "1"}
        options = ["--env-var", "WORLD_SIZE,LOCAL_WORLD_SIZE"]
        launched = run([*LAUNCHER, *options, str(script), str(tmp_path / "m")], tmp_path, **env)
        assert launched.returncode == 0, launched.stderr
        both = ["WORLD_SIZE", "LOCAL_WORLD_SIZE"]
        assert json.loads(launched.stdout.splitlines()[-1]) == {"program": both, "child": both}
