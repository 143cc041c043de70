"""A session exported from one live `rnnlm-serve` and imported into another whose Redis is its own.

The second server has never seen the session: it starts its private redis-server. Imported
there, the session continues with the same seeded text (a repetition penalty included,
so the recent tokens travel too) and the same next-token distribution as the original.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.factories import make_checkpoint
from tests.live_server import ServeProcess


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[tuple[ServeProcess, ServeProcess]]:
    root = tmp_path_factory.mktemp("transfer")
    make_checkpoint(root / "models" / "char", level="char", cell="lstm", seed=3)
    make_checkpoint(root / "models" / "word", level="word", cell="gru", seed=4)
    first = ServeProcess(root / "models", root / "first.log", {"RNNLM_REDIS_URL": redis_url})
    second = ServeProcess(root / "models", root / "second.log", {"RNNLM_REDIS_URL": None})  # its own Redis
    try:
        first.launch()
        second.launch()
        yield first.wait_ready(), second.wait_ready()
    finally:
        first.stop()
        second.stop()


def call(server: ServeProcess, method: str, path: str, status: int = 200, **kwargs: Any) -> httpx.Response:
    response = httpx.request(method, server.url + path, timeout=30, **kwargs)
    assert response.status_code == status, response.text
    return response


SAMPLING = {"max_tokens": 30, "seed": 1234, "temperature": 1.0, "top_k": 8, "repetition_penalty": 1.3}


@pytest.mark.parametrize(
    ("model", "prompt", "more"), [("char", "hello wo", "rld\nthe "), ("word", "the cat", " sat on the ma")]
)
def test_an_exported_session_continues_on_a_server_with_its_own_redis(
    servers: tuple[ServeProcess, ServeProcess], model: str, prompt: str, more: str
) -> None:
    first, second = servers
    session = call(first, "POST", "/v1/sessions", 201, json={"model": model, "prompt": prompt}).json()["id"]
    call(first, "POST", f"/v1/sessions/{session}/feed", json={"text": more})
    data = call(first, "GET", f"/v1/sessions/{session}/export").content
    call(second, "GET", f"/v1/sessions/{session}", 404)  # separate stores: the second never saw it
    imported = call(
        second, "POST", "/v1/sessions/import", 201, content=data, headers={"Content-Type": "application/octet-stream"}
    ).json()
    original = call(first, "GET", f"/v1/sessions/{session}").json()
    assert {k: imported[k] for k in ("model", "token_count", "pending_text")} == {
        k: original[k] for k in ("model", "token_count", "pending_text")
    }
    path = "/v1/sessions/{}/next-token?top_k=0"
    here = call(first, "GET", path.format(session)).json()["top"]
    there = call(second, "GET", path.format(imported["id"])).json()["top"]
    assert {t["id"]: t["logprob"] for t in there} == pytest.approx({t["id"]: t["logprob"] for t in here}, abs=1e-5)
    a = call(first, "POST", f"/v1/sessions/{session}/generate", json=SAMPLING).json()
    b = call(second, "POST", f"/v1/sessions/{imported['id']}/generate", json=SAMPLING).json()
    assert b["text"] == a["text"] and [t["id"] for t in b["tokens"]] == [t["id"] for t in a["tokens"]]
    # And back: the continued session, exported from the second, is the first's again.
    back = call(second, "GET", f"/v1/sessions/{imported['id']}/export").content
    returned = call(
        first, "POST", "/v1/sessions/import", 201, content=back, headers={"Content-Type": "application/octet-stream"}
    ).json()
    assert returned["token_count"] == a["session"]["token_count"]
    feed = {"text": " the end\n", "flush": True}
    x = call(first, "POST", f"/v1/sessions/{session}/feed", json=feed).json()["tokens"]
    y = call(first, "POST", f"/v1/sessions/{returned['id']}/feed", json=feed).json()["tokens"]
    assert [t["logprob"] for t in y] == pytest.approx([t["logprob"] for t in x], abs=1e-5)
