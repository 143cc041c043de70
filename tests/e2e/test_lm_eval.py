"""lm-evaluation-harness (`local-completions`) and the `openai` SDK on what the completions rework adds.

lm-evaluation-harness sends token-id prompts, reads `top_logprobs` on prompt tokens, and
prepends the tokenizer's `eos_token` (our line end) as its start-of-text token; its
log-likelihoods (per choice and rolling) must equal /v1/score on the same text. Its
remote tokenizer names no model, so each model under test is served as the default.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import httpx
import openai
import pytest
from lm_eval.api.instance import Instance
from lm_eval.models.openai_completions import LocalCompletionsAPI

from tests.factories import make_checkpoint
from tests.live_server import ServeProcess

TOLERANCE = {"rel_tol": 1e-5, "abs_tol": 1e-4}
TEXTS = {"char": ("hello wo", "rld and the lazy dog"), "word": ("the cat sat", " on the mat")}


@pytest.fixture(scope="module", params=["char", "word"])
def served(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, redis_url: str
) -> Iterator[tuple[str, str]]:
    """(server root, model id), the model being the server's default."""
    model: str = request.param
    root = tmp_path_factory.mktemp(f"lm-eval-{model}")
    make_checkpoint(root / "models" / "char", level="char", cell="lstm", seed=5)
    make_checkpoint(root / "models" / "word", level="word", cell="gru", seed=6)
    # float32: batched and one-by-one log-likelihoods are compared to 1e-5 (in bfloat16 the matmuls
    # of different batch shapes round differently: about 1e-3; docs/lm-eval.md says so).
    env = {
        "RNNLM_REDIS_URL": redis_url,
        "RNNLM_TORCH_THREADS": "1",
        "RNNLM_DEFAULT_MODEL": model,
        "RNNLM_DTYPE": "float32",
    }
    server = ServeProcess(root / "models", root / "server.log", env).start()
    try:
        yield server.url, model
    finally:
        server.stop()


def harness(url: str, model: str, tokenized_requests: bool = True) -> LocalCompletionsAPI:
    """As `lm_eval --model local-completions --model_args base_url=...,tokenizer_backend=remote` builds it."""
    return LocalCompletionsAPI(
        base_url=f"{url}/v1/completions",
        model=model,
        tokenizer_backend="remote",
        tokenized_requests=tokenized_requests,
        max_length=4096,  # an RNN has no window: one long enough never cuts a text into windows
        batch_size=4,
        max_retries=1,
    )


def score(url: str, model: str, text: str) -> float:
    answer = httpx.post(f"{url}/v1/score", json={"model": model, "texts": [text]}, timeout=30)
    answer.raise_for_status()
    logprob: float = answer.json()["results"][0]["logprob"]
    return logprob


def instance(kind: str, *arguments: str) -> Instance:
    return Instance(request_type=kind, doc={}, arguments=arguments, idx=0)  # type: ignore[arg-type]


@pytest.mark.parametrize("tokenized_requests", [True, False])
def test_loglikelihood_of_a_continuation_equals_v1_score(served: tuple[str, str], tokenized_requests: bool) -> None:
    url, model = served
    context, continuation = TEXTS[model]
    lm = harness(url, model, tokenized_requests)
    [(logprob, is_greedy)] = lm.loglikelihood([instance("loglikelihood", context, continuation)])
    expected = score(url, model, context + continuation) - score(url, model, context)
    assert math.isclose(logprob, expected, **TOLERANCE) and isinstance(is_greedy, bool)


def test_loglikelihood_with_an_empty_context_equals_v1_score(served: tuple[str, str]) -> None:
    """lm-evaluation-harness puts its prefix token (our line end) before the text: the line end the server starts from."""
    url, model = served
    text = "".join(TEXTS[model])
    [(logprob, _)] = harness(url, model).loglikelihood([instance("loglikelihood", "", text)])
    assert math.isclose(logprob, score(url, model, text), **TOLERANCE)


@pytest.mark.parametrize("tokenized_requests", [True, False])
def test_rolling_loglikelihood_equals_v1_score(served: tuple[str, str], tokenized_requests: bool) -> None:
    url, model = served
    texts = ["".join(TEXTS[model]), TEXTS[model][0]]
    lm = harness(url, model, tokenized_requests)
    rolling = lm.loglikelihood_rolling([instance("loglikelihood_rolling", text) for text in texts])
    for logprob, text in zip(rolling, texts, strict=True):
        assert math.isclose(logprob, score(url, model, text), **TOLERANCE)


def test_batched_choices_equal_one_by_one(served: tuple[str, str]) -> None:
    """A multiple-choice item: four continuations of one context, sent in one request as lm-evaluation-harness does."""
    url, model = served
    context = TEXTS[model][0]
    choices = [" the dog", " a cat", " on the log", " and"] if model == "word" else ["rld", "rds", " on", "nder"]
    lm = harness(url, model)
    together = lm.loglikelihood([instance("loglikelihood", context, choice) for choice in choices])
    for (logprob, _), choice in zip(together, choices, strict=True):
        assert math.isclose(logprob, score(url, model, context + choice) - score(url, model, context), **TOLERANCE)


# The openai SDK on the fields the rework adds.


@pytest.fixture(scope="module")
def sdk(served: tuple[str, str]) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{served[0]}/v1", api_key="unused", max_retries=0, timeout=30)


def test_token_id_prompts_equal_text_prompts(sdk: openai.OpenAI, served: tuple[str, str]) -> None:
    url, model = served
    text = "".join(TEXTS[model])
    ids = httpx.post(f"{url}/tokenize", json={"prompt": text}).json()["tokens"]
    by_text = sdk.completions.create(model=model, prompt=text, max_tokens=0, echo=True, logprobs=1)
    by_ids = sdk.completions.create(model=model, prompt=ids, max_tokens=0, echo=True, logprobs=1)
    assert by_ids.choices[0].logprobs is not None and by_text.choices[0].logprobs is not None
    assert by_ids.choices[0].logprobs.token_logprobs == pytest.approx(by_text.choices[0].logprobs.token_logprobs)


def test_prompt_tokens_carry_top_logprobs(sdk: openai.OpenAI, served: tuple[str, str]) -> None:
    _, model = served
    answer = sdk.completions.create(model=model, prompt="".join(TEXTS[model]), max_tokens=0, echo=True, logprobs=2)
    logprobs = answer.choices[0].logprobs
    assert logprobs is not None and logprobs.top_logprobs is not None and logprobs.token_logprobs is not None
    for own, top in zip(logprobs.token_logprobs[1:], logprobs.top_logprobs[1:], strict=True):
        assert top is not None and len(top) == 2 and own is not None and own <= max(top.values()) + 1e-6


def test_n_choices_and_logit_bias(sdk: openai.OpenAI, served: tuple[str, str]) -> None:
    url, model = served
    prompt = TEXTS[model][0]
    answer = sdk.completions.create(model=model, prompt=prompt, max_tokens=6, n=3, seed=11)
    assert sorted(choice.index for choice in answer.choices) == [0, 1, 2]
    forced = httpx.post(f"{url}/tokenize", json={"prompt": "the" if model == "word" else "z"}).json()["tokens"][0]
    greedy = sdk.completions.create(
        model=model, prompt=prompt, max_tokens=3, temperature=0, logit_bias={str(forced): 100}, logprobs=1
    )
    assert greedy.choices[0].logprobs is not None
    forced_text = httpx.post(f"{url}/detokenize", json={"tokens": [forced]}).json()["prompt"]
    assert all(token.strip() == forced_text for token in greedy.choices[0].logprobs.tokens or [])


def test_include_usage_in_a_stream(sdk: openai.OpenAI, served: tuple[str, str]) -> None:
    _, model = served
    chunks = list(
        sdk.completions.create(
            model=model,
            prompt=TEXTS[model][0],
            max_tokens=4,
            seed=3,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    # One chunk per generated token (a word model's <eos> too, with empty text), then each choice's last chunk.
    tokens = [c for c in chunks if c.choices and c.choices[0].finish_reason is None]
    usage = chunks[-1].usage
    assert chunks[-1].choices == [] and usage is not None
    assert usage.completion_tokens == len(tokens) and 1 <= len(tokens) <= 4
