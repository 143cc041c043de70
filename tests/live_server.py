"""`rnnlm-serve` as a child process on a free loopback port, for e2e tests and benchmarks."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import httpx

from tests.redis_server import free_port


def serve_command() -> list[str]:
    """The installed `rnnlm-serve` script beside this interpreter, else `python -m app.cli`."""
    script = Path(sys.executable).with_name("rnnlm-serve")
    return [str(script)] if script.exists() else [sys.executable, "-m", "app.cli"]


class ServeProcess:
    """`rnnlm-serve` in a subprocess on a free port, logging to a file.

    env: variables set on top of this process's environment; a None value removes one
    (e.g. RNNLM_REDIS_URL, so that the server starts its own embedded Redis).
    """

    def __init__(self, models: Path, log: Path, env: Mapping[str, str | None] | None = None) -> None:
        self.models = models
        self.log = log
        self.env = dict(env or {})
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 90.0) -> ServeProcess:
        self.launch()
        return self.wait_ready(timeout)

    def launch(self) -> None:
        env = {**os.environ, **{k: v for k, v in self.env.items() if v is not None}}
        for name in (k for k, v in self.env.items() if v is None):
            env.pop(name, None)
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [*serve_command(), "--models", str(self.models), "--port", str(self.port), "--log-level", "warning"],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def wait_ready(self, timeout: float = 90.0) -> ServeProcess:
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while True:
            try:
                if httpx.get(f"{self.url}/ready", timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"rnnlm-serve did not become ready:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.1)

    def kill(self) -> None:
        """SIGKILL: no shutdown, nothing flushed."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.process = None
