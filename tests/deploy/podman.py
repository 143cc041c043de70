"""What the container tests share: whether podman can run here, and running it."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

MODEL = "tiny-char"
PODMAN_COMPOSE = Path(sys.executable).with_name("podman-compose")


def podman_problem() -> str | None:
    """Why containers cannot run here, or None."""
    if shutil.which("podman") is None:
        return "podman is not installed (.ci/run installs podman, runc and debootstrap)"
    info = subprocess.run(["podman", "info"], capture_output=True, text=True, timeout=60)
    if info.returncode != 0:
        return f"podman cannot run here: {(info.stderr.strip().splitlines() or ['podman info failed'])[-1]}"
    if not PODMAN_COMPOSE.exists():
        return "podman-compose is not installed (the test extra of pyproject.toml)"
    images = subprocess.run(["podman", "image", "exists", "localhost/debian:bookworm-min"], timeout=60)
    if images.returncode != 0 and shutil.which("debootstrap") is None:
        return "no local Debian base image and no debootstrap to make one"
    return None


PROBLEM = podman_problem()


def podman(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)}: {result.stderr[-2000:]}")
    return result
