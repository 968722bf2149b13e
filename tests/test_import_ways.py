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
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

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
    env = {k: v for k, v in os.environ.items() if k not in ("SINGLE_INSTANCE_BUILD", "PYTHONPATH")}
    if value is not None:
        env["SINGLE_INSTANCE_BUILD"] = value
    try:
        done = subprocess.run(
            [sys.executable, "-c", textwrap.dedent(code) + VERDICT],
            env=env,
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=300,
        )
    except subprocess.TimeoutExpired:
        raise AssertionError("the child hung (a deadlock?)") from None
    assert done.returncode == 0, done.stderr[-3000:]
    (verdict,) = [line for line in done.stdout.splitlines() if line.startswith("verdict")]
    return verdict.split()[1:]


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
