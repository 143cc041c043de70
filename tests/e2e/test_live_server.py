"""`rnnlm-serve` as a real process on a free port: the stateless API over real HTTP."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.factories import make_checkpoint
from tests.helpers import parse_sse
from tests.live_server import ServeProcess


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[str]:
    root = tmp_path_factory.mktemp("live")
    make_checkpoint(root / "models" / "char", level="char")
    make_checkpoint(root / "models" / "word", level="word")
    log = root / "server.log"
    env = {"RNNLM_REDIS_URL": redis_url, "RNNLM_TORCH_THREADS": "1", "RNNLM_MAX_TEXT_CHARS": "500"}
    server = ServeProcess(root / "models", log, env).start()
    try:
        yield server.url
    finally:
        server.stop()
    assert "Traceback" not in log.read_text()


def test_generate_whole_and_streamed_agree(server: str) -> None:
    request = {"model": "word", "prompt": "the cat", "max_tokens": 12, "seed": 5, "stop_at_eos": False}
    whole = httpx.post(f"{server}/v1/generate", json=request, timeout=30).json()
    with httpx.stream("POST", f"{server}/v1/generate", json={**request, "stream": True}, timeout=30) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = parse_sse(response.read().decode())
    assert "".join(data["text"] for event, data in events if event == "token") == whole["text"]
    assert events[-1][0] == "done" and events[-1][1]["usage"]["completion_tokens"] == 12


def test_score_next_token_and_limits_over_http(server: str) -> None:
    scored = httpx.post(f"{server}/v1/score", json={"texts": ["hello world"], "eos": True}, timeout=30).json()
    result = scored["results"][0]
    assert result["token_count"] == 12
    assert abs(result["logprob"] - sum(t["logprob"] for t in result["tokens"])) < 1e-9
    dist = httpx.post(f"{server}/v1/next-token", json={"context": "hel", "top_k": None}, timeout=30).json()
    assert abs(sum(entry["prob"] for entry in dist["top"]) - 1) < 1e-6
    assert httpx.get(f"{server}/info").json()["limits"]["max_text_chars"] == 500  # from RNNLM_MAX_TEXT_CHARS
    too_long = httpx.post(f"{server}/v1/score", json={"texts": ["x" * 501]}, timeout=30)
    assert too_long.status_code == 413 and "max_text_chars=500" in too_long.json()["error"]["message"]
    bad = httpx.post(f"{server}/v1/generate", content=b"{", headers={"content-type": "application/json"})
    assert bad.status_code == 400 and bad.json()["error"]["type"] == "invalid_json"
