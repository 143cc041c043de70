"""A bounded load on loopback: many concurrent clients against a live `rnnlm-serve` it starts itself.

It builds two small random-weight models (a 2x256 LSTM char model on the
tinyshakespeare characters and a 2x256 GRU word model on a PTB vocabulary; random
weights cost what trained ones cost), starts `rnnlm-serve` on a free port with its
embedded Redis, and runs `--clients` clients for `--duration` seconds. Each client
repeats a mix of:

- `generate/stream`: POST /v1/generate with "stream": true (max_tokens 32), timed to
  the end of the stream (and to the first token),
- `score`: POST /v1/score with two texts,
- `session/feed`: POST /v1/sessions/{id}/feed of a short text on the client's own session
  (created up front, recreated if it is gone),
- `next-token`: POST /v1/next-token.

Beside them one prober asks `GET /health` every 50 ms on a connection of its own: its
latency is the event loop's (no model-sized work may run there), reported as `health`.

It prints requests/s, p50/p99 latency per endpoint, the count of each status, errors
(anything but 2xx, and 429s counted apart as deliberate back-pressure), and the
server's resident memory (RSS) before the load, at its half-way point and after.

    nice .venv/bin/python bench/load.py [--clients 64] [--duration 60] [--models DIR]

Prints figures; never asserts on speed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model.checkpoint import save_checkpoint
from model.network import RNNLM, ModelConfig
from model.tokenizer import CharTokenizer, Tokenizer, WordTokenizer
from tests.live_server import ServeProcess

FALLBACK_TEXT = "the quick brown fox jumps over the lazy dog\nthe cat sat on the mat\n" * 50
CHAR_PROMPTS = ["ROMEO:\n", "First Citizen:\nBefore we proceed", "To be, or not", "KING HENRY:\nNow"]
WORD_TEXTS = ["the company said it expects", "stocks fell sharply in early trading", "the market is"]


@dataclass
class Stats:
    """Latencies (s) and status counts per endpoint, from the moment the load starts."""

    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    first_token: list[float] = field(default_factory=list)
    statuses: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    errors: Counter[str] = field(default_factory=Counter)

    def record(self, endpoint: str, status: str, seconds: float, detail: str = "") -> None:
        self.statuses[endpoint][status] += 1
        if status.startswith("2"):
            self.latencies[endpoint].append(seconds)
        elif status != "429":
            self.errors[f"{endpoint} {status} {detail[:120]}"] += 1


def corpus(data_dir: Path, name: str) -> str:
    path = data_dir / name
    return path.read_text(encoding="utf-8")[:300_000] if path.is_file() else FALLBACK_TEXT


def build_models(root: Path, hidden: int) -> Path:
    """Two random-weight checkpoints: `char` (LSTM) and `word` (GRU)."""
    data = Path(os.environ.get("RNNLM_DATA_DIR", Path(__file__).resolve().parents[2] / "shared" / "data"))
    tokenizers: dict[str, tuple[Tokenizer, str]] = {
        "char": (CharTokenizer.build(corpus(data, "tinyshakespeare/input.txt")), "lstm"),
        "word": (WordTokenizer.build(corpus(data, "ptb/train.txt"), max_size=10_000), "gru"),
    }
    for name, (tokenizer, cell) in tokenizers.items():
        config = ModelConfig(
            vocab_size=tokenizer.vocab_size,
            cell=cell,  # type: ignore[arg-type]
            embedding_size=hidden,
            hidden_size=hidden,
            num_layers=2,
            dropout=0.0,
        )
        save_checkpoint(root / name, RNNLM(config).eval(), tokenizer, training={"corpus": "random weights"})
    return root


def rss_mib(pid: int) -> float:
    """Resident memory of a process, from /proc (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def start_server(models: Path, log: Path, clients: int) -> ServeProcess:
    env: dict[str, str | None] = {
        "RNNLM_TORCH_THREADS": "1",
        "RNNLM_DEFAULT_MODEL": "char",
        "RNNLM_MAX_ACTIVE_SEQUENCES": str(max(clients, 1)),  # every client may stream at once
        "RNNLM_REDIS_URL": None,  # the server's own embedded Redis
    }
    try:
        return ServeProcess(models, log, env).start(timeout=120)
    except RuntimeError as exc:
        raise SystemExit(str(exc)) from exc


class Client:
    """One simulated user: its own session, a random mix of calls until the deadline."""

    def __init__(self, http: httpx.AsyncClient, stats: Stats, seed: int) -> None:
        self.http = http
        self.stats = stats
        self.random = random.Random(seed)
        self.session: str | None = None
        self.calls: list[tuple[str, Callable[[], Awaitable[tuple[int, str]]]]] = [
            ("generate/stream", self.stream),
            ("score", self.score),
            ("session/feed", self.feed),
            ("next-token", self.next_token),
        ]

    async def run(self, deadline: float) -> None:
        while time.monotonic() < deadline:
            endpoint, call = self.random.choice(self.calls)
            started = time.monotonic()
            try:
                status, detail = await call()
            except httpx.HTTPError as exc:
                status, detail = type(exc).__name__, repr(exc)
            self.stats.record(endpoint, str(status), time.monotonic() - started, detail)

    async def stream(self) -> tuple[int, str]:
        body = {"prompt": self.random.choice(CHAR_PROMPTS), "max_tokens": 32, "stream": True, "temperature": 0.8}
        started = time.monotonic()
        async with self.http.stream("POST", "/v1/generate", json=body) as response:
            if response.status_code != 200:
                return response.status_code, (await response.aread()).decode(errors="replace")
            seen_token = done = False
            async for line in response.aiter_lines():
                if line.startswith("event: token") and not seen_token:
                    seen_token = True
                    self.stats.first_token.append(time.monotonic() - started)
                elif line.startswith("event: done"):
                    done = True
                elif line.startswith("event: error"):
                    return 599, "error event in the stream"
            return (200, "") if done else (598, "stream ended without a done event")

    async def score(self) -> tuple[int, str]:
        texts = self.random.sample(WORD_TEXTS, 2)
        response = await self.http.post("/v1/score", json={"model": "word", "texts": texts})
        return response.status_code, response.text

    async def next_token(self) -> tuple[int, str]:
        body = {"context": self.random.choice(CHAR_PROMPTS), "top_k": 10}
        response = await self.http.post("/v1/next-token", json=body)
        return response.status_code, response.text

    async def feed(self) -> tuple[int, str]:
        if self.session is None:
            created = await self.http.post("/v1/sessions", json={"model": "char", "prompt": "ROMEO:\n"})
            if created.status_code != 201:
                return created.status_code, created.text
            self.session = created.json()["id"]
        response = await self.http.post(f"/v1/sessions/{self.session}/feed", json={"text": " and so to bed. "})
        if response.status_code == 404:
            self.session = None
        return response.status_code, response.text


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


async def run_load(url: str, clients: int, duration: float, pid: int) -> tuple[Stats, list[tuple[float, float]]]:
    stats = Stats()
    # Idle connections are dropped before uvicorn's 5 s keep-alive timeout would close them under us.
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients, keepalive_expiry=2.0)
    rss: list[tuple[float, float]] = [(0.0, rss_mib(pid))]
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as http:
        started = time.monotonic()
        deadline = started + duration
        workers = [asyncio.create_task(Client(http, stats, seed).run(deadline)) for seed in range(clients)]
        workers.append(asyncio.create_task(probe_health(url, stats, deadline)))
        while time.monotonic() < deadline:
            await asyncio.sleep(min(duration / 6, deadline - time.monotonic()))
            rss.append((time.monotonic() - started, rss_mib(pid)))
        await asyncio.gather(*workers)
    return stats, rss


async def probe_health(url: str, stats: Stats, deadline: float) -> None:
    """GET /health every 50 ms on its own connection until the deadline."""
    async with httpx.AsyncClient(base_url=url, timeout=60) as http:
        while time.monotonic() < deadline:
            started = time.monotonic()
            try:
                response = await http.get("/health")
                status, detail = str(response.status_code), response.text
            except httpx.HTTPError as exc:
                status, detail = type(exc).__name__, repr(exc)
            stats.record("health", status, time.monotonic() - started, detail)
            await asyncio.sleep(0.05)


def report(stats: Stats, rss: list[tuple[float, float]], duration: float, clients: int) -> None:
    total = sum(sum(c.values()) for c in stats.statuses.values())
    busy = sum(c["429"] for c in stats.statuses.values())
    errors = sum(stats.errors.values())
    print(f"\n{clients} clients, {duration:.0f} s: {total} requests, {total / duration:.1f} requests/s")
    print(f"{'endpoint':<18} {'requests':>9} {'req/s':>7} {'p50 ms':>8} {'p99 ms':>8}  statuses")
    for endpoint in sorted(stats.statuses):
        counts = stats.statuses[endpoint]
        latencies = stats.latencies[endpoint]
        n = sum(counts.values())
        p50, p99 = percentile(latencies, 50) * 1000, percentile(latencies, 99) * 1000
        print(f"{endpoint:<18} {n:>9} {n / duration:>7.1f} {p50:>8.1f} {p99:>8.1f}  {dict(sorted(counts.items()))}")
    if stats.first_token:
        ttft = stats.first_token
        print(f"{'  first token':<18} {len(ttft):>9} {'':>7} {percentile(ttft, 50) * 1000:>8.1f} "
              f"{percentile(ttft, 99) * 1000:>8.1f}")  # fmt: skip
    print(f"errors: {errors} (429 busy, deliberate: {busy})")
    for line, count in stats.errors.most_common(10):
        print(f"  {count} x {line}")
    print("server RSS (MiB) at t seconds: " + ", ".join(f"t={t:.0f}: {mib:.1f}" for t, mib in rss))
    half = min(rss, key=lambda sample: abs(sample[0] - duration / 2))
    start, end = rss[0][1], rss[-1][1]
    print(
        f"RSS before {start:.1f} MiB, after {end:.1f} MiB; growth from t={half[0]:.0f} s to the end: "
        f"{(end - half[1]) / half[1] * 100:+.1f}%"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of load")
    parser.add_argument("--models", type=Path, help="a models dir to serve (default: build two small ones)")
    parser.add_argument("--hidden", type=int, default=256, help="hidden size of the built models")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="rnnlm-load-") as tmp:
        models = args.models or build_models(Path(tmp) / "models", args.hidden)
        log = Path(tmp) / "server.log"
        server = start_server(models, log, args.clients)
        try:
            assert server.process is not None
            pid = server.process.pid
            print(f"rnnlm-serve pid {pid} on port {server.port}, models {sorted(p.name for p in models.iterdir())}")
            print(f"{os.cpu_count()} CPUs; client and server share them")
            stats, rss = asyncio.run(run_load(server.url, args.clients, args.duration, pid))
            report(stats, rss, args.duration, args.clients)
        finally:
            server.stop()
        text = log.read_text(errors="replace")
        if "Traceback" in text:
            print(f"\nthe server logged a traceback:\n{text[-3000:]}")


if __name__ == "__main__":
    main()
