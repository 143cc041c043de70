"""Redis killed or stalled: session calls answer 503 within a second, stateless calls go on; Redis back: all recovers."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from tests.helpers import ClientFactory
from tests.redis_server import RedisServer


async def timed(client: httpx.AsyncClient, method: str, path: str, **kwargs: object) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    response = await client.request(method, path, **kwargs)  # type: ignore[arg-type]
    return response, time.monotonic() - started


@pytest.mark.parametrize("failure", ["killed", "stalled"])
async def test_redis_outage_and_recovery(make_client: ClientFactory, tmp_path: Path, failure: str) -> None:
    server = RedisServer(tmp_path / "redis", appendonly=True).start()  # AOF: the session survives SIGKILL
    try:
        async with make_client(redis_url=server.url) as client:
            created = await client.post("/v1/sessions", json={"prompt": "hello"})
            assert created.status_code == 201
            base = f"/v1/sessions/{created.json()['id']}"

            server.kill() if failure == "killed" else server.pause()
            for method, path, body in [
                ("POST", f"{base}/feed", {"text": " world"}),
                ("GET", base, None),
                ("GET", f"{base}/next-token", None),
                ("POST", f"{base}/generate", {"max_tokens": 3}),
                ("POST", "/v1/sessions", {}),
            ]:
                response, seconds = await timed(client, method, path, json=body)
                assert response.status_code == 503, response.text
                assert seconds < 1.0, f"{method} {path} took {seconds:.2f}s to fail"
                error = response.json()["error"]
                assert error["type"] == "unavailable" and "session store" in error["message"]
            # Stateless calls do not need Redis.
            for path, body in [("/v1/generate", {"prompt": "hi", "max_tokens": 3}), ("/v1/score", {"texts": ["hi"]})]:
                assert (await client.post(path, json=body)).status_code == 200
            ready = await client.get("/ready")
            checks = {"models": True, "accepting": True, "redis": False}
            assert ready.status_code == 503 and ready.json()["checks"] == checks

            # The same server comes back (same port, same AOF); the service is not restarted.
            server.start() if failure == "killed" else server.resume()
            fed = await client.post(f"{base}/feed", json={"text": " world"})
            assert fed.status_code == 200, fed.text
            assert fed.json()["session"]["token_count"] == len("hello world")
            assert (await client.get("/ready")).status_code == 200
    finally:
        server.stop()


@pytest.mark.parametrize("with_dir", [False, True])
async def test_without_a_redis_url_the_service_runs_its_own(
    make_client: ClientFactory, tmp_path: Path, with_dir: bool
) -> None:
    settings = {"redis_url": None, "redis_dir": tmp_path / "redis-data" if with_dir else None}
    async with make_client(**settings) as client:
        created = await client.post("/v1/sessions", json={"prompt": "hi"})
        assert created.status_code == 201
        session_id = created.json()["id"]
        assert (await client.get("/ready")).json()["checks"]["redis"] is True
    # With a data directory, sessions outlive a restart of the service.
    async with make_client(**settings) as client:
        again = await client.get(f"/v1/sessions/{session_id}")
        assert again.status_code == (200 if with_dir else 404)
