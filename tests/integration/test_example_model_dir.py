"""The examples' model folder: made whole, reused only when it is the examples' own.

These need torch and Transformers but start no launch: they call the functions
of ``examples/tiny_model.py``, which the examples share, on folders made for the purpose.
"""

from __future__ import annotations

import importlib.util
import shutil
import stat
import tempfile
from pathlib import Path
from types import ModuleType

import pytest

from torchrun_launcher import require

pytestmark = pytest.mark.integration

TINY_MODEL = Path(__file__).resolve().parents[2] / "examples" / "tiny_model.py"


@pytest.fixture(scope="module")
def example() -> ModuleType:
    require("torch", "transformers")
    spec = importlib.util.spec_from_file_location("tiny_model", TINY_MODEL)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def made(example: ModuleType, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model folder the example made, to copy from."""
    model_dir = tmp_path_factory.mktemp("made") / "model"
    example.make_tiny_model(model_dir)
    return model_dir


def copy_of(made: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(made, tmp_path / "model"))


class TestModelDir:
    def test_made_folder_has_a_manifest_and_is_reused_as_it_is(
        self, example: ModuleType, made: Path, tmp_path: Path
    ) -> None:
        model_dir = copy_of(made, tmp_path)
        before = {p.name: p.stat().st_mtime_ns for p in model_dir.iterdir()}
        assert example.prepare_model_dir(model_dir) == model_dir
        assert {p.name: p.stat().st_mtime_ns for p in model_dir.iterdir()} == before
        assert example.MANIFEST in before
        assert "eval_set.json" in before

    def test_foreign_folder_is_refused_and_left_alone(
        self, example: ModuleType, tmp_path: Path
    ) -> None:
        model_dir = tmp_path / "model"
        model_dir.mkdir()
        (model_dir / "config.json").write_text('{"model_type": "someone-elses"}')
        with pytest.raises(ValueError, match=r"exists but holds no manifest of this example"):
            example.prepare_model_dir(model_dir)
        assert [p.name for p in model_dir.iterdir()] == ["config.json"]

    def test_half_written_folder_without_its_manifest_is_refused(
        self, example: ModuleType, made: Path, tmp_path: Path
    ) -> None:
        model_dir = copy_of(made, tmp_path)
        (model_dir / example.MANIFEST).unlink()
        with pytest.raises(ValueError, match=r"holds no manifest"):
            example.prepare_model_dir(model_dir)

    @pytest.mark.parametrize("damage", ["truncate", "add", "remove"])
    def test_changed_files_are_refused(
        self, example: ModuleType, made: Path, tmp_path: Path, damage: str
    ) -> None:
        model_dir = copy_of(made, tmp_path)
        if damage == "truncate":
            weights = model_dir / "model.safetensors"
            weights.write_bytes(weights.read_bytes()[:100])
        elif damage == "add":
            (model_dir / "extra.py").write_text("print('hello')")
        else:
            (model_dir / "eval_set.json").unlink()
        with pytest.raises(ValueError, match=r"files do not match its manifest"):
            example.prepare_model_dir(model_dir)

    def test_a_folder_another_process_made_first_is_kept(
        self, example: ModuleType, made: Path, tmp_path: Path
    ) -> None:
        """Two launches racing to make the same folder: the loser checks and uses the winner's."""
        model_dir = copy_of(made, tmp_path)
        example.make_tiny_model(model_dir)  # as if it had found no folder a moment before
        example.check_model_dir(model_dir)
        assert [p.name for p in tmp_path.iterdir()] == ["model"]  # no staging folder left

    def test_default_is_a_new_private_folder_each_time(
        self, example: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
        first, second = example.prepare_model_dir(None), example.prepare_model_dir(None)
        assert first != second
        for model_dir in (first, second):
            assert model_dir.parent.parent == tmp_path
            assert stat.S_IMODE(model_dir.parent.stat().st_mode) == 0o700
            example.check_model_dir(model_dir)
