"""Fixtures of the container tests: the images (built once a run) and a tiny checkpoint."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.deploy.podman import MODEL
from tests.factories import make_checkpoint

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def images() -> None:
    """The CPU images (`make image`): built cold in minutes, found with every layer cached in seconds."""
    result = subprocess.run(
        [str(ROOT / "docker" / "build-local.sh")], cwd=ROOT, capture_output=True, text=True, timeout=1500
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


@pytest.fixture(scope="session")
def models_dir() -> Iterator[Path]:
    """A tiny checkpoint in a directory the images' user (uid 10001) can read."""
    directory = Path(tempfile.mkdtemp(prefix="rnnlm-deploy-models-"))
    directory.chmod(0o755)
    make_checkpoint(directory / MODEL)
    yield directory
    shutil.rmtree(directory, ignore_errors=True)
