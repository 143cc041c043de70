"""Shared fixtures: one real Redis for the whole test run."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

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
