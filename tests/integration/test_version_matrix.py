"""The version matrix: each Transformers release in its own venv, under real torchrun.

Marker ``matrix``, deselected by default: ``python -m pytest -m matrix`` runs it
(``.ci/run`` does, after the README's test command). For each version a fresh
venv gets ``torch==2.13.0`` (the same CPU wheel for all), ``transformers==X``,
``accelerate`` and this project's wheel, built once. Two 2-rank launches load
one tiny Llama, made once, with ``device_map="auto"``: ``unmodified_load.py``
unguarded, and ``guarded_load.py``, the same with ``guard_transformers()``
first. Affected releases shard (or raise, 4.50.0 on a CPU-only torch) unguarded;
controls give full copies; the guard gives full exact copies on all of them;
and the diagnosis command's range agrees with what happened. The table of
DTensor counts and logit differences is printed at the end of the module.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from single_instance_build._versions import is_affected_version

from torchrun_launcher import LAUNCH_TIMEOUT, WORKER, Launch, Launcher, require, run_python
from venvs import make_venv, project_wheel, run_checked

pytestmark = [pytest.mark.integration, pytest.mark.matrix]

UNGUARDED = Path(__file__).with_name("unmodified_load.py")
GUARDED = Path(__file__).with_name("guarded_load.py")
TORCH = "torch==2.13.0"  # never another: this CPU wheel is on disk, any other is gigabytes
ACCELERATE = "accelerate==1.15.0"  # installs and loads with every version below
PARAMETERS = 21

#: (version, whether Transformers switches to tensor parallelism on WORLD_SIZE there)
VERSIONS = [
    ("4.49.0", False),  # control: before the heuristic
    ("4.50.0", True),
    ("4.51.3", True),
    ("4.52.4", True),
    ("4.53.3", True),
    ("4.54.1", False),  # control: the latest 4.54 patch; 4.54 only logs
    # control: the newest 5.x that installs here. 5.25.0 requires kernels>=0.19.1,<0.20,
    # and the index these machines reach has kernels 0.17.2 at most (pip index versions).
    ("5.24.0", False),
]
SHOWN_PACKAGES = ("transformers", "accelerate", "huggingface_hub", "tokenizers")


@dataclass
class Case:
    """What one version did: its venv's packages and the reports of both launches."""

    version: str
    packages: dict[str, str] = field(default_factory=dict)
    unguarded: list[dict[str, Any]] = field(default_factory=list)
    guarded: list[dict[str, Any]] = field(default_factory=list)
    diagnosis_status: int | None = None
    seconds: float = 0.0  # venv, installs and both launches

    def fired(self) -> bool:
        """Whether the heuristic fired unguarded: a sharded model, or a load that raised."""
        return any("error" in r or r["dtensor_parameters"] for r in self.unguarded)


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    require("torch", "transformers", "accelerate")
    return tmp_path_factory.mktemp("matrix")


@pytest.fixture(scope="module")
def tiny_model(scratch: Path) -> Path:
    model_dir = scratch / "tiny-llama"
    run_python([str(WORKER), "make-model", str(model_dir)], Launcher(scratch).env)
    return model_dir


@pytest.fixture(scope="module")
def wheel(scratch: Path) -> Path:
    """This project's wheel, built once, as users install it."""
    return project_wheel(scratch / "wheels")


@pytest.fixture(scope="module")
def table(request: pytest.FixtureRequest) -> Iterator[dict[str, Case]]:
    """The cases measured so far, printed as a table when the module is done."""
    cases: dict[str, Case] = {}
    yield cases
    capture = request.config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled():
        print("\n" + format_table(cases.values()))


@pytest.fixture(scope="module", params=VERSIONS, ids=[version for version, _ in VERSIONS])
def case(
    request: pytest.FixtureRequest,
    scratch: Path,
    tiny_model: Path,
    wheel: Path,
    table: dict[str, Case],
) -> Iterator[Case]:
    """One version: a fresh venv, both launches, the diagnosis; the venv removed afterwards."""
    version = request.param[0]
    venv = scratch / f"venv-{version}"
    case = table[version] = Case(version)
    start = time.perf_counter()
    try:
        python = make_venv(venv, [TORCH, f"transformers=={version}", ACCELERATE, str(wheel)])
        shown = ", ".join(repr(name) for name in SHOWN_PACKAGES)
        listing = run_checked(
            [python, "-c", f"from importlib.metadata import version\n"
             f"for name in ({shown}): print(name, version(name))"]
        )  # fmt: skip
        case.packages = dict(line.split() for line in listing.stdout.splitlines())
        launcher = Launcher(scratch, python=python)
        case.unguarded = launch(launcher, UNGUARDED, tiny_model, f"{version}-unguarded")
        case.guarded = launch(launcher, GUARDED, tiny_model, f"{version}-guarded")
        case.diagnosis_status = subprocess.run(
            [python, "-m", "single_instance_build"],
            env=launcher.env,
            capture_output=True,
            timeout=LAUNCH_TIMEOUT,
            check=False,
        ).returncode
        case.seconds = time.perf_counter() - start
        yield case
    finally:
        shutil.rmtree(venv, ignore_errors=True)  # about 1 GB each


def launch(launcher: Launcher, script: Path, model_dir: Path, name: str) -> list[dict[str, Any]]:
    report_dir = launcher.scratch / f"reports-{name}"
    report_dir.mkdir()
    result: Launch = launcher.torchrun(
        str(script), str(model_dir), str(report_dir), report_dir=report_dir
    )
    assert result.returncodes == [0], result.output[-4000:]
    assert [report["rank"] for report in result.reports] == [0, 1], result.output[-4000:]
    return result.reports


def expected_affected(version: str) -> bool:
    return dict(VERSIONS)[version]


class TestVersionMatrix:
    def test_venv_has_the_version_and_the_one_torch(self, case: Case) -> None:
        for report in case.unguarded + case.guarded:
            assert report["transformers"] == case.version
            assert report["torch"].split("+")[0] == "2.13.0"

    def test_unguarded_heuristic_fires_exactly_on_affected_versions(self, case: Case) -> None:
        assert case.fired() == expected_affected(case.version), case.unguarded
        if not case.fired():  # a control: already full exact copies
            for report in case.unguarded:
                assert report["dtensor_parameters"] == 0, report
                assert report["max_abs_logit_diff"] == 0.0, report

    def test_guard_gives_full_exact_copy_on_every_rank(self, case: Case) -> None:
        for report in case.guarded:
            assert "error" not in report, report
            assert report["parameters"] == PARAMETERS, report
            assert report["dtensor_parameters"] == 0, report
            assert report["q_proj_local_shape"] == [64, 64], report
            assert report["max_abs_logit_diff"] == 0.0, report
            assert report["world_size_before"] == report["world_size_after"] == "2"

    def test_diagnosis_range_matches_what_happened(self, case: Case) -> None:
        assert is_affected_version(case.version) == case.fired()
        # Run in the venv without a launcher: 3 for an affected version, 0 otherwise.
        assert case.diagnosis_status == (3 if case.fired() else 0)


def outcome(reports: list[dict[str, Any]]) -> tuple[str, str]:
    """(DTensors per rank, max |logit diff| over the ranks), or the error."""
    errors = {r["error"] for r in reports if "error" in r}
    if errors:
        return "raised", "; ".join(sorted(errors))[:60]
    dtensors = "/".join(str(r["dtensor_parameters"]) for r in reports)
    return dtensors, f"{max(r['max_abs_logit_diff'] for r in reports):.4g}"


def format_table(cases: Any) -> str:
    header = [
        "transformers", "accelerate", "huggingface_hub", "tokenizers",
        "unguarded DTensors r0/r1", "unguarded max |logit diff| or error",
        "guarded DTensors r0/r1", "guarded max |logit diff|", "diagnosis: affected", "seconds",
    ]  # fmt: skip
    rows = []
    for case in cases:
        unguarded = outcome(case.unguarded) if case.unguarded else ("-", "not run")
        guarded = outcome(case.guarded) if case.guarded else ("-", "not run")
        rows.append(
            [
                case.version,
                *(case.packages.get(name, "-") for name in SHOWN_PACKAGES[1:]),
                *unguarded,
                *guarded,
                str(is_affected_version(case.version)),
                f"{case.seconds:.0f}",
            ]
        )
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(header, widths, strict=True)) + " |"]
    lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    lines += [
        "| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |"
        for row in rows
    ]
    return "version matrix: torch 2.13.0 (CPU), 2-rank torchrun, tiny Llama of 21 parameters\n" + (
        "\n".join(lines)
    )
