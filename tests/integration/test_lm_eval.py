"""lm-evaluation-harness's HF model with ``parallelize=True`` under a real 2-process torchrun.

Marker ``lm_eval``, deselected by default: ``python -m pytest -m lm_eval`` runs it
(``.ci/run`` does). lm-eval pulls in datasets, pandas, pyarrow, scikit-learn and
more (1.4 GB), so it gets its own venv, made once per session: the same
``torch==2.13.0``, ``transformers==4.53.3``, ``lm-eval==0.4.13`` and this
project's wheel. A tiny Llama and a word-level tokenizer are saved locally (no
hub), and ``lm_eval_worker.py`` scores 12 four-choice questions with
``HFLM.loglikelihood``, each rank its own half: unguarded, guarded by
``SINGLE_INSTANCE_BUILD=1``, and in a single plain process for the reference,
whose own choices are the answer key (so a right run scores 12/12).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from torchrun_launcher import WORKER, Launcher, require, run_python
from venvs import make_venv, project_wheel, run_checked

pytestmark = [pytest.mark.integration, pytest.mark.lm_eval]

LM_EVAL_WORKER = Path(__file__).with_name("lm_eval_worker.py")
PACKAGES = (
    "torch==2.13.0",  # never another: this CPU wheel is on disk, any other is gigabytes
    "transformers==4.53.3",  # the last release that switches to tensor parallelism
    "accelerate==1.15.0",
    "lm-eval==0.4.13",
)
PARAMETERS = 21  # of the tiny Llama: embeddings, 2 layers of 9, final norm, lm_head
QUESTIONS = 12


@pytest.fixture(scope="session")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    require("torch", "transformers", "accelerate")
    return tmp_path_factory.mktemp("lm-eval")


@pytest.fixture(scope="session")
def python(scratch: Path) -> Iterator[str]:
    """The interpreter of the lm-eval venv, removed at the end of the session."""
    wheel = project_wheel(scratch / "wheels")
    venv = scratch / "venv"
    try:
        yield make_venv(venv, [*PACKAGES, str(wheel)])
    finally:
        shutil.rmtree(venv, ignore_errors=True)


@pytest.fixture(scope="session")
def launcher(scratch: Path, python: str) -> Launcher:
    launcher = Launcher(scratch, python=python)
    launcher.env.update(HF_DATASETS_OFFLINE="1", HF_HOME=str(scratch / "hf-home"))
    return launcher


@pytest.fixture(scope="session")
def model_dir(launcher: Launcher) -> Path:
    """The tiny Llama of the other integration tests, with a tokenizer saved beside it."""
    model_dir = launcher.scratch / "tiny-llama"
    run_python([str(WORKER), "make-model", str(model_dir)], launcher.env)
    make_tokenizer = [launcher.python, str(LM_EVAL_WORKER), "make-tokenizer", str(model_dir)]
    run_checked(make_tokenizer, env=launcher.env)
    return model_dir


def scores(reports: list[dict[str, Any]]) -> dict[str, list[float]]:
    """The log-likelihoods of every question's choices, gathered from the ranks' reports."""
    gathered: dict[str, list[float]] = {}
    for report in reports:
        gathered.update(report["loglikelihoods"])
    assert sorted(gathered, key=int) == [str(q) for q in range(QUESTIONS)], gathered
    return gathered


def choice(loglikelihoods: list[float]) -> int:
    return max(range(len(loglikelihoods)), key=loglikelihoods.__getitem__)


@pytest.fixture(scope="session")
def reference(launcher: Launcher, model_dir: Path) -> dict[str, list[float]]:
    """One plain process, no launcher: every question, scored by a full model."""
    report_dir = launcher.scratch / "reports-reference"
    report_dir.mkdir()
    command = [launcher.python, str(LM_EVAL_WORKER), "score", str(model_dir), str(report_dir)]
    run_checked(command, env=launcher.env)
    measured = json.loads((report_dir / "rank0.json").read_text())
    assert measured["dtensor_parameters"] == 0, measured
    return scores([measured])


def score_launch(launcher: Launcher, model_dir: Path, name: str) -> list[dict[str, Any]]:
    report_dir = launcher.scratch / f"reports-{name}"
    report_dir.mkdir()
    launch = launcher.torchrun(
        str(LM_EVAL_WORKER), "score", str(model_dir), str(report_dir), report_dir=report_dir
    )
    assert launch.returncodes == [0], launch.output[-4000:]
    assert [report["rank"] for report in launch.reports] == [0, 1], launch.output[-4000:]
    return launch.reports


@pytest.fixture(scope="session")
def unguarded(launcher: Launcher, model_dir: Path) -> list[dict[str, Any]]:
    return score_launch(launcher, model_dir, "unguarded")


@pytest.fixture(scope="session")
def guarded(launcher: Launcher, model_dir: Path) -> list[dict[str, Any]]:
    by_the_variable = Launcher(launcher.scratch, python=launcher.python)
    by_the_variable.env.update(launcher.env, SINGLE_INSTANCE_BUILD="1")
    return score_launch(by_the_variable, model_dir, "guarded")


def correct(measured: dict[str, list[float]], reference: dict[str, list[float]]) -> int:
    """How many questions *measured* answers as the reference does: its score out of 12."""
    return sum(choice(measured[q]) == choice(reference[q]) for q in reference)


def max_difference(measured: dict[str, list[float]], reference: dict[str, list[float]]) -> float:
    return max(
        abs(a - b) for q in reference for a, b in zip(measured[q], reference[q], strict=True)
    )


class TestLmEvaluationHarness:
    def test_unguarded_parallelize_shards_every_parameter(
        self, unguarded: list[dict[str, Any]]
    ) -> None:
        for report in unguarded:
            assert report["parameters"] == PARAMETERS, report
            assert report["dtensor_parameters"] == PARAMETERS, report
            assert report["package_imported"] is False

    def test_unguarded_data_parallel_score_is_wrong(
        self, unguarded: list[dict[str, Any]], reference: dict[str, list[float]]
    ) -> None:
        """Each rank feeds its own questions to a model sharded with the other: no error."""
        measured = scores(unguarded)
        assert correct(measured, reference) < QUESTIONS
        assert max_difference(measured, reference) > 1e-2

    def test_guarded_by_the_variable_loads_full_copies_and_right_score(
        self, guarded: list[dict[str, Any]], reference: dict[str, list[float]]
    ) -> None:
        for report in guarded:
            assert report["parameters"] == PARAMETERS, report
            assert report["dtensor_parameters"] == 0, report
            assert report["package_imported"] is True  # by the .pth line, not the script
            assert report["world_size_after"] == "2"
        measured = scores(guarded)
        assert correct(measured, reference) == QUESTIONS
        assert measured == reference  # the very numbers of the single plain process
