"""Prometheus metrics, in a registry of the app's own (so several apps can live in one process)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class Metrics:
    """Requests, latencies, tokens generated, active sequences, batch sizes, the queue and token latencies."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "rnnlm_requests", "HTTP requests answered", ["method", "route", "status"], registry=self.registry
        )
        self.latency = Histogram(
            "rnnlm_request_seconds",
            "time from request to the end of the response (streams included)",
            ["method", "route"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=self.registry,
        )
        self.tokens_generated = Counter(
            "rnnlm_tokens_generated", "tokens sampled by the engine", ["model"], registry=self.registry
        )
        self.active_sequences = Gauge(
            "rnnlm_active_sequences",
            "sequences admitted to the engine and generating",
            ["model"],
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "rnnlm_batch_size",
            "rows in each batched decoding step",
            ["model"],
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
            registry=self.registry,
        )

        # What a balancer and an autoscaler watch (vLLM's names, in this namespace).
        self.requests_waiting = Gauge(
            "rnnlm_requests_waiting",
            "jobs admitted whose prompt or text is still to be fed (the feed queue)",
            ["model"],
            registry=self.registry,
        )
        self.requests_running = Gauge(
            "rnnlm_requests_running", "jobs holding decode rows (generating)", ["model"], registry=self.registry
        )
        latency_buckets = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
        self.queue_time = Histogram(
            "rnnlm_request_queue_seconds",
            "admission to the end of the job's feed (prompt, text)",
            ["model"],
            buckets=latency_buckets,
            registry=self.registry,
        )
        self.time_to_first_token = Histogram(
            "rnnlm_time_to_first_token_seconds",
            "admission to a sampled choice's first token",
            ["model"],
            buckets=latency_buckets,
            registry=self.registry,
        )
        self.inter_token_latency = Histogram(
            "rnnlm_inter_token_latency_seconds",
            "between two tokens of one sampled choice",
            ["model"],
            buckets=latency_buckets,
            registry=self.registry,
        )

        self.prefix_cache_hits = Counter(
            "rnnlm_prefix_cache_hits",
            "prompts that started from a cached prefix state",
            ["model"],
            registry=self.registry,
        )
        self.prefix_cache_misses = Counter(
            "rnnlm_prefix_cache_misses", "cacheable prompts with no cached prefix", ["model"], registry=self.registry
        )
        self.prefix_cache_tokens_saved = Counter(
            "rnnlm_prefix_cache_tokens_saved",
            "prompt tokens not fed thanks to the cache",
            ["model"],
            registry=self.registry,
        )
        self.prefix_cache_bytes = Gauge(
            "rnnlm_prefix_cache_bytes", "bytes held by the prefix-state cache", ["model"], registry=self.registry
        )

    def prefix_lookup(self, model_id: str) -> Callable[[int], None]:
        """The engine's report of one cache lookup: the tokens it saved (0 = a miss)."""
        hits, misses = self.prefix_cache_hits.labels(model_id), self.prefix_cache_misses.labels(model_id)
        saved = self.prefix_cache_tokens_saved.labels(model_id)

        def record(tokens: int) -> None:
            if tokens:
                hits.inc()
                saved.inc(tokens)
            else:
                misses.inc()

        return record

    def queue(self, model_id: str) -> Callable[[int, int], None]:
        """The engine's report after each tick: jobs waiting to be fed, jobs decoding."""
        waiting, running = self.requests_waiting.labels(model_id), self.requests_running.labels(model_id)

        def record(waiting_jobs: int, running_jobs: int) -> None:
            waiting.set(waiting_jobs)
            running.set(running_jobs)

        return record

    def forget_model(self, model_id: str) -> None:
        """Drop an unloaded model's series, so /metrics lists only what is served."""
        for metric in (
            self.tokens_generated,
            self.active_sequences,
            self.batch_size,
            self.prefix_cache_hits,
            self.prefix_cache_misses,
            self.prefix_cache_tokens_saved,
            self.prefix_cache_bytes,
            self.requests_waiting,
            self.requests_running,
            self.queue_time,
            self.time_to_first_token,
            self.inter_token_latency,
        ):
            with contextlib.suppress(KeyError):  # never labelled
                metric.remove(model_id)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class MetricsMiddleware:
    """Counts and times every HTTP request by its route template (not the raw path)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_and_record(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_and_record)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            method = str(scope.get("method", ""))
            self.metrics.requests.labels(method, route, str(status)).inc()
            self.metrics.latency.labels(method, route).observe(time.perf_counter() - started)
