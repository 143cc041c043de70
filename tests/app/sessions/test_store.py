"""The Redis session store against a real redis-server: CAS, TTL, outages, the embedded server."""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis

from app.errors import StoreUnavailable
from app.sessions.store import EmbeddedRedis, RedisSessionStore, VersionConflict
from tests.redis_server import RedisServer


@pytest.fixture
async def store(redis_url: str) -> AsyncIterator[RedisSessionStore]:
    store = RedisSessionStore.from_url(redis_url, namespace=f"test:{secrets.token_hex(4)}:")
    yield store
    await store.close()


async def test_put_get_delete_round_trip(store: RedisSessionStore, redis_url: str) -> None:
    assert await store.get("a") is None
    assert await store.put_if_version("a", b"\x00one\xff", 0, ttl=60) == 1
    item = await store.get("a")
    assert item is not None
    assert (item.value, item.version) == (b"\x00one\xff", 1)
    assert 59 < item.expires_in <= 60
    # The key is namespaced in Redis.
    with redis.Redis.from_url(redis_url) as raw:
        assert raw.exists(store.namespace + "a") == 1
        assert raw.exists("a") == 0
    assert await store.delete("a") is True
    assert await store.delete("a") is False
    assert await store.get("a") is None


async def test_compare_and_set_rejects_a_stale_version(store: RedisSessionStore) -> None:
    await store.put_if_version("k", b"v1", 0, ttl=60)
    assert await store.put_if_version("k", b"v2", 1, ttl=60) == 2
    with pytest.raises(VersionConflict) as conflict:
        await store.put_if_version("k", b"lost", 1, ttl=60)
    assert conflict.value.current == 2
    with pytest.raises(VersionConflict):
        await store.put_if_version("k", b"again", 0, ttl=60)  # create over an existing key
    with pytest.raises(VersionConflict) as missing:
        await store.put_if_version("gone", b"x", 3, ttl=60)
    assert missing.value.current is None
    item = await store.get("k")
    assert item is not None and item.value == b"v2"


async def test_concurrent_writers_never_lose_an_update(store: RedisSessionStore) -> None:
    """Each writer retries read-modify-write until its CAS wins: every increment survives."""
    await store.put_if_version("counter", b"0", 0, ttl=60)
    conflicts = 0

    async def increment() -> None:
        nonlocal conflicts
        while True:
            item = await store.get("counter")
            assert item is not None
            await asyncio.sleep(0)  # let the other writers read the same version
            try:
                await store.put_if_version("counter", str(int(item.value) + 1).encode(), item.version, ttl=60)
                return
            except VersionConflict:
                conflicts += 1

    await asyncio.gather(*(increment() for _ in range(20)))
    item = await store.get("counter")
    assert item is not None
    assert (int(item.value), item.version) == (20, 21)
    assert conflicts > 0  # the race really happened


async def test_ttl_expires_and_slides(store: RedisSessionStore) -> None:
    await store.put_if_version("short", b"x", 0, ttl=0.3)
    await asyncio.sleep(0.2)
    item = await store.get("short", renew=True)  # a use restarts the TTL it was written with
    assert item is not None and item.expires_in > 0.25
    await asyncio.sleep(0.2)
    assert await store.get("short") is not None
    assert await store.touch("short") is True
    await asyncio.sleep(0.45)
    assert await store.get("short") is None
    assert await store.touch("short") is False


async def test_touch_with_a_new_ttl_replaces_the_stored_one(store: RedisSessionStore) -> None:
    await store.put_if_version("t", b"x", 0, ttl=0.2)
    assert await store.touch("t", ttl=30) is True
    await asyncio.sleep(0.3)
    item = await store.get("t", renew=True)
    assert item is not None and item.expires_in > 29


async def test_a_dead_server_fails_fast_and_recovery_needs_no_new_client(tmp_path: Path) -> None:
    server = RedisServer(tmp_path).start()
    store = RedisSessionStore.from_url(server.url)
    try:
        await store.put_if_version("s", b"x", 0, ttl=60)
        server.kill()
        for call in (store.get("s"), store.put_if_version("s", b"y", 1, ttl=60), store.ping()):
            started = time.monotonic()
            with pytest.raises(StoreUnavailable, match="unavailable"):
                await call
            assert time.monotonic() - started < 1.0
        server.start()  # same port, no data (no AOF): the client reconnects by itself
        assert await store.get("s") is None
        assert await store.put_if_version("s", b"z", 0, ttl=60) == 1
    finally:
        await store.close()
        server.stop()


async def test_embedded_server_starts_serves_and_stops(tmp_path: Path) -> None:
    embedded = EmbeddedRedis(directory=tmp_path / "data")
    url = embedded.start()
    store = RedisSessionStore.from_url(url)
    try:
        await store.ping()
        await store.put_if_version("e", b"kept", 0, ttl=60)
    finally:
        await store.close()
        embedded.stop()
    assert not embedded.socket_path.exists()
    # With a directory the data outlives the server.
    again = EmbeddedRedis(directory=tmp_path / "data")
    store = RedisSessionStore.from_url(again.start())
    try:
        item = await store.get("e")
        assert item is not None and item.value == b"kept"
    finally:
        await store.close()
        again.stop()


def test_the_embedded_server_dies_with_a_killed_service() -> None:
    """No orphaned redis-server when the service is SIGKILLed (Linux: PR_SET_PDEATHSIG)."""
    script = (
        "from app.sessions.store import EmbeddedRedis; import time\n"
        "embedded = EmbeddedRedis(); embedded.start()\n"
        "print(embedded.process.pid, flush=True); time.sleep(60)\n"
    )
    service = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert service.stdout is not None
    redis_pid = int(service.stdout.readline())
    os.kill(redis_pid, 0)  # it runs
    service.kill()
    service.wait()
    deadline = time.monotonic() + 10
    while Path(f"/proc/{redis_pid}").exists() and b"zombie" not in _status(redis_pid):
        assert time.monotonic() < deadline, "redis-server outlived the killed service"
        time.sleep(0.05)


def _status(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/status").read_bytes().lower()
    except FileNotFoundError:
        return b"zombie"
