"""What a session costs on top of the model: loading and storing its state in Redis.

For a char model shaped like the char-shakespeare recipe and a 2x650 LSTM word model
(random weights; only shapes matter here) this prints, per request:

- the model's own step time (one token through `advance`, batch of one),
- encode + decode of the session record (CPU only),
- the state round trip a session request adds: GET from Redis, decode, encode and a
  compare-and-set PUT back (p50 / p99 in ms),
- bytes per session: the record, Redis's MEMORY USAGE of the key, and the growth of
  Redis's used_memory per session over many sessions, from which the number of
  sessions that fit in 1 GB follows.

    .venv/bin/python bench/session_overhead.py [--redis-url URL] [--requests 2000] [--sessions 5000]

Without --redis-url a private redis-server is started on a free loopback port.
Prints figures; never asserts on speed.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import redis
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.sessions.codec import SessionRecord, decode_session, encode_session
from app.sessions.store import RedisSessionStore
from app.settings import Settings
from model.inference import advance
from model.network import RNNLM, ModelConfig
from tests.redis_server import RedisServer

GB = 10**9
HISTORY_TOKENS: int = Settings.model_fields["session_history_tokens"].default


@dataclass(frozen=True)
class Shape:
    name: str
    config: ModelConfig


SHAPES = [
    # char-shakespeare: 65 characters, 3x512 LSTM (Karpathy's char-rnn, "tinyshakespeare" runs).
    Shape("char 3x512 LSTM, V=65", ModelConfig(vocab_size=65, cell="lstm", embedding_size=512, hidden_size=512, num_layers=3)),
    # Zaremba et al. 2014 "medium": 2x650 LSTM on the 10k PTB vocabulary.
    Shape("word 2x650 LSTM, V=10000", ModelConfig(vocab_size=10_000, cell="lstm", embedding_size=650, hidden_size=650, num_layers=2)),
]  # fmt: skip


def percentiles(samples: list[float]) -> tuple[float, float]:
    """p50 and p99 in milliseconds."""
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return statistics.median(ordered) * 1000, p99 * 1000


def time_sync(fn: Callable[[], object], repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


async def time_async(fn: Callable[[], Awaitable[object]], repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        await fn()
        times.append(time.perf_counter() - start)
    return times


def make_record(model: RNNLM) -> SessionRecord:
    state = model.init_state(1)
    state = tuple(torch.randn_like(t) for t in state) if isinstance(state, tuple) else torch.randn_like(state)
    now = time.time()
    return SessionRecord.from_state(
        state,
        model="bench",
        pending_id=1,
        token_count=1234,
        ttl=3600.0,
        created_at=now,
        updated_at=now,
        history=tuple(torch.randint(model.config.vocab_size, (HISTORY_TOKENS,)).tolist()),  # a full window
    )


async def bench_shape(shape: Shape, url: str, requests: int, sessions: int) -> None:
    torch.manual_seed(0)
    model = RNNLM(shape.config).eval()
    record = make_record(model)
    data = encode_session(record)
    token = torch.tensor([1])
    state = record.model_state()

    def step() -> None:
        advance(model, token, state)

    step_times = time_sync(step, max(50, requests // 10))
    codec_times = time_sync(lambda: decode_session(encode_session(record)), requests)

    store = RedisSessionStore.from_url(url, timeout=5.0, namespace=f"bench:{secrets.token_hex(4)}:")
    session_id = secrets.token_hex(16)
    await store.put_if_version(session_id, data, 0, ttl=3600)

    async def round_trip() -> None:
        item = await store.get(session_id, renew=True)
        assert item is not None
        loaded = decode_session(item.value)
        await store.put_if_version(
            session_id, encode_session(loaded.updated(updated_at=time.time())), item.version, 3600
        )

    await round_trip()  # warm the connection and the scripts
    trip_times = await time_async(round_trip, requests)

    with redis.Redis.from_url(url) as raw:
        key_bytes = int(raw.memory_usage(store.key(session_id), samples=0) or 0)
        before = int(raw.info("memory")["used_memory"])
        ids = [secrets.token_hex(16) for _ in range(sessions)]
        for start in range(0, sessions, 50):
            await asyncio.gather(*(store.put_if_version(i, data, 0, ttl=3600) for i in ids[start : start + 50]))
        after = int(raw.info("memory")["used_memory"])
        for start in range(0, sessions, 1000):
            raw.delete(*(store.key(i) for i in ids[start : start + 1000]))
        raw.delete(store.key(session_id))
    await store.close()
    per_session = (after - before) / sessions

    step50, step99 = percentiles(step_times)
    codec50, codec99 = percentiles(codec_times)
    trip50, trip99 = percentiles(trip_times)
    print(f"\n{shape.name}  ({sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters)")
    print(f"  model step, 1 token, batch 1       p50 {step50:7.3f} ms   p99 {step99:7.3f} ms")
    print(f"  encode + decode record (CPU)       p50 {codec50:7.3f} ms   p99 {codec99:7.3f} ms")
    print(f"  state round trip (get+decode+encode+CAS put)  p50 {trip50:7.3f} ms   p99 {trip99:7.3f} ms")
    print(f"  record {len(data):,} bytes; Redis MEMORY USAGE {key_bytes:,} bytes;")
    print(f"  used_memory growth over {sessions:,} sessions: {per_session:,.0f} bytes/session")
    print(f"  -> about {GB / per_session:,.0f} sessions per 1 GB of Redis (1 GB = 10^9 bytes, no fragmentation)")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis-url", help="a Redis to use (default: a private redis-server on loopback)")
    parser.add_argument("--requests", type=int, default=2000, help="timed round trips per model")
    parser.add_argument("--sessions", type=int, default=5000, help="sessions written to measure memory per session")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread, CPU")
    with tempfile.TemporaryDirectory() as tmp:
        server = None if args.redis_url else RedisServer(Path(tmp)).start()
        url = args.redis_url or (server.url if server else "")
        print(f"redis at {url}")
        try:
            for shape in SHAPES:
                await bench_shape(shape, url, args.requests, args.sessions)
        finally:
            if server is not None:
                server.stop()


if __name__ == "__main__":
    asyncio.run(main())
