"""Shared fixtures: one real Redis for the whole test run."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from tests.redis_server import RedisServer


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`RNNLM_TEST_REDIS_URL` when set, else a private redis-server on a free loopback port."""
    given = os.environ.get("RNNLM_TEST_REDIS_URL")
    if given:
        yield given
        return
    with RedisServer(Path(tmp_path_factory.mktemp("redis"))) as server:
        yield server.url


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """Tiny models on a shared CPU: one thread is faster (restored afterwards)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
