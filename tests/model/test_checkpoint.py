import json
import pickle
from pathlib import Path

import pytest
import torch

from model.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from tests.factories import char_tokenizer, make_checkpoint, tiny_model


@pytest.mark.parametrize("cell", ["rnn_tanh", "lstm", "gru"])
def test_round_trip_gives_identical_logits(tmp_path: Path, cell: str) -> None:
    tokenizer = char_tokenizer()
    model = tiny_model(tokenizer, cell=cell)
    save_checkpoint(tmp_path, model, tokenizer, training={"corpus": "tiny"})
    loaded = load_checkpoint(tmp_path)
    ids = torch.tensor([tokenizer.encode("hello 다람쥐").ids])
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(ids)[0], model(ids)[0], rtol=0, atol=0)
    assert loaded.tokenizer.tokens == tokenizer.tokens
    assert loaded.training == {"corpus": "tiny"}


def test_tied_weights_round_trip(tmp_path: Path) -> None:
    tokenizer = char_tokenizer()
    from model.network import RNNLM, ModelConfig

    model = RNNLM(ModelConfig(vocab_size=tokenizer.vocab_size, embedding_size=8, hidden_size=8, tie_weights=True))
    save_checkpoint(tmp_path, model.eval(), tokenizer)
    loaded = load_checkpoint(tmp_path)
    assert loaded.model.decoder.weight is loaded.model.embedding.weight
    torch.testing.assert_close(loaded.model.embedding.weight, model.embedding.weight)


def test_missing_file_is_named(tmp_path: Path) -> None:
    make_checkpoint(tmp_path)
    (tmp_path / "tokenizer.json").unlink()
    with pytest.raises(CheckpointError, match=r"tokenizer\.json: missing"):
        load_checkpoint(tmp_path)


def test_corrupt_weights_are_refused_with_the_file_named(tmp_path: Path) -> None:
    make_checkpoint(tmp_path)
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(CheckpointError, match=r"model\.safetensors"):
        load_checkpoint(tmp_path)


def test_pickle_in_place_of_weights_is_refused(tmp_path: Path) -> None:
    make_checkpoint(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(pickle.dumps({"weights": [1, 2, 3]}))
    with pytest.raises(CheckpointError, match=r"model\.safetensors: not a readable safetensors file"):
        load_checkpoint(tmp_path)


def test_shape_mismatch_is_refused(tmp_path: Path) -> None:
    make_checkpoint(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["model"]["hidden_size"] = 32
    config["model"]["embedding_size"] = 32
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="has shape"):
        load_checkpoint(tmp_path)


def test_bad_json_and_versions_are_refused(tmp_path: Path) -> None:
    make_checkpoint(tmp_path)
    config_path = tmp_path / "config.json"
    good = config_path.read_text()
    config_path.write_text("{not json")
    with pytest.raises(CheckpointError, match=r"config\.json: not valid JSON"):
        load_checkpoint(tmp_path)
    config = json.loads(good)
    config["format_version"] = 7
    config_path.write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="unsupported format_version 7"):
        load_checkpoint(tmp_path)
    config = json.loads(good)
    config["model"]["vocab_size"] = 3
    config_path.write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="vocab_size"):
        load_checkpoint(tmp_path)


def test_not_a_directory(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not a checkpoint directory"):
        load_checkpoint(tmp_path / "nope")


def test_files_are_readable_by_other_users(tmp_path: Path) -> None:
    make_checkpoint(tmp_path)
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o644, name


def test_checkpoint_written_before_pretokenizers_loads_unchanged(tmp_path: Path) -> None:
    from tests.factories import word_tokenizer

    tokenizer = word_tokenizer()
    model = tiny_model(tokenizer)
    save_checkpoint(tmp_path, model, tokenizer)
    # tokenizer.json exactly as the word level wrote it before `pretokenizer` existed.
    old = {"format_version": 1, "kind": "word", "tokens": tokenizer.tokens, "lowercase": False}
    (tmp_path / "tokenizer.json").write_text(json.dumps(old))
    loaded = load_checkpoint(tmp_path)
    assert loaded.tokenizer.to_dict() == old
    encoding = loaded.tokenizer.encode("the cat, sat\nthe dog")
    assert encoding.tokens == ["the", "cat,", "sat", "<eos>", "the", "dog"]
    assert encoding.unknown == [False, True, False, False, False, False]
    assert loaded.tokenizer.decode(encoding.ids) == "the <unk> sat\nthe dog"
    ids = torch.tensor([encoding.ids])
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(ids)[0], model(ids)[0], rtol=0, atol=0)


def test_subword_checkpoint_round_trip_keeps_the_library_json(tmp_path: Path) -> None:
    from model.subword import SubwordTokenizer

    tokenizer = SubwordTokenizer.train(["the cat sat on the mat\n", "다람쥐 헌 쳇바퀴에 타고파\n"] * 5, vocab_size=280)
    model = tiny_model(tokenizer)
    save_checkpoint(tmp_path, model, tokenizer)
    stored = json.loads((tmp_path / "tokenizer.json").read_text())
    assert stored["kind"] == "subword" and stored["tokenizer"]["model"]["type"] == "BPE"
    assert json.loads((tmp_path / "config.json").read_text())["tokenizer"] == {"kind": "subword", "vocab_size": 280}
    loaded = load_checkpoint(tmp_path)
    text = "the 다람쥐 🐿️ sat\n"
    assert loaded.tokenizer.encode(text).ids == tokenizer.encode(text).ids
    ids = torch.tensor([tokenizer.encode(text).ids])
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(ids)[0], model(ids)[0], rtol=0, atol=0)
