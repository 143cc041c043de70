import io
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from model.checkpoint import load_checkpoint, save_checkpoint
from model.cli import main
from model.inference import feed_tokens, fresh_sequences, generate_ids
from model.sampling import SamplingParams
from tests.factories import char_tokenizer, make_checkpoint, tiny_model


def run(argv: list[str], stdin: str = "") -> tuple[int, str]:
    out = io.StringIO()
    code = main(argv, stdin=io.StringIO(stdin), stdout=out)
    return code, out.getvalue()


def test_sample_is_the_prompt_plus_the_primitives_continuation(tmp_path: Path) -> None:
    make_checkpoint(tmp_path)
    code, text = run(["sample", str(tmp_path), "--prompt", "the qu", "--max-tokens", "12", "--seed", "7"])
    assert code == 0
    checkpoint = load_checkpoint(tmp_path)
    ids = generate_ids(
        checkpoint.model, checkpoint.tokenizer.boundary_id, checkpoint.tokenizer.encode("the qu").ids, 12,
        SamplingParams(), seed=7,
    )  # fmt: skip
    assert text == "the qu" + checkpoint.tokenizer.decode(ids) + "\n"
    assert run(["sample", str(tmp_path), "--prompt", "the qu", "--max-tokens", "12", "--seed", "7"])[1] == text
    assert run(["sample", str(tmp_path), "--prompt", "the qu", "--max-tokens", "12", "--seed", "8"])[1] != text


def test_sample_settings_are_passed_through(tmp_path: Path) -> None:
    make_checkpoint(tmp_path)
    greedy = [
        run(["sample", str(tmp_path), "--temperature", "0", "--max-tokens", "30", "--seed", str(s)])[1] for s in (1, 2)
    ]
    assert greedy[0] == greedy[1]  # greedy ignores the seed
    top1 = run(["sample", str(tmp_path), "--top-k", "1", "--max-tokens", "30", "--seed", "3"])[1]
    assert top1 == greedy[0]  # top-k 1 is greedy too


def test_backward_model_extends_the_prompt_to_the_left(tmp_path: Path) -> None:
    tokenizer = char_tokenizer()
    save_checkpoint(tmp_path, tiny_model(tokenizer), tokenizer, direction="backward")
    code, text = run(["sample", str(tmp_path), "--prompt", "fox", "--max-tokens", "5", "--seed", "1"])
    assert code == 0 and text.endswith("fox\n") and len(text) == len("fox\n") + 5


def test_score_matches_feeding_the_primitives(tmp_path: Path) -> None:
    make_checkpoint(tmp_path)
    checkpoint = load_checkpoint(tmp_path)
    tokenizer = checkpoint.tokenizer
    code, out = run(["score", str(tmp_path)], stdin="hello world\n다람쥐 €\n\n")
    assert code == 0
    records = [json.loads(line) for line in out.splitlines()]
    assert [r["text"] for r in records] == ["hello world", "다람쥐 €", ""]
    for record in records:
        ids = [*tokenizer.encode(record["text"]).ids, tokenizer.boundary_id]  # eos: the line end is scored
        state, pending = fresh_sequences(checkpoint.model, tokenizer.boundary_id, 1)
        expected, _, _ = feed_tokens(checkpoint.model, state, pending, [ids])
        got = torch.tensor([t["logprob"] for t in record["tokens"]])
        torch.testing.assert_close(got, expected[0], rtol=1e-5, atol=1e-5)
        assert record["token_count"] == len(ids)
        assert math.isclose(record["total_logprob"], sum(t["logprob"] for t in record["tokens"]), rel_tol=1e-6)
        assert math.isclose(record["perplexity"], math.exp(-record["total_logprob"] / len(ids)), rel_tol=1e-9)
        assert math.isclose(record["bits_per_char"], -record["total_logprob"] / math.log(2) / (len(record["text"]) + 1))
    assert [t["unknown"] for t in records[1]["tokens"]] == [False, False, False, False, True, False]  # € unseen


def test_score_a_file_without_bos_and_eos(tmp_path: Path) -> None:
    make_checkpoint(tmp_path / "ckpt")
    (tmp_path / "texts.txt").write_text("hello\n")
    code, out = run(["score", str(tmp_path / "ckpt"), str(tmp_path / "texts.txt"), "--no-bos", "--no-eos"])
    record = json.loads(out)
    assert code == 0 and record["token_count"] == 4  # "h" starts the sequence and is not scored
    assert record["tokens"][0] == {"token": "h", "logprob": None, "unknown": False}
    assert [t["token"] for t in record["tokens"]] == list("hello")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["sample", "{missing}"], "not a checkpoint directory"),
        (["sample", "{ckpt}", "--temperature", "-1"], "temperature must be"),
        (["sample", "{ckpt}", "--max-tokens", "-1"], "--max-tokens must be >= 0"),
        (["score", "{ckpt}", "{missing}"], "No such file"),
    ],
)
def test_bad_input_is_a_clear_error(
    tmp_path: Path, argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    make_checkpoint(tmp_path / "ckpt")
    paths = {"ckpt": str(tmp_path / "ckpt"), "missing": str(tmp_path / "missing")}
    assert run([a.format(**paths) for a in argv])[0] == 2
    err = capsys.readouterr().err
    assert err.startswith("rnnlm: error: ") and message in err


def test_rnnlm_entry_point_runs(tmp_path: Path) -> None:
    make_checkpoint(tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "model.cli", "score", str(tmp_path)],
        input="hello\n",
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert json.loads(result.stdout)["token_count"] == 6


def test_subword_checkpoint_samples_and_scores(tmp_path: Path) -> None:
    from model.subword import SubwordTokenizer

    tokenizer = SubwordTokenizer.train(["the cat sat on the mat\n", "다람쥐 헌 쳇바퀴에 타고파\n"] * 5, vocab_size=280)
    save_checkpoint(tmp_path, tiny_model(tokenizer), tokenizer)
    code, text = run(["sample", str(tmp_path), "--prompt", "다람쥐", "--max-tokens", "20", "--seed", "3"])
    assert code == 0 and text.startswith("다람쥐")
    line = "the 🐿️ sat"  # the squirrel is bytes the tokenizer never saw: scored, not unknown
    code, out = run(["score", str(tmp_path)], stdin=line + "\n")
    record = json.loads(out)
    assert code == 0 and record["token_count"] == len(tokenizer.encode(line).ids) + 1
    assert not any(token["unknown"] for token in record["tokens"])
    assert record["bits_per_char"] == pytest.approx(-record["total_logprob"] / (len(line) + 1) / math.log(2))
