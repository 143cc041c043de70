"""API keys, sessions that belong to their key, nothing ever unpickled, no internals in error bodies."""

from __future__ import annotations

import hashlib
import hmac
import pickle
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import torch

from app.http.security import ApiKeys
from app.main import create_app
from app.models.registry import ModelsDirError
from app.settings import Settings
from tests.factories import make_checkpoint
from tests.helpers import ClientFactory, running

KEYS = "alpha-key-0123456789, beta-key-9876543210"  # blanks around a key are ignored
ALPHA = {"Authorization": "Bearer alpha-key-0123456789"}
BETA = {"X-API-Key": "beta-key-9876543210"}


@pytest.fixture
async def client(make_client: ClientFactory) -> AsyncIterator[httpx.AsyncClient]:
    async with make_client(api_keys=KEYS, default_model="char", redis_timeout=5.0) as client:  # a busy CI box
        yield client


PROTECTED = [
    ("GET", "/v1/models", None),
    ("POST", "/v1/generate", {"max_tokens": 2}),
    ("POST", "/v1/score", {"texts": ["hi"]}),
    ("POST", "/v1/next-token", {"context": "hi"}),
    ("GET", "/v1/models/char", None),
    ("POST", "/v1/tokenize", {"text": "hi"}),
    ("GET", "/tokenizer_info", None),
    ("POST", "/tokenize", {"prompt": "hi"}),
    ("POST", "/detokenize", {"tokens": [1]}),
    ("POST", "/v1/completions", {"prompt": "hi", "max_tokens": 2}),
    ("POST", "/v1/sessions", {}),
    ("GET", "/info", None),
    ("GET", "/metrics", None),
]


@pytest.mark.parametrize(("method", "path", "body"), PROTECTED)
async def test_without_a_valid_key_every_api_route_is_401(
    client: httpx.AsyncClient, method: str, path: str, body: Any
) -> None:
    for headers in [
        {},
        {"Authorization": "Bearer wrong"},
        {"X-API-Key": "alpha-key-012345678"},  # a prefix of a real key
        {"Authorization": "Basic YWxwaGEta2V5LTAxMjM0NTY3ODk6"},  # not a bearer token
        {"Authorization": "Bearer "},
    ]:
        response = await client.request(method, path, json=body, headers=headers)
        assert response.status_code == 401, (headers, response.text)
        assert response.json()["error"]["type"] == "unauthorized"
        assert response.headers["www-authenticate"] == "Bearer"
    for headers in (ALPHA, BETA):  # either key, either header
        response = await client.request(method, path, json=body, headers=headers)
        assert response.status_code in (200, 201), response.text


async def test_probes_and_the_playground_page_stay_open(client: httpx.AsyncClient) -> None:
    assert (await client.get("/health")).status_code == 200
    assert (await client.get("/ready")).status_code == 200
    for path in ("/", "/static/playground.js", "/static/playground.css"):
        assert (await client.get(path)).status_code == 200, path


async def test_the_key_is_checked_before_the_request_is_validated(client: httpx.AsyncClient) -> None:
    bad = await client.post("/v1/generate", json={"temperature": "hot"})
    assert bad.status_code == 401
    # Only the framing comes first: size cap, content type, UTF-8 and JSON syntax (nothing is learnt from them).
    json_type = {"content-type": "application/json"}
    assert (await client.post("/v1/generate", content=b"{", headers=json_type)).status_code == 400
    assert (await client.post("/v1/generate", json={"temperature": "hot"}, headers=ALPHA)).status_code == 422


async def test_without_keys_configured_nothing_needs_one(make_client: ClientFactory) -> None:
    async with make_client(api_keys="") as client:  # set but empty: keys are off
        assert (await client.post("/v1/generate", json={"max_tokens": 2})).status_code == 200
        assert (await client.get("/metrics")).status_code == 200


def test_every_configured_key_is_compared_whichever_matches(monkeypatch: pytest.MonkeyPatch) -> None:
    keys = ApiKeys.parse("one, two ,three,,")
    assert len(keys.digests) == 3 and ApiKeys.parse(" , ").enabled is False
    calls: list[int] = []
    real = hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        calls.append(1)
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", counting)
    for key in ("one", "three", "nope", "x" * 10_000):
        calls.clear()
        identity = keys.identify(key)
        assert len(calls) == 3  # no early exit on a match or on a length difference
        assert identity == (hashlib.sha256(key.encode()).hexdigest() if key in ("one", "three") else None)


async def test_a_session_belongs_to_the_key_that_made_it(client: httpx.AsyncClient, redis_url: str) -> None:
    created = await client.post("/v1/sessions", json={"prompt": "hello"}, headers=ALPHA)
    assert created.status_code == 201
    session = created.json()["id"]
    base = f"/v1/sessions/{session}"
    unknown = await client.get("/v1/sessions/" + "0" * 32, headers=BETA)
    assert unknown.status_code == 404
    for method, path, body in [
        ("GET", base, None),
        ("POST", f"{base}/feed", {"text": " world"}),
        ("POST", f"{base}/generate", {"max_tokens": 3}),
        ("POST", f"{base}/generate", {"max_tokens": 3, "stream": True}),
        ("GET", f"{base}/next-token", None),
        ("POST", f"{base}/fork", {}),
        ("DELETE", base, None),
        ("POST", f"{base}/feed", {"text": "x", "model": "word", "expected_version": 7}),  # 404 before any 409
    ]:
        response = await client.request(method, path, json=body, headers=BETA)
        assert response.status_code == 404, (method, path, response.text)
        # The same answer as for a session that does not exist: nothing tells them apart.
        assert response.json()["error"]["message"] == unknown.json()["error"]["message"].replace("0" * 32, session)
        assert "hello" not in response.text
    # Untouched by all that, and still the owner's; a fork belongs to the owner too.
    info = (await client.get(base, headers=ALPHA)).json()
    assert (info["version"], info["token_count"]) == (1, len("hello"))
    fork = (await client.post(f"{base}/fork", headers=ALPHA)).json()["id"]
    assert (await client.get(f"/v1/sessions/{fork}", headers=BETA)).status_code == 404
    assert (await client.get(f"/v1/sessions/{fork}", headers=ALPHA)).status_code == 200
    # The record holds the key's SHA-256, never the key.
    stored = redis.Redis.from_url(redis_url).hget(f"rnnlm:session:{session}", "d")
    assert stored is not None and b"alpha-key" not in stored
    assert hashlib.sha256(b"alpha-key-0123456789").hexdigest().encode() in stored
    assert (await client.delete(base, headers=ALPHA)).status_code == 204


async def test_sessions_made_with_and_without_keys_stay_apart(make_client: ClientFactory) -> None:
    async with make_client() as open_client:
        anonymous = (await open_client.post("/v1/sessions", json={"prompt": "hi"})).json()["id"]
    async with make_client(api_keys=KEYS) as client:
        assert (await client.get(f"/v1/sessions/{anonymous}", headers=ALPHA)).status_code == 404
        keyed = (await client.post("/v1/sessions", json={"prompt": "hi"}, headers=ALPHA)).json()["id"]
    async with make_client() as open_client:  # keys turned off again
        assert (await open_client.get(f"/v1/sessions/{anonymous}")).status_code == 200
        assert (await open_client.get(f"/v1/sessions/{keyed}")).status_code == 404


# Nothing is ever unpickled ------------------------------------------------------------------


class _Planted:
    """Unpickling this creates `marker`: proof that something unpickled it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (self.marker,))


def plant_pickle(path: Path, marker: Path) -> None:
    path.write_bytes(pickle.dumps({"embedding.weight": _Planted(marker)}))


@pytest.fixture
def no_unpickling(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Any call to pickle.load(s) or torch.load is recorded and refused."""
    calls: list[str] = []

    def refuse(name: str) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            calls.append(name)
            raise AssertionError(f"{name} was called")

        return call

    monkeypatch.setattr(pickle, "load", refuse("pickle.load"))
    monkeypatch.setattr(pickle, "loads", refuse("pickle.loads"))
    monkeypatch.setattr(torch, "load", refuse("torch.load"))
    return calls


async def test_a_pickle_posing_as_safetensors_is_refused_naming_the_file(
    tmp_path: Path, redis_url: str, no_unpickling: list[str]
) -> None:
    marker = tmp_path / "unpickled"
    bad = make_checkpoint(tmp_path / "models" / "evil", level="char")
    plant_pickle(bad / "model.safetensors", marker)
    app = create_app(Settings(models_dir=tmp_path / "models", redis_url=redis_url))
    with pytest.raises(ModelsDirError, match=r"evil/model\.safetensors: not a readable safetensors file"):
        async with running(app):
            pass
    assert not marker.exists() and no_unpickling == []


async def test_stray_pickles_in_a_checkpoint_dir_are_never_loaded(
    tmp_path: Path, redis_url: str, no_unpickling: list[str]
) -> None:
    marker = tmp_path / "unpickled"
    good = make_checkpoint(tmp_path / "models" / "char", level="char")
    for name in ("pytorch_model.bin", "model.pt", "optimizer.pt", "state.pkl"):
        plant_pickle(good / name, marker)
    torch_file = tmp_path / "model.pt"  # a real torch.save file too (itself a zip of pickles)
    torch.save({"embedding.weight": _Planted(marker)}, torch_file)
    shutil.copy(torch_file, good / "checkpoint.pth")
    app = create_app(Settings(models_dir=tmp_path / "models", redis_url=redis_url, torch_threads=1))
    async with running(app) as client:
        assert (await client.post("/v1/score", json={"texts": ["hello"]})).status_code == 200
        session = (await client.post("/v1/sessions", json={"prompt": "hi"})).json()["id"]
        assert (await client.post(f"/v1/sessions/{session}/feed", json={"text": "!"})).status_code == 200
    assert not marker.exists() and no_unpickling == []


# No internals in error bodies ---------------------------------------------------------------

LEAKS = ("Traceback", "/work", '.py"', ".py'", 'File "', "site-packages")


def assert_no_internals(response: httpx.Response, *paths: Path) -> None:
    for needle in (*LEAKS, *(str(p) for p in paths)):
        assert needle not in response.text, f"{response.request.url}: {needle!r} in {response.text[:300]}"


async def test_error_bodies_never_show_traces_or_paths(
    make_client: ClientFactory, models_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    json_type = {"content-type": "application/json"}
    async with make_client(api_keys=KEYS, max_body_bytes=4000) as client:
        responses = [
            await client.post("/v1/generate", json={}),
            await client.post("/v1/generate", content=b'{"prompt": ', headers={**json_type, **ALPHA}),
            await client.post("/v1/generate", content=b'{"prompt": "\xff"}', headers={**json_type, **ALPHA}),
            await client.post("/v1/generate", content=b"x", headers={"content-type": "text/plain", **ALPHA}),
            await client.post("/v1/generate", json={"model": "../../etc"}, headers=ALPHA),
            await client.post("/v1/generate", json={"temperature": [1]}, headers=ALPHA),
            await client.post("/v1/score", json={"texts": ["x" * 5000]}, headers=ALPHA),
            await client.post("/v1/detokenize", json={"ids": [10**9]}, headers=ALPHA),
            await client.get("/v1/sessions/../../etc/passwd", headers=ALPHA),
            await client.get("/v1/sessions/" + "a" * 32, headers=ALPHA),
            await client.get("/nowhere", headers=ALPHA),
        ]
        assert [r.status_code for r in responses] == [401, 400, 400, 415, 404, 422, 413, 422, 404, 404, 404]

        # An unexpected failure deep inside: a 500 that says nothing of where or why.
        def explode(*args: Any, **kwargs: Any) -> Any:
            raise RuntimeError(f"boom in {models_dir}/char/model.safetensors at /work/main/app/engine.py")

        app = client._transport.app  # type: ignore[attr-defined]
        monkeypatch.setattr(app.state.models.get("char").engine, "feed", explode)
        # As a real server does: Starlette re-raises after answering 500, for the server to log it.
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as raw:
            crashed = await raw.post("/v1/score", json={"texts": ["hello"]}, headers=ALPHA)
        assert crashed.status_code == 500
        assert crashed.json() == {"error": {"type": "internal_error", "message": "internal server error"}}
        responses.append(crashed)
    for response in responses:
        assert response.json()["error"]["message"]
        assert_no_internals(response, models_dir)
