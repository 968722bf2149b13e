"""The guard is in place however ``transformers.modeling_utils`` gets imported, and only then.

Each test runs a fresh interpreter of this environment with the real
Transformers, so that the module is imported for the first time there: by a
plain import, through Transformers' lazy module, in another thread, while
another thread is inside ``guard_transformers()``, in a ``spawn`` child, again
by ``importlib.reload`` or after a purge. ``status().installed`` must say what
the live class holds.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import single_instance_build

from support import require

pytestmark = pytest.mark.transformers

# Printed last by every child: what the live PreTrainedModel holds, and what status() claims.
VERDICT = """
import sys as _sys
from single_instance_build import _transformers as _source, is_guarded as _is_guarded
_live = _sys.modules["transformers.modeling_utils"].PreTrainedModel
print("verdict", _is_guarded(_live.from_pretrained), _source.status().installed)
"""


def run_child(code: str, value: str | None = "1", cwd: Path | None = None) -> list[str]:
    """Run *code* then VERDICT in a fresh interpreter; return the words of its verdict line."""
    lines = run_lines(textwrap.dedent(code) + VERDICT, value, cwd)
    (verdict,) = [line for line in lines if line.startswith("verdict")]
    return verdict.split()[1:]


def run_lines(code: str, value: str | None = "1", cwd: Path | None = None) -> list[str]:
    """Run *code* in a fresh interpreter; return the lines of its output."""
    env = {k: v for k, v in os.environ.items() if k not in ("SINGLE_INSTANCE_BUILD", "PYTHONPATH")}
    if value is not None:
        env["SINGLE_INSTANCE_BUILD"] = value
    try:
        done = subprocess.run(
            [sys.executable, "-c", textwrap.dedent(code)],
            env=env,
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=300,
        )
    except subprocess.TimeoutExpired:
        raise AssertionError("the child hung (a deadlock?)") from None
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.splitlines()


@pytest.fixture(autouse=True)
def _transformers_installed() -> None:
    require("torch", "transformers", "accelerate")


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A tiny random Llama saved once, in a child: this process keeps Transformers unimported."""
    path = tmp_path_factory.mktemp("tiny-llama")
    code = f"""
        import torch
        from transformers import LlamaConfig, LlamaForCausalLM
        torch.manual_seed(0)
        config = LlamaConfig(
            hidden_size=16, intermediate_size=32, num_hidden_layers=1,
            num_attention_heads=2, num_key_value_heads=2, vocab_size=32,
        )
        LlamaForCausalLM(config).save_pretrained({str(path)!r})
    """
    run_child(code, value=None)
    return str(path)


GUARDED = ["True", "True"]


class TestEveryWayOfImportingIsGuarded:
    @pytest.mark.parametrize(
        "code",
        [
            "import transformers.modeling_utils",
            "import transformers; transformers.PreTrainedModel",
            "from transformers import pipeline",
        ],
        ids=["plain", "lazy-attribute", "pipeline"],
    )
    def test_import_under_the_switch(self, code: str) -> None:
        assert run_child(code) == GUARDED

    def test_auto_model_loads_a_full_copy_where_world_size_is_set(self, tiny_model: str) -> None:
        """Unguarded, this load raises OSError: it tries to start tensor parallelism."""
        code = f"""
            import os
            os.environ["WORLD_SIZE"] = "2"
            from transformers import AutoModelForCausalLM
            model = AutoModelForCausalLM.from_pretrained({tiny_model!r}, device_map="auto")
            assert os.environ["WORLD_SIZE"] == "2"
        """
        assert run_child(code) == GUARDED

    def test_import_in_another_thread(self) -> None:
        code = """
            import importlib, threading
            importer = threading.Thread(
                target=importlib.import_module, args=("transformers.modeling_utils",)
            )
            importer.start()
            importer.join()
        """
        assert run_child(code) == GUARDED

    def test_import_in_a_spawn_child(self, tmp_path: Path) -> None:
        (tmp_path / "spawned.py").write_text(
            textwrap.dedent(
                """
                import sys
                from single_instance_build import _transformers, is_guarded

                def check():
                    from transformers.modeling_utils import PreTrainedModel
                    installed = _transformers.status().installed
                    return is_guarded(PreTrainedModel.from_pretrained), installed
                """
            )
        )
        code = """
            import multiprocessing, sys
            sys.path.insert(0, ".")
            from spawned import check
            with multiprocessing.get_context("spawn").Pool(1) as pool:
                print("spawned", *pool.apply(check))
            import transformers.modeling_utils
        """
        assert run_child(code, cwd=tmp_path) == GUARDED

    def test_off_leaves_it_alone_and_says_so(self) -> None:
        assert run_child("import transformers.modeling_utils", value=None) == ["False", "False"]


class TestImportRacingGuardTransformers:
    """Issue 14.2: a guard asked for while another thread imports modeling_utils."""

    def test_import_past_its_finder_lookup_when_guard_is_asked_for(self) -> None:
        """The importing thread holds after finding the spec, before the module exists."""
        code = """
            import importlib.util, sys, threading
            from single_instance_build import guard_transformers

            MODULE = "transformers.modeling_utils"
            found, release = threading.Event(), threading.Event()

            class HoldingLoader:
                def __init__(self, loader):
                    self.loader = loader
                def create_module(self, spec):
                    found.set()
                    release.wait()
                    spec.loader = self.loader
                    return None
                def exec_module(self, module):
                    module.__loader__ = module.__spec__.loader = self.loader
                    self.loader.exec_module(module)

            class HoldingFinder:
                def find_spec(self, name, path=None, target=None):
                    if name != MODULE:
                        return None
                    sys.meta_path.remove(self)
                    spec = importlib.util.find_spec(name)
                    spec.loader = HoldingLoader(spec.loader)
                    return spec

            import transformers
            sys.meta_path.insert(0, HoldingFinder())
            importer = threading.Thread(target=importlib.import_module, args=(MODULE,))
            importer.start()
            found.wait()
            guarding = threading.Thread(target=guard_transformers)
            guarding.start()
            guarding.join(1.0)  # fixed: it waits for the import; broken: it returned
            release.set()
            importer.join()
            guarding.join()
        """
        assert run_child(code, value=None) == GUARDED

    def test_import_while_another_thread_is_inside_guard_transformers(self) -> None:
        """A slow log handler keeps a thread inside guard_transformers() during the import."""
        code = """
            import importlib, logging, threading
            from single_instance_build import guard_transformers

            entered, release = threading.Event(), threading.Event()

            class SlowHandler(logging.Handler):
                def emit(self, record):
                    entered.set()
                    release.wait()

            import transformers.modeling_utils
            logger = logging.getLogger("single_instance_build")
            logger.setLevel(logging.DEBUG)
            logger.addHandler(SlowHandler())
            guarding = threading.Thread(target=guard_transformers)
            guarding.start()
            entered.wait()  # inside guard_transformers(), holding its lock
            logger.handlers.clear()
            del sys.modules["transformers.modeling_utils"]
            importer = threading.Thread(
                target=importlib.import_module, args=("transformers.modeling_utils",)
            )
            importer.start()
            importer.join(1.0)
            release.set()
            guarding.join()
            importer.join()
        """
        assert run_child("import sys\n" + textwrap.dedent(code), value=None) == GUARDED


class TestReloadAndReimport:
    """Issue 14.6: the live class is guarded again, and status() reads the live class."""

    @pytest.mark.parametrize(
        "again",
        [
            "importlib.reload(mu)",
            "del sys.modules['transformers.modeling_utils']\nimport transformers.modeling_utils",
        ],
        ids=["reload", "purge-and-reimport"],
    )
    @pytest.mark.parametrize("value", [None, "1"], ids=["guard_transformers()", "switch"])
    def test_guarded_again(self, again: str, value: str | None) -> None:
        code = (
            "import importlib, sys\n"
            "from single_instance_build import guard_transformers\n"
            "guard_transformers()\n"
            "import transformers.modeling_utils as mu\n"
            f"{again}\n"
        )
        assert run_child(code, value=value) == GUARDED

    def test_status_follows_the_live_class_after_unguard_of_a_reloaded_module(self) -> None:
        code = """
            import importlib, sys
            from single_instance_build import guard_transformers, unguard_transformers
            import transformers.modeling_utils as mu
            guard_transformers()
            importlib.reload(mu)
            unguard_transformers()
        """
        assert run_child(code, value=None) == ["False", "False"]

    def test_status_does_not_claim_a_guard_replaced_by_someone_else(self) -> None:
        code = """
            from single_instance_build import guard_transformers
            from transformers.modeling_utils import PreTrainedModel
            original = vars(PreTrainedModel)["from_pretrained"]
            guard_transformers()
            PreTrainedModel.from_pretrained = original
        """
        assert run_child(code, value=None) == ["False", "False"]


class TestForkWhileAnotherThreadHoldsTheGuardLock:
    """Issue 14.5: the child's guard_transformers() and status() do not hang."""

    def test_child_guards_and_reports(self) -> None:
        code = """
            import logging, os, signal, threading
            from single_instance_build import _transformers, guard_transformers

            entered, release = threading.Event(), threading.Event()

            class SlowHandler(logging.Handler):
                def emit(self, record):
                    entered.set()
                    release.wait()

            import transformers.modeling_utils
            logger = logging.getLogger("single_instance_build")
            logger.setLevel(logging.DEBUG)
            logger.addHandler(SlowHandler())
            guarding = threading.Thread(target=guard_transformers)
            guarding.start()
            entered.wait()  # the guard's lock is held by that thread now
            pid = os.fork()
            if pid == 0:
                signal.alarm(60)  # a hang ends the child, and the test with it
                logger.handlers.clear()
                guard_transformers(env_vars="RANK")
                _transformers.status()
                os._exit(0)
            release.set()
            guarding.join()
            _, wait_status = os.waitpid(pid, 0)
            assert os.waitstatus_to_exitcode(wait_status) == 0, wait_status
        """
        assert run_child(code, value=None) == GUARDED


class TestForkWhileAnotherThreadImportsModelingUtils:
    """A child forked in the middle of that import can still call guard_transformers()."""

    def test_child_guard_returns_and_claims_nothing(self) -> None:
        code = """
            import importlib.machinery, os, signal, sys, threading
            import torch  # noqa: F401 -- imported here, not in the middle of the import below
            from single_instance_build import _transformers, guard_transformers

            inside, release = threading.Event(), threading.Event()

            class Pause:  # holds the import of modeling_utils in its first own import
                def find_spec(self, name, path=None, target=None):
                    if "transformers.modeling_utils" not in sys.modules or inside.is_set():
                        return None
                    spec = importlib.machinery.PathFinder.find_spec(name, path, target)
                    if spec is None or spec.loader is None:
                        return None
                    real = spec.loader.exec_module

                    def exec_module(module):  # no import machinery lock but the module's
                        if not inside.is_set():
                            inside.set()
                            release.wait()
                        real(module)

                    spec.loader.exec_module = exec_module
                    return spec

            sys.meta_path.insert(0, Pause())
            importer = threading.Thread(target=__import__, args=("transformers.modeling_utils",))
            importer.start()
            inside.wait()  # that thread holds the module's import lock now
            pid = os.fork()
            if pid == 0:
                signal.alarm(60)  # a hang ends the child, and the test with it
                guard_transformers()
                # the child's modeling_utils is never executed: no guard is claimed
                os._exit(3 if _transformers.status().installed else 0)
            release.set()
            importer.join()
            _, wait_status = os.waitpid(pid, 0)
            assert os.waitstatus_to_exitcode(wait_status) == 0, wait_status
            guard_transformers()
        """
        assert run_child(code, value=None) == GUARDED


# Loads the tiny model where WORLD_SIZE=2 and RANK=0, in a subclass whose __init__ (run
# inside from_pretrained) records what it sees: the names the guards hid, then the values back.
LOAD = """
import os
os.environ["WORLD_SIZE"], os.environ["RANK"] = "2", "0"
from transformers import LlamaForCausalLM
seen = {{}}

class Probe(LlamaForCausalLM):
    def __init__(self, config, *args, **kwargs):
        seen.update((name, os.environ.get(name)) for name in ("WORLD_SIZE", "RANK"))
        super().__init__(config, *args, **kwargs)

Probe.from_pretrained({path!r}, device_map="auto")
print("inside", seen["WORLD_SIZE"], seen["RANK"], end=" ")
print("after", os.environ["WORLD_SIZE"], os.environ["RANK"])
from single_instance_build import _transformers
print("installed", _transformers.status().installed)
"""


@pytest.fixture
def harness(tmp_path: Path) -> Path:
    """A folder with a harness that vendors the package: harness._vendor.single_instance_build."""
    vendor = tmp_path / "harness" / "_vendor"
    vendor.mkdir(parents=True)
    (tmp_path / "harness" / "__init__.py").write_text("")
    (vendor / "__init__.py").write_text("")
    package = Path(single_instance_build.__file__).parent
    ignore = shutil.ignore_patterns("__pycache__")
    shutil.copytree(package, vendor / "single_instance_build", ignore=ignore)
    return tmp_path


class TestCopiesOfThePackage:
    """Issue 18.1: two copies of the import hook recursed; a reload left the guard off."""

    @pytest.mark.parametrize(
        "how",
        [
            "import single_instance_build._import_hook as hook\nimportlib.reload(hook)",
            "for name in [m for m in sys.modules if m.startswith('single_instance_build')]:\n"
            "    del sys.modules[name]\n"
            "from single_instance_build import guard_transformers\nguard_transformers()",
            "sys.path.insert(0, '.')\n"
            "from harness._vendor.single_instance_build import guard_transformers\n"
            "guard_transformers()",
        ],
        ids=["reloaded", "purged-and-imported-again", "vendored"],
    )
    def test_one_working_guard(self, how: str, harness: Path, tiny_model: str) -> None:
        code = "import importlib, sys\n" + how + LOAD.format(path=tiny_model)
        assert run_lines(code, cwd=harness)[-2:] == [
            "inside None 0 after 2 0",
            "installed True",
        ]

    def test_copies_that_disagree_each_hide_their_names(
        self, harness: Path, tiny_model: str
    ) -> None:
        """The switch hides WORLD_SIZE, the vendored copy RANK: a load runs inside both."""
        code = (
            "import sys\nsys.path.insert(0, '.')\n"
            "from harness._vendor.single_instance_build import _transformers as vendored\n"
            "vendored.guard_transformers(env_vars='RANK')\n"
            + LOAD.format(path=tiny_model)
            + "print('vendored', vendored.status().names, vendored.status().installed)\n"
        )
        assert run_lines(code, cwd=harness)[-3:] == [
            "inside None None after 2 0",
            "installed True",
            "vendored ('RANK',) True",
        ]

    def test_copies_share_the_scopes_of_the_one_environment(self, harness: Path) -> None:
        """Scopes of two copies that overlap in threads: the variable stays hidden until both
        end, comes back, and each copy's original_env() sees the other's scope."""
        code = """
            import os, sys, threading
            sys.path.insert(0, ".")
            import single_instance_build as a
            import harness._vendor.single_instance_build as b
            os.environ["WORLD_SIZE"] = "2"
            a_in, b_in, a_out = threading.Event(), threading.Event(), threading.Event()
            seen = []

            @a.single_instance_build
            def in_a():
                a_in.set()
                b_in.wait()

            @b.single_instance_build
            def in_b():
                seen.append(b.original_env("WORLD_SIZE"))
                b_in.set()
                a_out.wait()
                seen.append(os.environ.get("WORLD_SIZE"))

            def run_a():
                in_a()
                a_out.set()

            first = threading.Thread(target=run_a)
            first.start()
            a_in.wait()
            second = threading.Thread(target=in_b)
            second.start()
            first.join()
            second.join()
            print("original", seen[0], "after-a", seen[1], "after", os.environ.get("WORLD_SIZE"))
        """
        assert run_lines(code, value=None, cwd=harness)[-1] == "original 2 after-a None after 2"

    def test_a_reload_of_the_scopes_module_inside_a_scope_loses_nothing(self) -> None:
        code = """
            import importlib, os
            from single_instance_build import _scope, single_instance_build
            os.environ["WORLD_SIZE"] = "2"

            @single_instance_build
            def build():
                importlib.reload(_scope)

            build()
            print("after", os.environ.get("WORLD_SIZE"))
        """
        assert run_lines(code, value=None) == ["after 2"]


# typeguard's import hook for modeling_utils, as issue 18 put it; its checks of
# Transformers' own annotations (some of which the code does not meet) are ignored.
TYPEGUARD = """
import typeguard
typeguard.config.typecheck_fail_callback = lambda error, memo: None
typeguard.install_import_hook(["transformers.modeling_utils"])
"""

DIAGNOSIS = """
import io, os
os.environ["WORLD_SIZE"] = "2"
from single_instance_build._diagnose import diagnose, report
out = io.StringIO()
report(diagnose("4.53.3"), out)
for line in out.getvalue().splitlines():
    if line.startswith(("guard at the source:", "verdict:")):
        print(line.split(":")[0], line.split()[4 if line.startswith("guard") else 1])
"""


class TestFinderAheadOfTheHook:
    """Issue 18.3: typeguard's import hook, ahead of the guard's, loaded modeling_utils past it."""

    def test_typeguard_loads_modeling_utils_and_the_guard_is_put_in_place(
        self, tiny_model: str
    ) -> None:
        code = (
            TYPEGUARD
            + DIAGNOSIS
            + "import transformers.modeling_utils as mu\n"
            + "print('loader', type(mu.__spec__.loader).__name__)\n"
            + LOAD.format(path=tiny_model)
        )
        assert run_lines(code) == [
            "guard at the source BYPASSABLE",
            "verdict THIS",  # never "protected" while a finder ahead can take the import
            "loader TypeguardLoader",
            "inside None 0 after 2 0",
            "installed True",
        ]

    def test_guard_transformers_after_typeguard_puts_the_hook_ahead_of_it(self) -> None:
        code = (
            TYPEGUARD
            + "from single_instance_build import guard_transformers\nguard_transformers()\n"
            + DIAGNOSIS
            + "import transformers.modeling_utils as mu\n"
            + "print('loader', type(mu.__spec__.loader).__name__)\n"
        )
        assert run_lines(code + VERDICT, value=None) == [
            "guard at the source ARMED",
            "verdict protected.",
            "loader TypeguardLoader",
            "verdict True True",
        ]
