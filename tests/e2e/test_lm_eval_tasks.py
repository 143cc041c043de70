"""lm-evaluation-harness itself: `simple_evaluate` with `local-completions` and its default arguments.

A user's run, end to end: a task config and a local data set written here (a
multiple-choice task and a rolling-perplexity task), lm_eval's own task loading,
request building, batching, tokenizer auto-detection and metrics. Its logged
log-likelihoods must equal /v1/score on the same texts and its metrics follow from them.
The remote tokenizer names no model, so the model under test is the server's default.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from lm_eval import simple_evaluate
from lm_eval.tasks import TaskManager

from tests.factories import make_checkpoint
from tests.live_server import ServeProcess

pytestmark = pytest.mark.slow  # two servers and two whole lm_eval runs: about 30 s on two cores

TOLERANCE = {"rel_tol": 1e-5, "abs_tol": 1e-4}

# One context and four choices per item; lm_eval joins them with its default target delimiter, a space.
CHOICES = {
    "word": [
        ("the cat sat", ["on the mat", "on the log", "a dog", "and"], 0),
        ("the dog sat on", ["the log", "the mat", "a cat", "sat"], 0),
        ("a cat and", ["a dog", "the cat", "on", "mat"], 0),
        ("the", ["cat", "dog", "mat", "log"], 1),
    ],
    "char": [
        ("hello", ["world", "wold", "dog", "fox"], 0),
        ("the quick brown", ["fox", "dog", "cat", "hello"], 0),
        ("the lazy", ["dog", "fox", "log", "z"], 0),
        ("jumps", ["over", "under", "the", "a"], 2),
    ],
}
CHOICES["subword"] = CHOICES["char"]  # byte-level BPE: the same texts, Hangul included

DOCUMENTS = {
    "word": ["the cat sat on the mat", "a dog and a cat sat on the log", "the dog"],
    "char": ["the quick brown fox jumps over the lazy dog", "hello world", "다람쥐 헌 쳇바퀴에 타고파"],
}
DOCUMENTS["subword"] = DOCUMENTS["char"]


def write_tasks(directory: Path, level: str) -> None:
    """The two task configs and their JSONL data sets, as a user would keep them beside `--include_path`."""
    choice_data = directory / "choice.jsonl"
    rows = [{"context": c, "choices": choices, "answer": a} for c, choices, a in CHOICES[level]]
    choice_data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    rolling_data = directory / "rolling.jsonl"
    rolling_data.write_text("".join(json.dumps({"text": text}) + "\n" for text in DOCUMENTS[level]))
    common = {"dataset_path": "json", "test_split": "test", "metadata": {"version": 1.0}}
    choice_task = {
        **common,
        "task": "rnnlm_choice",
        "dataset_kwargs": {"data_files": {"test": str(choice_data)}},
        "output_type": "multiple_choice",
        "doc_to_text": "context",
        "doc_to_choice": "choices",
        "doc_to_target": "answer",
        "metric_list": [{"metric": "acc"}],
    }
    rolling_task = {
        **common,
        "task": "rnnlm_rolling",
        "dataset_kwargs": {"data_files": {"test": str(rolling_data)}},
        "output_type": "loglikelihood_rolling",
        "doc_to_text": "",
        "doc_to_target": "text",
        "metric_list": [{"metric": "word_perplexity"}, {"metric": "byte_perplexity"}, {"metric": "bits_per_byte"}],
    }
    (directory / "rnnlm_choice.yaml").write_text(yaml.safe_dump(choice_task))
    (directory / "rnnlm_rolling.yaml").write_text(yaml.safe_dump(rolling_task))


@pytest.fixture(scope="module", params=["word", "char", "subword"])
def evaluated(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, redis_url: str
) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """(server root, model id, what `simple_evaluate` returned) for a model served as the default."""
    model: str = request.param
    root = tmp_path_factory.mktemp(f"lm-eval-tasks-{model}")
    make_checkpoint(root / "models" / model, level=model, cell="gru" if model == "word" else "lstm", seed=5)
    tasks = root / "tasks"
    tasks.mkdir()
    write_tasks(tasks, model)
    env = {"RNNLM_REDIS_URL": redis_url, "RNNLM_TORCH_THREADS": "1", "RNNLM_DEFAULT_MODEL": model}
    log = root / "server.log"
    server = ServeProcess(root / "models", log, env).start()
    try:
        results = simple_evaluate(
            model="local-completions",
            model_args=f"model={model},base_url={server.url}/v1/completions",  # every other argument its default
            tasks=["rnnlm_choice", "rnnlm_rolling"],
            task_manager=TaskManager(include_path=str(tasks)),
            log_samples=True,
            bootstrap_iters=0,
        )
        assert results is not None
        yield server.url, model, dict(results)
    finally:
        server.stop()
    assert "Traceback" not in log.read_text()


def score(url: str, model: str, texts: list[str]) -> list[float]:
    """Each text's log-probability from /v1/score (start of line first, no end of line: bos true, eos false)."""
    answer = httpx.post(f"{url}/v1/score", json={"model": model, "texts": texts}, timeout=30)
    answer.raise_for_status()
    return [result["logprob"] for result in answer.json()["results"]]


def test_multiple_choice_log_likelihoods_and_acc_follow_v1_score(evaluated: tuple[str, str, dict[str, Any]]) -> None:
    url, model, results = evaluated
    samples = sorted(results["samples"]["rnnlm_choice"], key=lambda s: s["doc_id"])
    assert len(samples) == len(CHOICES[model])
    for sample, (context, choices, answer) in zip(samples, CHOICES[model], strict=True):
        assert [tuple(arguments) for arguments in sample["arguments"]] == [(context, " " + c) for c in choices]
        context_logprob, *whole = score(url, model, [context, *(f"{context} {c}" for c in choices)])
        expected = [logprob - context_logprob for logprob in whole]
        logged = [logprob for logprob, _is_greedy in sample["filtered_resps"]]
        assert logged == [logprob for [(logprob, _is_greedy)] in sample["resps"]]  # no filter on log-likelihoods
        for got, want in zip(logged, expected, strict=True):
            assert math.isclose(got, want, **TOLERANCE)
        assert sample["acc"] == float(max(range(len(expected)), key=expected.__getitem__) == answer)
    accuracy = sum(sample["acc"] for sample in samples) / len(samples)
    assert math.isclose(results["results"]["rnnlm_choice"]["acc,none"], accuracy)


def test_rolling_log_likelihood_of_a_document_equals_v1_score(evaluated: tuple[str, str, dict[str, Any]]) -> None:
    """lm_eval scores `[eos] + document` (`ctxlen` 1): the line end the server starts from, then the document."""
    url, model, results = evaluated
    samples = sorted(results["samples"]["rnnlm_rolling"], key=lambda s: s["doc_id"])
    documents = DOCUMENTS[model]
    assert [sample["arguments"][0][0] for sample in samples] == documents
    logged = [sample["filtered_resps"][0] for sample in samples]
    for got, want in zip(logged, score(url, model, documents), strict=True):
        assert math.isclose(got, want, **TOLERANCE)
    words = sum(len(document.split()) for document in documents)
    perplexity = math.exp(-sum(logged) / words)
    assert math.isclose(results["results"]["rnnlm_rolling"]["word_perplexity,none"], perplexity, rel_tol=1e-9)
