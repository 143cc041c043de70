"""Real client packages against a live server: the `openai` SDK and lm-evaluation-harness's tokenizer.

What a user of those packages does, over real HTTP: completions whole and streamed,
prompt scoring with `echo` that agrees with /v1/score, a refused field as the SDK's 422, constraints
through `extra_body` (and a refused one as a 422), the
model list, the chat refusal, and the remote tokenizer lm-evaluation-harness builds from
/tokenizer_info, /tokenize and /detokenize. (lm-evaluation-harness's own log-likelihood runs
are in test_lm_eval.py and test_lm_eval_tasks.py.)
"""

from __future__ import annotations

import math
import re
from typing import Any

import httpx
import openai
import pytest
from lm_eval.utils import RemoteTokenizer, check_remote_tokenizer_support


@pytest.fixture(scope="module")
def client(live_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{live_url}/v1", api_key="unused", max_retries=0, timeout=30)


def score(live_url: str, model: str, texts: list[str]) -> list[float]:
    answer = httpx.post(f"{live_url}/v1/score", json={"model": model, "texts": texts}, timeout=30)
    answer.raise_for_status()
    return [result["logprob"] for result in answer.json()["results"]]


@pytest.mark.parametrize(("model", "prompt"), [("word", "the cat"), ("char", "hello wo")])
def test_completion_whole_and_streamed_agree(client: openai.OpenAI, model: str, prompt: str) -> None:
    def complete(stream: bool) -> Any:
        return client.completions.create(
            model=model, prompt=prompt, max_tokens=12, temperature=0.9, seed=7, stream=stream
        )

    whole = complete(stream=False)
    assert whole.object == "text_completion" and whole.model == model and len(whole.choices) == 1
    assert whole.usage is not None and whole.usage.prompt_tokens > 0
    pieces = [chunk.choices[0].text for chunk in complete(stream=True)]
    assert "".join(pieces) == whole.choices[0].text
    again = complete(stream=False)
    assert again.choices[0].text == whole.choices[0].text  # same seed, same text
    # The server's own fields through the SDK's extra_body: top_k=1 samples a most likely token at every
    # step, as greedy does. (Not necessarily greedy's text: top-k keeps the tokens tied with the k-th,
    # and in bfloat16, RNNLM_DTYPE=auto here, exact ties between logits are common.)
    for extra in ({"top_k": 1}, {"temperature": 0}):
        answer = client.completions.create(
            model=model, prompt=prompt, max_tokens=12, seed=3, logprobs=1, extra_body=extra
        )
        logprobs = answer.choices[0].logprobs
        assert logprobs is not None and logprobs.token_logprobs and logprobs.top_logprobs
        assert len(logprobs.token_logprobs) == 12
        for chosen, top in zip(logprobs.token_logprobs, logprobs.top_logprobs, strict=True):
            assert chosen == max(top.values())


@pytest.mark.parametrize(
    ("model", "texts"),
    [("word", ["the cat sat on the mat", "a dog and a cat"]), ("char", ["hello world", "the lazy dog"])],
)
def test_echo_scoring_equals_v1_score(client: openai.OpenAI, live_url: str, model: str, texts: list[str]) -> None:
    """lm-evaluation-harness's way of scoring: echo the prompts with logprobs, generate nothing, in one request."""
    answer = client.completions.create(model=model, prompt=texts, max_tokens=0, echo=True, logprobs=1)
    choices = sorted(answer.choices, key=lambda c: c.index)
    assert [c.text for c in choices] == texts
    expected = score(live_url, model, texts)
    for choice, logprob in zip(choices, expected, strict=True):
        assert choice.logprobs is not None and choice.logprobs.token_logprobs is not None
        assert math.isclose(math.fsum(choice.logprobs.token_logprobs), logprob, rel_tol=1e-5, abs_tol=1e-5)


def test_models_list_and_retrieve(client: openai.OpenAI) -> None:
    listed = {model.id: model for model in client.models.list()}
    assert set(listed) == {"char", "word"}
    word = client.models.retrieve("word")
    assert word.id == "word" and word.object == "model"
    assert word.model_dump() == listed["word"].model_dump()
    with pytest.raises(openai.NotFoundError, match="'nope'"):
        client.models.retrieve("nope")


def test_chat_completions_points_to_completions(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as refused:
        client.chat.completions.create(model="word", messages=[{"role": "user", "content": "hi"}])
    assert "/v1/completions" in str(refused.value) and "chat template" in str(refused.value)


@pytest.mark.parametrize(
    ("fields", "refused"),
    [
        ({"suffix": " on the mat"}, "suffix"),  # no backward partner of `word` is loaded
        ({"best_of": 2, "stream": True}, "best_of"),  # the best of several are known only at the end
    ],
)
def test_a_refused_field_is_the_sdks_422_naming_it(client: openai.OpenAI, fields: dict[str, Any], refused: str) -> None:
    with pytest.raises(openai.UnprocessableEntityError) as error:
        client.completions.create(model="word", prompt="the cat ", max_tokens=2, **fields)
    assert error.value.status_code == 422
    assert isinstance(error.value.body, dict) and error.value.body["field"] == refused
    assert refused in error.value.message


@pytest.mark.parametrize(
    ("model", "prompt", "pattern"), [("char", "hello ", "[a-z]{2,6}( [a-z]{2,6})?"), ("word", "the", "( [a-z]+){1,3}")]
)
def test_a_constraint_through_extra_body_whole_and_streamed(
    client: openai.OpenAI, model: str, prompt: str, pattern: str
) -> None:
    """vLLM's structured_outputs and the legacy guided_regex, over real HTTP; the stream spells the whole answer."""
    for seed in range(3):
        extra = {"structured_outputs": {"regex": pattern}}
        whole = client.completions.create(model=model, prompt=prompt, max_tokens=20, seed=seed, extra_body=extra)
        assert re.fullmatch(pattern, whole.choices[0].text) and whole.choices[0].finish_reason == "stop"
        stream = client.completions.create(
            model=model, prompt=prompt, max_tokens=20, seed=seed, stream=True, extra_body={"guided_regex": pattern}
        )
        assert "".join(chunk.choices[0].text for chunk in stream if chunk.choices) == whole.choices[0].text


def test_response_format_a_vocabulary_cannot_spell_is_the_sdks_422(client: openai.OpenAI) -> None:
    """The tiny char model has no "{": OpenAI's response_format is refused before anything is generated."""
    with pytest.raises(openai.UnprocessableEntityError, match="no token of this model's vocabulary can start"):
        client.completions.create(
            model="char", prompt="", max_tokens=20, extra_body={"response_format": {"type": "json_object"}}
        )


def test_lm_eval_remote_tokenizer(live_url: str) -> None:
    """The tokenizer lm-evaluation-harness builds for `local-completions`: it names no model, so the default (char)."""
    assert check_remote_tokenizer_support(f"{live_url}/v1/completions")
    tokenizer = RemoteTokenizer(f"{live_url}/v1/completions", timeout=30)
    assert tokenizer.eos_token == "\n" and tokenizer.bos_token is None
    boundary = httpx.post(f"{live_url}/v1/tokenize", json={"text": "\n"}).json()["tokens"][0]["id"]
    assert tokenizer.eos_token_id == boundary == tokenizer.eot_token
    ids = tokenizer.encode("hello world")
    assert len(ids) == len("hello world") and tokenizer.decode(ids) == "hello world"
    assert tokenizer.batch_decode([ids[:5], ids[6:]]) == ["hello", "world"]
    assert tokenizer("hi")["input_ids"] == tokenizer.encode("hi")
