"""A live `rnnlm-serve` with a char and a word model, for the tests that drive real client packages."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.factories import make_checkpoint
from tests.live_server import ServeProcess


@pytest.fixture(scope="module")
def live_url(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[str]:
    """The server's root address; `char` is the default model."""
    root = tmp_path_factory.mktemp("clients")
    make_checkpoint(root / "models" / "char", level="char", cell="lstm", seed=5)
    make_checkpoint(root / "models" / "word", level="word", cell="gru", seed=6)
    log = root / "server.log"
    env = {"RNNLM_REDIS_URL": redis_url, "RNNLM_TORCH_THREADS": "1"}
    server = ServeProcess(root / "models", log, env).start()
    try:
        yield server.url
    finally:
        server.stop()
    assert "Traceback" not in log.read_text()
