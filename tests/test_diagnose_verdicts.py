"""The diagnosis's verdicts and notes say what really happens, checked by real loads."""

from __future__ import annotations

import ast
import io
import os
import socket
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

import single_instance_build
from single_instance_build._diagnose import LAUNCHER_VARIABLES, diagnose, report
from single_instance_build._findings import STARTUP_OFF_VALUES, startup_variable_on

from support import require


@pytest.fixture(autouse=True)
def _no_launcher_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (*LAUNCHER_VARIABLES, "TORCHELASTIC_ERROR_FILE"):
        monkeypatch.delenv(name, raising=False)


# The variables a launcher such as torchrun sets, with the values it would give.
LAUNCHED = {"RANK": "0", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}


def verdict_of(text: str) -> str:
    [verdict] = [line for line in text.splitlines() if line.startswith("verdict:")]
    return verdict


class TestVerdictSaysWhatHappens:
    """Each verdict of an affected process names what from_pretrained really does there."""

    @pytest.mark.parametrize(
        ("env", "says"),
        [
            (
                {"WORLD_SIZE": "2"},
                "raises OSError here: it switches to tensor parallelism and tries to start "
                "torch.distributed's process group, but RANK, LOCAL_RANK, MASTER_ADDR and "
                "MASTER_PORT are unset or unusable",
            ),
            (
                {"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0"},
                "but MASTER_ADDR and MASTER_PORT are unset or unusable",
            ),
            ({**LAUNCHED, "WORLD_SIZE": "2", "MASTER_PORT": "x"}, "but MASTER_PORT is unset"),
            ({**LAUNCHED, "WORLD_SIZE": "-1"}, "but WORLD_SIZE is unset or unusable"),
            ({**LAUNCHED, "WORLD_SIZE": "1"}, "tensor parallel over this one process"),
            ({**LAUNCHED, "WORLD_SIZE": "2"}, "sharded across the processes of the launch"),
            ({"WORLD_SIZE": "two"}, "is not an integer, so from_pretrained"),
        ],
        ids=["world-size-only", "no-rendezvous", "bad-port", "negative", "one", "launch", "nan"],
    )
    def test_verdict(self, env: dict[str, str], says: str) -> None:
        os.environ.update(env)
        found = diagnose("4.53.3")  # main() would take LOCAL_RANK for a launch
        out = io.StringIO()
        report(found, out)
        text = out.getvalue()
        assert found.exit_status == 1
        assert "THIS PROCESS IS AFFECTED" in verdict_of(text)
        assert says in verdict_of(text)
        if "launch" not in says:
            assert "sharded" not in text

    def test_values_are_never_printed(self) -> None:
        os.environ.update(LAUNCHED, WORLD_SIZE="2", MASTER_PORT="not-a-port-31337")
        out = io.StringIO()
        report(diagnose("4.53.3"), out)
        text = out.getvalue()
        assert "MASTER_PORT" in text
        assert "31337" not in text
        assert "127.0.0.1" not in text


PROBE = """\
import io, os, sys
from single_instance_build._diagnose import report, diagnose
out = io.StringIO()
report(diagnose("4.53.3"), out)
print([line for line in out.getvalue().splitlines() if line.startswith("verdict:")][0])
from torch.distributed.tensor import DTensor
from transformers import AutoModelForCausalLM
try:
    model = AutoModelForCausalLM.from_pretrained(sys.argv[1], device_map="auto")
except Exception as error:
    print("raises", type(error).__name__)
else:
    parameters = list(model.parameters())
    print("dtensors", sum(isinstance(p, DTensor) for p in parameters), "of", len(parameters))
"""


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Llama saved to a folder, by a process of its own."""
    folder = tmp_path_factory.mktemp("tiny-llama")
    save = (
        "import sys\n"
        "from transformers import LlamaConfig, LlamaForCausalLM\n"
        "config = LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,\n"
        "    num_attention_heads=2, num_key_value_heads=2, vocab_size=32)\n"
        "LlamaForCausalLM(config).save_pretrained(sys.argv[1])\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARIABLES}
    subprocess.run([sys.executable, "-c", save, str(folder)], env=env, check=True)
    return folder


def free_port() -> str:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        return str(listener.getsockname()[1])


@pytest.mark.transformers
class TestVerdictMatchesARealLoad:
    """Transformers 4.53.3 loads a real model in the environment the verdict was drawn in."""

    @pytest.mark.parametrize(
        ("env", "says", "outcome"),
        [
            ({"WORLD_SIZE": "2"}, "raises OSError here", "raises OSError"),
            (
                {"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0"},
                "raises OSError here",
                "raises OSError",
            ),
            ({"WORLD_SIZE": "two"}, "raises ValueError here", "raises ValueError"),
            ({**LAUNCHED, "WORLD_SIZE": "1"}, "tensor parallel over this one process", "all"),
        ],
        ids=["world-size-only", "no-rendezvous", "nan", "one-process"],
    )
    def test_verdict_and_real_load_agree(
        self, tiny_model: Path, env: dict[str, str], says: str, outcome: str
    ) -> None:
        require("torch", "transformers", "accelerate")
        if metadata.version("transformers") != "4.53.3":
            pytest.skip("the verdicts were checked against Transformers 4.53.3")
        clean = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARIABLES}
        clean.pop("SINGLE_INSTANCE_BUILD", None)
        env = {**clean, **env, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
        if "MASTER_PORT" in env:
            env["MASTER_PORT"] = free_port()
        completed = subprocess.run(
            [sys.executable, "-c", PROBE, str(tiny_model)],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert completed.returncode == 0, completed.stderr
        verdict, loaded = completed.stdout.splitlines()[-2:]
        assert "THIS PROCESS IS AFFECTED" in verdict
        assert says in verdict
        if outcome == "all":
            dtensors, total = loaded.split()[1::2]
            assert dtensors == total != "0", loaded
        else:
            assert loaded == outcome


class TestStartupVariable:
    """What the diagnosis says of SINGLE_INSTANCE_BUILD: never a broken install where none is."""

    def diagnosis(self, *command: str, **env: str) -> subprocess.CompletedProcess[str]:
        clean = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARIABLES}
        clean.pop("SINGLE_INSTANCE_BUILD", None)
        return subprocess.run(
            [sys.executable, *command, "--transformers-version", "4.53.3"],
            env={**clean, "WORLD_SIZE": "2", **env},
            capture_output=True,
            text=True,
        )

    @pytest.mark.parametrize("value", ["off", "OFF", "false", "No", " no ", "0", ""])
    def test_off_value_is_not_reported_as_a_broken_install(self, value: str) -> None:
        completed = self.diagnosis("-m", "single_instance_build", SINGLE_INSTANCE_BUILD=value)
        assert completed.returncode == 1, completed.stderr
        assert "guard at the source: not active in this process" in completed.stdout
        assert "did not switch the guard on" not in completed.stdout

    def test_under_the_launcher_reports_the_launchers_guard(self) -> None:
        """The launcher sets the variable itself, for its children, and guards in-process."""
        completed = self.diagnosis("-m", "single_instance_build.run", "-m", "single_instance_build")
        assert completed.returncode == 0, completed.stdout + completed.stderr
        assert (
            "guard at the source: ARMED in this process, hiding WORLD_SIZE in "
            "from_pretrained(..., device_map='auto') once transformers.modeling_utils is "
            "imported; switched on by python -m single_instance_build.run"
        ) in completed.stdout
        assert "did not switch the guard on" not in completed.stdout
        assert "verdict: protected." in completed.stdout

    def test_under_python_dash_s_names_dash_s_not_the_install(self) -> None:
        """python -S runs no .pth file: the package is installed, the flag is the cause."""
        package = Path(single_instance_build.__file__).parent.parent
        code = (
            f"import sys; sys.path.insert(0, {str(package)!r}); "
            "from single_instance_build._diagnose import main; sys.exit(main())"
        )
        completed = self.diagnosis("-S", "-c", code, SINGLE_INSTANCE_BUILD="1")
        assert completed.returncode == 1, completed.stderr
        assert "is set but did not switch the guard on: python -S skips" in completed.stdout
        assert "install the package" not in completed.stdout

    @pytest.mark.parametrize(
        "value", [*STARTUP_OFF_VALUES, "OFF", " False ", "1", "on", "WORLD_SIZE", "ture"]
    )
    def test_off_values_are_those_that_start_up_does_not_guard_on(self, value: str) -> None:
        """The diagnosis's table of off values is the start-up's own."""
        code = "from single_instance_build import _transformers; print(_transformers.status())"
        clean = {k: v for k, v in os.environ.items() if k != "SINGLE_INSTANCE_BUILD"}
        completed = subprocess.run(
            [sys.executable, "-c", code],
            env={**clean, "SINGLE_INSTANCE_BUILD": value},
            capture_output=True,
            text=True,
            check=True,
        )
        guarded_at_startup = "SINGLE_INSTANCE_BUILD" in completed.stdout
        assert startup_variable_on({"SINGLE_INSTANCE_BUILD": value}) is guarded_at_startup


class TestDiagnosisImportsRunOneWay:
    """Each diagnosis module imports only modules below it, not even a cycle for typing."""

    def imports(self, module: str) -> set[str]:
        """The package's modules that *module* imports anywhere, TYPE_CHECKING blocks too."""
        source = Path(single_instance_build.__file__).parent / f"{module}.py"
        found: set[str] = set()
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module:
                found.add(node.module)
            elif isinstance(node, ast.ImportFrom) and node.module:
                prefix = "single_instance_build."
                if node.module.startswith(prefix):
                    found.add(node.module.removeprefix(prefix))
        return found

    @pytest.mark.parametrize("module", ["_versions", "_ranks", "_findings", "_diagnose"])
    def test_no_cycle_through(self, module: str) -> None:
        package = Path(single_instance_build.__file__).parent
        seen: set[str] = set()
        todo = list(self.imports(module))
        while todo:
            name = todo.pop()
            if name not in seen and (package / f"{name}.py").is_file():
                seen.add(name)
                todo.extend(self.imports(name))
        assert module not in seen

    def test_ranks_knows_nothing_of_the_findings(self) -> None:
        assert not {"_diagnose", "_findings"} & self.imports("_ranks")


# The guard asked for at start-up, then its import hook taken out of sys.meta_path
# by the program, which imports Transformers (or not) before it asks for the verdict.
UNHOOKED_PROBE = """\
import io, sys
from single_instance_build import _import_hook
sys.meta_path[:] = [finder for finder in sys.meta_path if _import_hook._table(finder) is None]
if sys.argv[2] == "imported":
    import transformers.modeling_utils
from single_instance_build._diagnose import report, diagnose
out = io.StringIO()
report(diagnose("4.53.3"), out)
lines = out.getvalue().splitlines()
print([line for line in lines if line.startswith("guard at the source:")][0])
print([line for line in lines if line.startswith("verdict:")][0])
from transformers import AutoModelForCausalLM
try:
    AutoModelForCausalLM.from_pretrained(sys.argv[1], device_map="auto")
except Exception as error:
    print("raises", type(error).__name__)
else:
    print("loads")
"""


@pytest.mark.transformers
class TestGuardNotInPlaceIsNotClaimed:
    """A guard whose hook was taken out, or whose import went by it, is not called armed."""

    @pytest.mark.parametrize(
        ("when", "says"),
        [
            ("imported", "NOT IN PLACE in this process"),
            ("not-imported", "its import hook was taken out of sys.meta_path"),
        ],
        ids=["imported-unguarded", "hook-taken-out"],
    )
    def test_verdict_is_affected_as_the_real_load(
        self, tiny_model: Path, when: str, says: str
    ) -> None:
        require("torch", "transformers", "accelerate")
        if metadata.version("transformers") != "4.53.3":
            pytest.skip("the verdicts were checked against Transformers 4.53.3")
        clean = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARIABLES}
        env = {**clean, "SINGLE_INSTANCE_BUILD": "1", "WORLD_SIZE": "2", "HF_HUB_OFFLINE": "1"}
        completed = subprocess.run(
            [sys.executable, "-c", UNHOOKED_PROBE, str(tiny_model), when],
            env={**env, "OMP_NUM_THREADS": "1"},
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert completed.returncode == 0, completed.stderr
        guard, verdict, loaded = completed.stdout.splitlines()[-3:]
        assert says in guard
        assert "ARMED" not in guard
        assert "THIS PROCESS IS AFFECTED" in verdict
        assert loaded == "raises OSError"
