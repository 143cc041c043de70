"""Two live `rnnlm-serve` processes sharing one Redis: any of them continues any session.

A session created and fed on one server and continued on the other with a seed gives
exactly the text the first server gives for the same state and seed; a server killed
with SIGKILL and started again finds its sessions unchanged.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.factories import make_checkpoint
from tests.live_server import ServeProcess


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[tuple[ServeProcess, ServeProcess]]:
    root = tmp_path_factory.mktemp("multiprocess")
    make_checkpoint(root / "models" / "char", level="char", cell="lstm", seed=3)
    make_checkpoint(root / "models" / "word", level="word", cell="gru", seed=4)
    env = {"RNNLM_REDIS_URL": redis_url, "RNNLM_DEFAULT_MODEL": "char"}
    first = ServeProcess(root / "models", root / "first.log", env)
    second = ServeProcess(root / "models", root / "second.log", env)
    try:
        first.launch()
        second.launch()  # both start at once: each takes seconds to import torch and load
        yield first.wait_ready(), second.wait_ready()
    finally:
        first.stop()
        second.stop()


def call(server: ServeProcess, method: str, path: str, status: int = 200, **kwargs: Any) -> Any:
    response = httpx.request(method, server.url + path, timeout=30, **kwargs)
    assert response.status_code == status, response.text
    return response.json()


SAMPLING = {"max_tokens": 30, "seed": 1234, "temperature": 1.0, "top_k": 8, "repetition_penalty": 1.2}


@pytest.mark.parametrize(
    ("model", "prompt", "more"), [("char", "hello wo", "rld\nthe "), ("word", "the cat", " sat on ")]
)
def test_a_session_moves_between_servers(
    servers: tuple[ServeProcess, ServeProcess], model: str, prompt: str, more: str
) -> None:
    first, second = servers
    session = call(first, "POST", "/v1/sessions", 201, json={"model": model, "prompt": prompt})["id"]
    fed = call(first, "POST", f"/v1/sessions/{session}/feed", json={"text": more})
    twin = call(first, "POST", f"/v1/sessions/{session}/fork", 201)["id"]
    # The same state and seed: the first server continues the twin, the second the session.
    here = call(first, "POST", f"/v1/sessions/{twin}/generate", json=SAMPLING)
    there = call(second, "POST", f"/v1/sessions/{session}/generate", json=SAMPLING)
    assert there["text"] == here["text"]
    assert [t["id"] for t in there["tokens"]] == [t["id"] for t in here["tokens"]]
    assert there["session"]["token_count"] == here["session"]["token_count"] > fed["session"]["token_count"]
    # And back: the first server feeds the session the second one advanced.
    a = call(first, "POST", f"/v1/sessions/{session}/feed", json={"text": " the end\n", "flush": True})
    b = call(second, "POST", f"/v1/sessions/{twin}/feed", json={"text": " the end\n", "flush": True})
    assert [t["logprob"] for t in a["tokens"]] == pytest.approx([t["logprob"] for t in b["tokens"]], abs=1e-5)


def test_a_killed_server_finds_its_sessions_unchanged(servers: tuple[ServeProcess, ServeProcess]) -> None:
    first, second = servers
    session = call(first, "POST", "/v1/sessions", 201, json={"model": "char", "prompt": "the quick "})["id"]
    before = call(first, "GET", f"/v1/sessions/{session}")
    twin = call(second, "POST", f"/v1/sessions/{session}/fork", 201)["id"]
    expected = call(second, "POST", f"/v1/sessions/{twin}/generate", json=SAMPLING)["text"]

    first.kill()
    first.start()
    after = call(first, "GET", f"/v1/sessions/{session}")
    assert {k: after[k] for k in ("version", "token_count", "pending_text", "created_at", "updated_at")} == {
        k: before[k] for k in ("version", "token_count", "pending_text", "created_at", "updated_at")
    }
    assert call(first, "POST", f"/v1/sessions/{session}/generate", json=SAMPLING)["text"] == expected


def test_a_client_that_leaves_a_stream_early_leaves_the_session_unchanged(
    servers: tuple[ServeProcess, ServeProcess],
) -> None:
    first, _ = servers
    session = call(first, "POST", "/v1/sessions", 201, json={"model": "char", "prompt": "once "})["id"]
    body = {"max_tokens": 2000, "seed": 5, "stream": True}
    with httpx.stream("POST", f"{first.url}/v1/sessions/{session}/generate", json=body, timeout=30) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("event: token"):
                break  # one token seen; hang up
    deadline = time.monotonic() + 30
    while 'rnnlm_active_sequences{model="char"} 0.0' not in httpx.get(f"{first.url}/metrics").text:
        assert time.monotonic() < deadline, "the abandoned generation never left the engine"
        time.sleep(0.05)
    info = call(first, "GET", f"/v1/sessions/{session}")
    assert (info["version"], info["token_count"]) == (1, len("once "))
