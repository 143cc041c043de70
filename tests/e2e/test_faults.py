"""Faults injected for real: Redis killed under session load, a server SIGKILLed mid-stream, bad checkpoints.

(A client hanging up mid-stream is tested in tests/app/system/test_system.py and
tests/e2e/test_sessions_multiprocess.py; Redis killed or stalled on a quiet server in
tests/app/sessions/test_redis_outage.py.)
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from safetensors.torch import load_file, save_file

from app.main import create_app
from app.models.registry import ModelsDirError
from app.settings import Settings
from tests.factories import make_checkpoint, word_tokenizer
from tests.helpers import running, wait_until
from tests.live_server import ServeProcess, serve_command
from tests.redis_server import RedisServer, free_port

PROMPT, PIECE = "ab", "xy"  # char model: one token per character


@dataclass
class Feeder:
    """One session under load: what the service acknowledged, and what happened meanwhile."""

    id: str
    version: int = 1
    token_count: int = len(PROMPT)
    uncertain: bool = False  # a feed failed: its write may or may not have reached Redis
    acks: int = 0
    failures: list[float] = field(default_factory=list)  # seconds each 503 took

    async def run(self, client: httpx.AsyncClient, stop: asyncio.Event) -> None:
        while not stop.is_set():
            body = {"text": PIECE, "expected_version": self.version}  # the next write must follow the last ack
            started = time.monotonic()
            response = await client.post(f"/v1/sessions/{self.id}/feed", json=body)
            took = time.monotonic() - started
            if response.status_code == 200:
                session = response.json()["session"]
                assert (session["version"], session["token_count"]) == (self.version + 1, self.token_count + 2)
                self.version, self.token_count = session["version"], session["token_count"]
                self.uncertain = False
                self.acks += 1
            elif response.status_code == 503:
                assert response.json()["error"]["type"] == "unavailable", response.text
                self.failures.append(took)
                self.uncertain = True
                await asyncio.sleep(0.02)
            elif response.status_code == 409 and self.uncertain:
                # The failed feed did land before the connection dropped: exactly one more write, never a lost one.
                current = response.json()["error"]["version"]
                assert current == self.version + 1, response.text
                self.version, self.token_count, self.uncertain = current, self.token_count + 2, False
            else:
                raise AssertionError(f"feed {self.id}: {response.status_code} {response.text}")


def no_feeder_failed(tasks: list[asyncio.Task[None]]) -> bool:
    """True, or the exception of a feeder that failed (it says why at once)."""
    for task in tasks:
        if task.done():
            task.result()
    return True


async def test_redis_killed_under_session_load_loses_no_acknowledged_write(tmp_path: Path) -> None:
    make_checkpoint(tmp_path / "models" / "char", level="char", seed=5)
    server = RedisServer(tmp_path / "redis", appendonly=True).start()  # AOF, appendfsync always
    settings = Settings(models_dir=tmp_path / "models", redis_url=server.url, torch_threads=1)
    try:
        async with running(create_app(settings)) as client:
            created = [await client.post("/v1/sessions", json={"prompt": PROMPT}) for _ in range(16)]
            feeders = [Feeder(response.json()["id"]) for response in created]
            stop = asyncio.Event()
            tasks = [asyncio.create_task(feeder.run(client, stop)) for feeder in feeders]
            try:
                await wait_until(
                    lambda: no_feeder_failed(tasks) and all(f.acks >= 3 for f in feeders),
                    "every session fed three times",
                    60,
                )
                server.kill()  # SIGKILL in the middle of the traffic
                await wait_until(
                    lambda: no_feeder_failed(tasks) and all(f.failures for f in feeders),
                    "every session to see the outage",
                    10,
                )
                # Stateless calls do not need Redis and keep answering meanwhile.
                for path, body in [("/v1/score", {"texts": ["hello"]}), ("/v1/generate", {"max_tokens": 4})]:
                    assert (await client.post(path, json=body)).status_code == 200
                acks_before = [f.acks for f in feeders]
                server.start()  # same port, same AOF; the service is not restarted
                await wait_until(
                    lambda: (
                        no_feeder_failed(tasks)
                        and all(f.acks >= before + 3 for f, before in zip(feeders, acks_before, strict=True))
                    ),
                    "every session fed three times after Redis came back",
                    60,
                )
            finally:
                stop.set()
                await asyncio.gather(*tasks)

            failures = [seconds for f in feeders for seconds in f.failures]
            assert max(failures) < 1.0, f"a session call took {max(failures):.2f}s to fail"
            # Every acknowledged write is there, once, and the state is the state of exactly that text.
            for feeder in feeders:
                info = (await client.get(f"/v1/sessions/{feeder.id}")).json()
                assert (info["version"], info["token_count"]) == (feeder.version, feeder.token_count)
                assert info["token_count"] == len(PROMPT) + len(PIECE) * (info["version"] - 1)
            feeder = feeders[0]
            text = PROMPT + PIECE * (feeder.version - 1)
            fed = (await client.post(f"/v1/sessions/{feeder.id}/feed", json={"text": PIECE})).json()["tokens"]
            whole = (await client.post("/v1/score", json={"texts": [text + PIECE]})).json()["results"][0]["tokens"]
            assert [t["logprob"] for t in fed] == pytest.approx([t["logprob"] for t in whole[-2:]], abs=1e-5)
    finally:
        server.stop()


# A server SIGKILLed mid-stream ----------------------------------------------------------------


@pytest.fixture
def two_servers(
    tmp_path_factory: pytest.TempPathFactory, redis_url: str
) -> Iterator[tuple[ServeProcess, ServeProcess]]:
    root = tmp_path_factory.mktemp("faults")
    make_checkpoint(root / "models" / "char", level="char", cell="lstm", seed=7)
    previous = os.environ.get("RNNLM_MAX_TOKENS_LIMIT")
    os.environ["RNNLM_MAX_TOKENS_LIMIT"] = "1000000"  # a stream that cannot end on its own during the test
    env = {"RNNLM_REDIS_URL": redis_url, "RNNLM_DEFAULT_MODEL": "char"}
    first = ServeProcess(root / "models", root / "first.log", env)
    second = ServeProcess(root / "models", root / "second.log", env)
    try:
        first.launch()
        second.launch()
        yield first.wait_ready(), second.wait_ready()
    finally:
        if previous is None:
            os.environ.pop("RNNLM_MAX_TOKENS_LIMIT", None)
        else:
            os.environ["RNNLM_MAX_TOKENS_LIMIT"] = previous
        first.stop()
        second.stop()


def test_a_server_killed_mid_stream_leaves_the_session_at_its_last_write(
    two_servers: tuple[ServeProcess, ServeProcess],
) -> None:
    first, second = two_servers
    session = httpx.post(f"{first.url}/v1/sessions", json={"prompt": "once upon "}, timeout=30).json()["id"]
    httpx.post(f"{first.url}/v1/sessions/{session}/feed", json={"text": "a time"}, timeout=30).raise_for_status()
    before = httpx.get(f"{first.url}/v1/sessions/{session}", timeout=30).json()
    twin = httpx.post(f"{first.url}/v1/sessions/{session}/fork", timeout=30).json()["id"]

    events: list[str] = []
    ended_by: str | None = None
    body = {"max_tokens": 1_000_000, "seed": 3, "stream": True}
    try:
        with httpx.stream("POST", f"{first.url}/v1/sessions/{session}/generate", json=body, timeout=30) as response:
            assert response.status_code == 200
            for line in response.iter_lines():
                if line.startswith("event:"):
                    events.append(line.removeprefix("event:").strip())
                if events.count("token") == 5:
                    first.kill()  # SIGKILL: no shutdown, nothing written
        ended_by = "end of body"
    except httpx.TransportError as exc:  # the connection drops mid-body
        ended_by = type(exc).__name__
    assert ended_by is not None and events.count("token") >= 5
    assert "done" not in events and "error" not in events

    # The other process sees the session exactly as it was at its last acknowledged write ...
    after = httpx.get(f"{second.url}/v1/sessions/{session}", timeout=30).json()
    keys = ("version", "token_count", "pending_text", "updated_at")
    assert {k: after[k] for k in keys} == {k: before[k] for k in keys}
    # ... and continues it: the same text as its twin, forked from the same state before the stream.
    sampling = {"max_tokens": 20, "seed": 11, "temperature": 1.0}
    here = httpx.post(f"{second.url}/v1/sessions/{session}/generate", json=sampling, timeout=30).json()
    there = httpx.post(f"{second.url}/v1/sessions/{twin}/generate", json=sampling, timeout=30).json()
    assert here["text"] == there["text"] and here["session"]["version"] == before["version"] + 1


# Corrupt, truncated or mismatched checkpoints --------------------------------------------------


def truncate(directory: Path) -> str:
    weights = directory / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    return "model.safetensors: not a readable safetensors file"


def corrupt_config(directory: Path) -> str:
    (directory / "config.json").write_text('{"format_version": 1, "model": {"vocab_si')
    return "config.json: not valid JSON"


def wrong_tokenizer(directory: Path) -> str:
    (directory / "tokenizer.json").write_text(json.dumps(word_tokenizer().to_dict()))
    return "tokenizer.json: "


def wrong_shapes(directory: Path) -> str:
    other = make_checkpoint(directory.parent / "_wider", level="char", hidden=24)
    (directory / "model.safetensors").write_bytes((other / "model.safetensors").read_bytes())
    for path in other.iterdir():
        path.unlink()
    other.rmdir()
    return "model.safetensors: tensor embedding.weight has shape"


def poisoned_weights(directory: Path) -> str:
    weights = load_file(directory / "model.safetensors")
    weights["decoder.bias"][0] = math.nan
    save_file(weights, directory / "model.safetensors")
    return "contains NaN or infinity"


def wrong_format_version(directory: Path) -> str:
    config = directory / "config.json"
    config.write_text(config.read_text().replace('"format_version": 1', '"format_version": 99'))
    return "config.json: unsupported format_version 99"


DAMAGE = [truncate, corrupt_config, wrong_tokenizer, wrong_shapes, poisoned_weights, wrong_format_version]


@pytest.mark.parametrize("damage", DAMAGE, ids=[d.__name__ for d in DAMAGE])
async def test_a_bad_checkpoint_stops_the_server_or_is_skipped(
    tmp_path: Path, redis_url: str, damage: Any, caplog: pytest.LogCaptureFixture
) -> None:
    models = tmp_path / "models"
    make_checkpoint(models / "a-good", level="char")
    bad = make_checkpoint(models / "b-bad", level="char")
    expected = damage(bad)
    settings = Settings(models_dir=models, redis_url=redis_url, torch_threads=1)
    with pytest.raises(ModelsDirError) as refused:
        async with running(create_app(settings)):
            pass
    message = str(refused.value)
    assert str(bad) in message and expected in message and "RNNLM_SKIP_BAD_MODELS" in message

    caplog.set_level(logging.ERROR, logger="app")
    async with running(create_app(settings.model_copy(update={"skip_bad_models": True}))) as client:
        served = [m["id"] for m in (await client.get("/v1/models")).json()["data"]]
        assert served == ["a-good"]
        assert (await client.post("/v1/score", json={"texts": ["hi"]})).status_code == 200
    logged = [r.getMessage() for r in caplog.records if "skipping model b-bad" in r.getMessage()]
    assert len(logged) == 1 and str(bad) in logged[0] and expected in logged[0]


async def test_with_every_checkpoint_bad_even_skipping_does_not_start(tmp_path: Path, redis_url: str) -> None:
    bad = make_checkpoint(tmp_path / "models" / "only", level="char")
    truncate(bad)
    settings = Settings(models_dir=tmp_path / "models", redis_url=redis_url, skip_bad_models=True)
    with pytest.raises(ModelsDirError, match=r"no checkpoint in .* could be loaded"):
        async with running(create_app(settings)):
            pass


def test_rnnlm_serve_refuses_to_start_naming_the_bad_file(tmp_path: Path, redis_url: str) -> None:
    bad = make_checkpoint(tmp_path / "models" / "char", level="char")
    truncate(bad)
    env = {**os.environ, "RNNLM_REDIS_URL": redis_url}
    finished = subprocess.run(
        [*serve_command(), "--models", str(tmp_path / "models"), "--port", str(free_port())],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert finished.returncode == 1
    last_line = finished.stderr.strip().splitlines()[-1]
    assert last_line.startswith("rnnlm-serve: cannot start: ")
    assert f"{bad / 'model.safetensors'}: not a readable safetensors file" in last_line
    assert "Traceback" not in finished.stderr
