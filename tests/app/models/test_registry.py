"""Loading the models directory: ids from directory names, the default model, the device, clear failures."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from app.cli import main
from app.metrics import Metrics
from app.models.registry import ModelsDirError, load_models, resolve_device
from app.settings import Settings
from tests.factories import make_checkpoint


def test_every_checkpoint_directory_is_a_model_named_after_it(tmp_path: Path) -> None:
    make_checkpoint(tmp_path / "b-word", level="word")
    make_checkpoint(tmp_path / "a-char", level="char")
    (tmp_path / "notes").mkdir()  # no config.json: not a checkpoint
    registry = load_models(Settings(models_dir=tmp_path, device="cpu"), Metrics())
    assert sorted(registry.models) == ["a-char", "b-word"]
    assert registry.default_id == "a-char"  # the first by name
    assert registry.get(None).id == "a-char" and registry.get("b-word").level == "word"
    chosen = load_models(Settings(models_dir=tmp_path, device="cpu", default_model="b-word"), Metrics())
    assert chosen.default_id == "b-word"


@pytest.mark.parametrize(
    ("setup", "overrides", "needle"),
    [
        (lambda root: None, {"models_dir": Path("/nonexistent/models")}, "does not exist"),
        (lambda root: None, {}, "holds no checkpoint directories"),
        (lambda root: make_checkpoint(root / "char"), {"default_model": "nope"}, "RNNLM_DEFAULT_MODEL='nope'"),
    ],
)
def test_a_directory_that_cannot_be_served_says_why(
    tmp_path: Path, setup: object, overrides: dict, needle: str
) -> None:
    setup(tmp_path)  # type: ignore[operator]
    settings = Settings(**{"models_dir": tmp_path, "device": "cpu", **overrides})
    with pytest.raises(ModelsDirError, match=needle.replace("(", r"\(")):
        load_models(settings, Metrics())


def test_device_setting() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ModelsDirError, match="RNNLM_DEVICE=cuda but no CUDA device"):
            resolve_device("cuda")


@pytest.mark.parametrize(("name", "needle"), [("missing", "does not exist"), ("empty", "holds no checkpoint")])
def test_rnnlm_serve_refuses_a_missing_or_empty_directory_even_when_watching(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, needle: str
) -> None:
    (tmp_path / "empty").mkdir()
    assert Settings().models_poll_seconds > 0  # the watcher adds to a running server; it is no start with nothing
    assert main(["--models", str(tmp_path / name), "--port", "0"]) == 1
    assert f"rnnlm-serve: cannot start: models directory {tmp_path / name} {needle}" in capsys.readouterr().err
