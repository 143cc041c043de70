"""Session export and import over HTTP (ASGI) on a real Redis: a round trip continues identically;
every bad file is a clear 4xx and creates nothing."""

from __future__ import annotations

import hashlib
import io
import pickle
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import torch
from safetensors.torch import load, save

from app.sessions.transfer import file_metadata
from model.checkpoint import WEIGHTS_FILE, weights_sha256
from tests.factories import make_checkpoint
from tests.helpers import ClientFactory

OCTETS = {"Content-Type": "application/octet-stream"}
SAMPLING = {"max_tokens": 25, "seed": 7, "temperature": 1.0, "repetition_penalty": 1.5}


@pytest.fixture
async def client(make_client: ClientFactory) -> AsyncIterator[httpx.AsyncClient]:
    async with make_client(default_model="char", max_body_bytes=200_000) as client:
        yield client


async def call(client: httpx.AsyncClient, method: str, path: str, status: int = 200, **kwargs: Any) -> Any:
    response = await client.request(method, path, **kwargs)
    assert response.status_code == status, response.text
    return response


async def exported(client: httpx.AsyncClient, model: str, prompt: str) -> tuple[str, bytes]:
    session = (await call(client, "POST", "/v1/sessions", 201, json={"model": model, "prompt": prompt})).json()["id"]
    return session, (await call(client, "GET", f"/v1/sessions/{session}/export")).content


def session_keys(redis_url: str) -> int:
    return len(redis.Redis.from_url(redis_url).keys("rnnlm:session:*"))


def rewritten(data: bytes, tensors: dict[str, torch.Tensor] | None = None, **metadata: str) -> bytes:
    """The file with some tensors and metadata replaced."""
    return save({**load(data), **(tensors or {})}, metadata={**file_metadata(data), **metadata})


@pytest.mark.parametrize(
    ("model", "prompt"), [("char", "the quick brown fox\nthe "), ("word", "the cat sat on the ma")]
)
async def test_an_imported_session_continues_exactly_like_the_original(
    client: httpx.AsyncClient, model: str, prompt: str
) -> None:
    original, data = await exported(client, model, prompt)
    imported = (await call(client, "POST", "/v1/sessions/import", 201, content=data, headers=OCTETS)).json()
    assert imported["id"] != original and imported["version"] == 1
    before = (await call(client, "GET", f"/v1/sessions/{original}")).json()
    for field in ("model", "token_count", "pending_text"):
        assert imported[field] == before[field]
    assert imported["pending_text"] == ("ma" if model == "word" else "")
    path = "/v1/sessions/{}/next-token?top_k=0"
    a = (await call(client, "GET", path.format(original))).json()["top"]
    b = (await call(client, "GET", path.format(imported["id"]))).json()["top"]
    assert [t["id"] for t in a] == [t["id"] for t in b]
    assert [t["logprob"] for t in a] == pytest.approx([t["logprob"] for t in b], abs=1e-6)
    # The repetition penalty reads the recent tokens: those travel with the file too.
    here = (await call(client, "POST", f"/v1/sessions/{original}/generate", json=SAMPLING)).json()
    there = (await call(client, "POST", f"/v1/sessions/{imported['id']}/generate", json=SAMPLING)).json()
    assert [t["id"] for t in there["tokens"]] == [t["id"] for t in here["tokens"]]
    assert there["text"] == here["text"]


async def test_the_export_is_a_plain_safetensors_file(client: httpx.AsyncClient, models_dir: Path) -> None:
    session, _ = await exported(client, "word", "the dog sat on")
    response = await call(client, "GET", f"/v1/sessions/{session}/export")
    assert response.headers["content-type"] == "application/octet-stream"
    assert response.headers["content-disposition"] == f'attachment; filename="{session}.safetensors"'
    assert response.content[8:9] == b"{"  # a JSON header, no pickle opcode anywhere
    for _ in range(3):  # the same session, the same bytes (safetensors alone orders the metadata at random)
        assert (await call(client, "GET", f"/v1/sessions/{session}/export")).content == response.content
    metadata = file_metadata(response.content)
    assert metadata == {
        "format": "rnnlm-session",
        "format_version": "1",
        "model": "word",
        "checkpoint_sha256": weights_sha256(models_dir / "word"),
        "level": "word",
        "cell": "gru",
        "pending_id": metadata["pending_id"],
        "token_count": "3",
        "pending_text": "on",
        "pending_bytes": "",  # a character a subword generation began: none here
    }
    tensors = load(response.content)
    assert sorted(tensors) == ["hidden", "history"] and tensors["hidden"].shape == (2, 1, 16)
    assert len(tensors["history"]) == 3


async def test_another_checkpoint_is_refused_naming_both_checksums(
    make_client: ClientFactory, client: httpx.AsyncClient, tmp_path: Path, redis_url: str
) -> None:
    _, data = await exported(client, "char", "hello ")
    make_checkpoint(tmp_path / "char", level="char", cell="lstm", seed=99)  # the same name, other weights
    theirs, ours = weights_sha256(tmp_path / "char"), file_metadata(data)["checkpoint_sha256"]
    before = session_keys(redis_url)
    async with make_client(models_dir=tmp_path) as other:
        response = await call(other, "POST", "/v1/sessions/import", 409, content=data, headers=OCTETS)
    error = response.json()["error"]
    assert error["type"] == "session_conflict" and error["reason"] == "checkpoint"
    assert ours in error["message"] and theirs in error["message"]
    assert (error["file_sha256"], error["model_sha256"]) == (ours, theirs)
    # Into another model of this server, by name: the same refusal.
    response = await call(client, "POST", "/v1/sessions/import?model=word", 409, content=data, headers=OCTETS)
    assert response.json()["error"]["reason"] == "checkpoint"
    assert session_keys(redis_url) == before


async def test_the_same_weights_under_another_name_are_named_with_model(
    make_client: ClientFactory, client: httpx.AsyncClient, models_dir: Path, tmp_path: Path
) -> None:
    original, data = await exported(client, "char", "hello wo")
    shutil.copytree(models_dir / "char", tmp_path / "renamed")  # another deployment's name for the same weights
    async with make_client(models_dir=tmp_path) as other:
        missing = await call(other, "POST", "/v1/sessions/import", 404, content=data, headers=OCTETS)
        assert "'char' is not loaded here (loaded: renamed)" in missing.json()["error"]["message"]
        assert "?model=" in missing.json()["error"]["message"]
        path = "/v1/sessions/import?model=renamed"
        imported = (await call(other, "POST", path, 201, content=data, headers=OCTETS)).json()
        assert imported["model"] == "renamed"
        there = await call(other, "POST", f"/v1/sessions/{imported['id']}/generate", json=SAMPLING)
    here = await call(client, "POST", f"/v1/sessions/{original}/generate", json=SAMPLING)
    assert there.json()["text"] == here.json()["text"]


def nan_state(data: bytes) -> bytes:
    hidden = load(data)["hidden"].clone()
    hidden[0, 0, 3] = float("nan")
    return rewritten(data, {"hidden": hidden})


def inf_state(data: bytes) -> bytes:
    cell = load(data)["cell"].clone()
    cell[1, 0, 0] = float("inf")
    return rewritten(data, {"cell": cell})


BAD_FILES = {
    "empty body": (lambda data: b"", "the body is empty"),
    "random bytes": (lambda data: b"\x00\xffnot a file" * 10, "not a safetensors file"),
    "truncated": (lambda data: data[:-7], "not a safetensors file"),
    "a pickle": (lambda data: pickle.dumps({"hidden": [1.0, 2.0]}), "not a safetensors file"),
    "a torch.save file": (lambda data: torch_saved(), "not a safetensors file"),
    "safetensors, not a session": (lambda data: save({"w": torch.zeros(3)}), "not a session file"),
    "a future format": (lambda data: rewritten(data, format_version="2"), "format_version '2' is not supported"),
    "wider state": (lambda data: rewritten(data, {"hidden": torch.zeros(2, 1, 32)}), "do not fit model 'char'"),
    "more layers": (
        lambda data: rewritten(data, {"hidden": torch.zeros(3, 1, 16), "cell": torch.zeros(3, 1, 16)}),
        "do not fit",
    ),
    "a batch of two": (lambda data: rewritten(data, {"hidden": torch.zeros(2, 2, 16)}), "not (layers, 1, hidden_size)"),
    "no cell state": (
        lambda data: save({"hidden": load(data)["hidden"]}, metadata=file_metadata(data)),
        "'cell' is missing",
    ),
    "an extra tensor": (lambda data: rewritten(data, {"extra": torch.zeros(1)}), "unexpected tensors ['extra']"),
    "integer state": (lambda data: rewritten(data, {"hidden": torch.zeros(2, 1, 16, dtype=torch.int32)}), "dtype"),
    "NaN": (nan_state, "'hidden' holds NaN or infinity"),
    "infinity": (inf_state, "'cell' holds NaN or infinity"),
    "pending id outside the vocabulary": (lambda data: rewritten(data, pending_id="100000"), "pending_id holds"),
    "history outside the vocabulary": (
        lambda data: rewritten(data, {"history": torch.tensor([1, -3])}),
        "history holds token id -3",
    ),
    "history of floats": (lambda data: rewritten(data, {"history": torch.zeros(2)}), "int64"),
    "token count not a number": (lambda data: rewritten(data, token_count="-1"), "not a non-negative integer"),
    "no checksum": (lambda data: rewritten(data, checkpoint_sha256=""), "'checkpoint_sha256' is missing"),
    "pending text in a char session": (lambda data: rewritten(data, pending_text="ab"), "cannot be pending"),
}


def torch_saved() -> bytes:
    buffer = io.BytesIO()
    torch.save({"hidden": torch.zeros(2, 1, 16)}, buffer)
    return buffer.getvalue()


@pytest.mark.parametrize("case", list(BAD_FILES))
async def test_a_bad_file_is_a_clear_422_and_creates_nothing(
    client: httpx.AsyncClient, redis_url: str, case: str
) -> None:
    _, data = await exported(client, "char", "hello ")
    corrupt, expected = BAD_FILES[case]
    before = session_keys(redis_url)
    response = await call(client, "POST", "/v1/sessions/import", 422, content=corrupt(data), headers=OCTETS)
    error = response.json()["error"]
    assert error["type"] == "invalid_request" and error["field"] == "body"
    assert expected in error["message"], error["message"]
    assert session_keys(redis_url) == before


async def test_framing_model_and_ttl_are_checked_before_anything_is_created(
    client: httpx.AsyncClient, redis_url: str
) -> None:
    _, data = await exported(client, "char", "hello ")
    before = session_keys(redis_url)
    path = "/v1/sessions/import"
    too_large = await call(client, "POST", path, 413, content=data + b"\x00" * 200_000, headers=OCTETS)
    assert "max_body_bytes=200000" in too_large.json()["error"]["message"]
    for content_type in ("application/json", "text/plain", ""):
        refused = await call(client, "POST", path, 415, content=data, headers={"Content-Type": content_type})
        assert "application/octet-stream" in refused.json()["error"]["message"]
    await call(client, "POST", path, 415, json={"session": "x"})
    # The concrete path is its own resource, not a session id: only POST is allowed there.
    assert (await call(client, "OPTIONS", path, 405)).headers["allow"] == "POST"
    await call(client, "POST", path + "?model=nope", 404, content=data, headers=OCTETS)
    await call(client, "POST", path + "?ttl=0", 422, content=data, headers=OCTETS)
    over = await call(client, "POST", path + "?ttl=1e9", 422, content=data, headers=OCTETS)
    assert over.json()["error"]["limit"] == "max_session_ttl"
    assert session_keys(redis_url) == before
    # A ttl in range is the new session's; the exported one's is not carried over.
    assert (await call(client, "POST", path + "?ttl=60", 201, content=data, headers=OCTETS)).json()["ttl"] == 60


async def test_export_is_checked_like_every_session_call(client: httpx.AsyncClient) -> None:
    for session in ("0" * 32, "not-an-id"):
        await call(client, "GET", f"/v1/sessions/{session}/export", 404)


async def test_an_imported_session_belongs_to_the_importing_key(make_client: ClientFactory) -> None:
    alpha, beta = {"X-API-Key": "alpha"}, {"X-API-Key": "beta"}
    async with make_client(api_keys="alpha,beta") as client:
        session = (await call(client, "POST", "/v1/sessions", 201, json={"prompt": "hi"}, headers=alpha)).json()["id"]
        await call(client, "GET", f"/v1/sessions/{session}/export", 404, headers=beta)
        await call(client, "POST", "/v1/sessions/import", 401, content=b"x", headers=OCTETS)
        data = (await call(client, "GET", f"/v1/sessions/{session}/export", headers=alpha)).content
        imported = await call(client, "POST", "/v1/sessions/import", 201, content=data, headers={**OCTETS, **beta})
        new = imported.json()["id"]
        await call(client, "GET", f"/v1/sessions/{new}", 404, headers=alpha)
        await call(client, "GET", f"/v1/sessions/{new}", headers=beta)


def test_a_checkpoints_sha256_is_that_of_its_weights_file(models_dir: Path) -> None:
    expected = hashlib.sha256((models_dir / "char" / WEIGHTS_FILE).read_bytes()).hexdigest()
    assert weights_sha256(models_dir / "char") == expected
