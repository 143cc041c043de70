"""Fixtures for the service tests: tiny checkpoints on disk, the app with its lifespan, a client."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.main import create_app
from app.settings import Settings
from tests.factories import make_checkpoint
from tests.helpers import ClientFactory, running


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A char model (the default: first by name) and a word model."""
    root = tmp_path_factory.mktemp("models")
    make_checkpoint(root / "char", level="char", cell="lstm", seed=1)
    make_checkpoint(root / "word", level="word", cell="gru", seed=2)
    return root


@pytest.fixture
def make_client(models_dir: Path, redis_url: str) -> ClientFactory:
    """`async with make_client(max_text_chars=10) as client:` — an app with these settings."""

    def factory(**overrides: Any) -> AbstractAsyncContextManager[httpx.AsyncClient]:
        # One torch thread: tiny models, and a CPU shared with the rest of the suite. float32 (not
        # RNNLM_DTYPE=auto, bfloat16 on a CPU with AMX), so that answers can be compared with
        # model/'s own float32 computation to 1e-4 and beam scores with feed scores to 1e-3; the
        # bfloat16 path has its own tests (tests/app/models/test_dtype.py, and the session tests
        # run in both precisions).
        settings = Settings(
            **{"models_dir": models_dir, "redis_url": redis_url, "torch_threads": 1, "dtype": "float32", **overrides}
        )
        return running(create_app(settings))

    return factory


@pytest.fixture
async def client(make_client: ClientFactory) -> AsyncIterator[httpx.AsyncClient]:
    async with make_client() as c:
        yield c
