import json
import subprocess
import sys
from pathlib import Path

import pytest

from model.checkpoint import load_checkpoint
from training.cli import build_parser, config_from_args, main
from training.config import build_config, load_recipe, recipe_names
from training.data import REGISTRY
from training.resume import STATE_JSON

from .conftest import tiny_text

TINY_RECIPE = """
expected = "nothing in particular"
level = "word"
split = "80/10/10"
[model]
embedding_size = 8
hidden_size = 8
num_layers = 1
dropout = 0.1
[optim]
batch_size = 2
bptt = 8
eval_batch_size = 2
lr = 5.0
epochs = 1
log_every = 5
threads = 1
progress = false
"""


def test_every_shipped_recipe_builds_a_valid_config() -> None:
    names = recipe_names()
    expected = {"char-shakespeare", "word-ptb-small", "word-ptb-medium", "word-wikitext2", "char-nsmc"}
    assert expected | {"char-shakespeare-quick", "word-ptb-quick"} <= set(names)
    for name in names:
        config = build_config(load_recipe(name))
        assert config.recipe == name and config.data in REGISTRY and config.expected
        config.model_config(vocab_size=100)  # a buildable network
    medium = build_config(load_recipe("word-ptb-medium"))
    assert (medium.num_layers, medium.hidden_size, medium.dropout) == (2, 650, 0.5)
    for quick in ("char-shakespeare-quick", "word-ptb-quick"):
        assert 0 < build_config(load_recipe(quick)).max_minutes <= 5  # a newcomer's first run: minutes


def test_flags_are_generated_from_the_config_with_help() -> None:
    text = build_parser().format_help()
    for flag, help_text in (
        ("--max-minutes", "wall-clock budget"),
        ("--tie-weights", "Press & Wolf"),
        ("--device", ""),
    ):
        assert flag in text and help_text in text


def test_recipe_then_set_then_flags(tmp_path: Path) -> None:
    parser = build_parser()
    args = parser.parse_args(["word-ptb-small", "--set", "lr=3", "--set", "hidden-size=64", "--hidden-size", "300"])
    config, resume = config_from_args(args, {"RNNLM_DATA_DIR": "/data"})
    assert (config.lr, config.hidden_size, config.embedding_size, config.data_dir) == (3.0, 300, 300, "/data")
    assert resume is None and config.recipe == "word-ptb-small"
    assert config.out == "runs/word-ptb-small"  # each recipe its own directory unless --out says otherwise
    own, _ = config_from_args(parser.parse_args(["word-ptb-small", "--out", str(tmp_path)]), {})
    assert own.out == str(tmp_path)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["word-ptb-small", "--set", "hiden_size=3"], "unknown config key 'hiden_size'"),
        (["word-ptb-small", "--set", "batch_size=many"], "batch_size must be int, not 'many'"),
        (["word-ptb-small", "--set", "lr"], "--set expects key=value"),
        (["word-ptb-small", "--batch-size", "0"], "batch_size must be at least 1"),
        (["no-such-recipe"], "unknown recipe 'no-such-recipe'; shipped recipes: char-nsmc"),
        (["word-ptb-small", "--data", "/no/such/file.txt"], "/no/such/file.txt: no such file or directory"),
        (["--resume", "/no/such/run"], "training_state.json: missing"),
    ],
)
def test_bad_input_is_a_clear_error(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("rnnlm-train: error: ") and message in err and "Traceback" not in err


def test_train_from_a_recipe_file_and_resume(tmp_path: Path) -> None:
    recipe = tmp_path / "tiny.toml"
    recipe.write_text(TINY_RECIPE)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(tiny_text(80))
    out = tmp_path / "model"
    assert main([str(recipe), "--data", str(corpus), "--out", str(out), "--direction", "backward"]) == 0
    checkpoint = load_checkpoint(out)
    assert checkpoint.direction == "backward" and checkpoint.training["recipe"] == "tiny"
    assert checkpoint.training["split_rule"].startswith("by lines") and checkpoint.training["epochs"] == 1
    assert {"metrics.jsonl", "curves.png", "training_state.json", "training_state.safetensors"} <= {
        p.name for p in out.iterdir()
    }
    steps_one_epoch = checkpoint.training["steps"]

    assert main(["--resume", str(out), "--epochs", "2"]) == 0  # one more epoch on the same run
    resumed = load_checkpoint(out)
    assert resumed.training["steps"] == 2 * steps_one_epoch and resumed.training["epochs"] == 2
    assert resumed.direction == "backward"  # the saved config, not the recipe defaults
    state = json.loads((out / STATE_JSON).read_text())
    assert state["progress"]["step"] == 2 * steps_one_epoch and state["config"]["epochs"] == 2


def test_resume_with_a_different_model_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    recipe = tmp_path / "tiny.toml"
    recipe.write_text(TINY_RECIPE)
    (tmp_path / "corpus.txt").write_text(tiny_text(40))
    out = tmp_path / "model"
    assert main([str(recipe), "--data", str(tmp_path / "corpus.txt"), "--out", str(out), "--max-steps", "2"]) == 0
    capsys.readouterr()
    assert main(["--resume", str(out), "--hidden-size", "12", "--embedding-size", "12"]) == 2
    assert "does not fit this config" in capsys.readouterr().err


def test_python_dash_m_training_lists_the_recipes() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "training", "--list-recipes"], capture_output=True, text=True, check=True, timeout=120
    )
    assert "word-ptb-small" in result.stdout and "char-shakespeare-quick" in result.stdout
