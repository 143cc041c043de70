"""The images built and the compose stack run for real, with podman.

`make image` (docker/build-local.sh) builds the CPU images from a local Debian base, or
finds them built and reuses every unchanged layer; docker-compose.yml then runs under
podman-compose: Redis (AOF) + api-1 + api-2 + the real nginx of docker/nginx.conf.
Everything below goes through nginx's published port, as a user's client would. One
replica is killed with SIGKILL while 8 clients feed their sessions: every acknowledged
feed is still there, the requests that were on it fail at once (no hang), and the
sessions continue on the other replica from the state in Redis.

Skipped, with the reason, only where podman cannot run containers (not installed, or
`podman info` fails); .ci/run installs it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.deploy.podman import MODEL, PODMAN_COMPOSE, PROBLEM, podman
from tests.factories import CHAR_TEXT
from tests.redis_server import free_port

ROOT = Path(__file__).resolve().parents[2]
# The first run on a machine builds the images (minutes: the Debian base, the CPU base);
# later runs find them built.
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(PROBLEM is not None, reason=PROBLEM or ""),
    pytest.mark.timeout(1500),
]


def wait_healthy(container: str, timeout: float = 90.0) -> None:
    """Runs the image's health check (GET /ready) until it passes (no systemd timers here to run it)."""
    deadline = time.monotonic() + timeout
    while True:
        if podman("healthcheck", "run", container, check=False).returncode == 0:
            return
        if time.monotonic() > deadline:
            logs = podman("logs", "--tail", "30", container, check=False)
            raise AssertionError(f"{container} never became healthy:\n{logs.stdout}{logs.stderr}")
        time.sleep(0.5)


@dataclass
class Stack:
    project: str
    url: str

    def container(self, service: str) -> str:
        return f"{self.project}_{service}_1"

    def pid(self, service: str) -> int:
        return int(podman("inspect", "--format", "{{.State.Pid}}", self.container(service)).stdout.strip())

    def logs(self, service: str) -> str:
        result = podman("logs", self.container(service), check=False)
        return result.stdout + result.stderr


@pytest.fixture(scope="module")
def stack(images: None, models_dir: Path) -> Iterator[Stack]:
    project = f"rnnlm-test-{os.getpid()}"
    port = free_port()
    # float32: a session fed in pieces then gives exactly the one-shot text (bf16 rounds per shape).
    env = {**os.environ, "MODELS_DIR": str(models_dir), "HTTP_PORT": str(port), "RNNLM_DTYPE": "float32"}
    compose = [str(PODMAN_COMPOSE), "-p", project, "--env-file", "docker/local.env"]
    up = subprocess.run([*compose, "up", "-d"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    try:
        assert up.returncode == 0, up.stderr[-3000:]
        found = Stack(project, f"http://127.0.0.1:{port}")
        for service in ("api-1", "api-2"):
            wait_healthy(found.container(service))
        deadline = time.monotonic() + 30
        while httpx.get(f"{found.url}/ready", timeout=5).status_code != 200:  # nginx answers too
            assert time.monotonic() < deadline, "nginx never answered /ready"
            time.sleep(0.2)
        yield found
    finally:
        subprocess.run([*compose, "down", "-v", "-t", "2"], cwd=ROOT, env=env, capture_output=True, timeout=300)


def test_images(images: None) -> None:
    """Non-root, the health check on /ready, and a build context of only what the images copy."""
    for image in ("localhost/rnnlm-api", "localhost/rnnlm-trainer"):
        listing = podman("run", "--rm", "--entrypoint", "sh", image, "-c", "id -u; ls -A /srv/rnnlm").stdout.split()
        assert listing[0] == "10001"
        assert sorted(listing[1:]) == ["README.md", "app", "model", "pyproject.toml", "training"]
    inspect = json.loads(podman("image", "inspect", "localhost/rnnlm-api").stdout)[0]
    health = inspect["Healthcheck"]["Test"]  # podman keeps it beside Config (docker format)
    assert health[0] == "CMD" and "http://127.0.0.1:8000/ready" in health[-1]
    version = podman(
        "run", "--rm", "--entrypoint", "python", "localhost/rnnlm-api", "-c", "import torch; print(torch.__version__)"
    )
    assert version.stdout.strip().endswith("+cpu")


def test_trainer_image_trains_with_two_ranks(images: None) -> None:
    """The trainer image under torchrun: two CPU ranks (gloo) in one container write a checkpoint."""
    work = Path(tempfile.mkdtemp(prefix="rnnlm-deploy-train-"))
    try:
        work.chmod(0o777)  # the image's user (uid 10001) writes the checkpoint here
        (work / "corpus.txt").write_text(CHAR_TEXT * 100, encoding="utf-8")
        command = ["--standalone", "--nproc-per-node", "2", "-m", "training", "char-shakespeare-quick"]
        command += ["--data", "/work/corpus.txt", "--out", "/work/model", "--device", "cpu"]
        command += ["--max-steps", "3", "--batch-size", "4", "--eval-lines", "10"]
        trained = podman(
            "run",
            "--rm",
            "-v",
            f"{work}:/work",
            "--entrypoint",
            "torchrun",
            "localhost/rnnlm-trainer",
            *command,
            timeout=300,
        )
        assert "saved /work/model" in trained.stdout + trained.stderr
        config = json.loads((work / "model" / "config.json").read_text(encoding="utf-8"))
        assert config["training"]["steps"] == 3 and config["training"]["world_size"] == 2
        assert (work / "model" / "model.safetensors").is_file()
    finally:
        shutil.rmtree(work, ignore_errors=True)


def sse_events(raw: str) -> list[tuple[str, dict[str, object]]]:
    events = []
    for block in raw.replace("\r\n", "\n").strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line and not line.startswith(":"))
        if "event" not in lines:  # a keep-alive comment
            continue
        events.append((lines["event"], json.loads(lines["data"])))
    return events


def test_generate_session_and_stream_through_nginx(stack: Stack) -> None:
    with httpx.Client(base_url=stack.url, timeout=60) as client:
        one_shot = client.post("/v1/generate", json={"prompt": "the quick ", "max_tokens": 12, "seed": 7})
        assert one_shot.status_code == 200, one_shot.text
        assert one_shot.json()["model"] == MODEL and one_shot.json()["usage"]["completion_tokens"] == 12

        # A session created by one request and continued by later ones: the state each
        # call leaves is in Redis, and its seeded text is the one-shot text of the whole.
        created = client.post("/v1/sessions", json={"prompt": "the "})
        assert created.status_code == 201, created.text
        session = created.json()["id"]
        for piece in ("quick ", "brown ", "fox "):
            fed = client.post(f"/v1/sessions/{session}/feed", json={"text": piece})
            assert fed.status_code == 200, fed.text
        generated = client.post(f"/v1/sessions/{session}/generate", json={"max_tokens": 12, "seed": 7})
        assert generated.status_code == 200, generated.text
        whole = client.post("/v1/generate", json={"prompt": "the quick brown fox ", "max_tokens": 12, "seed": 7})
        assert generated.json()["text"] == whole.json()["text"]
        assert generated.json()["session"]["token_count"] == len("the quick brown fox ") + 12

        # The session's calls all went to one replica (the consistent hash on its id).
        served = [service for service in ("api-1", "api-2") if session in stack.logs(service)]
        assert len(served) == 1, served

        # A stream comes through nginx event by event: the first token arrives in a read
        # of its own, before the closing event exists (proxy_buffering off).
        reads: list[bytes] = []
        body = {"prompt": "the ", "max_tokens": 100, "seed": 3, "stream": True}
        with client.stream("POST", "/v1/generate", json=body) as response:
            assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
            reads.extend(response.iter_raw())
        assert len(reads) > 1
        assert b"event: token" in reads[0] and b"event: done" not in reads[0]
        events = sse_events(b"".join(reads).decode())
        assert [name for name, _ in events] == ["token"] * 100 + ["done"]
        streamed = "".join(str(data["text"]) for name, data in events if name == "token")
        whole = client.post("/v1/generate", json={**body, "stream": False})
        assert streamed == whole.json()["text"]


@dataclass
class Client:
    """One of the 8 clients: a session fed piece by piece; what it knows was applied."""

    index: int
    session: str = ""
    applied: list[str] = field(default_factory=list)
    acknowledged: int = 0
    failures: list[str] = field(default_factory=list)


PROMPT = "a "
PIECES = [f"{word} " for word in "the cat sat on the mat and the dog sat on the log".split()]


def run_client(url: str, client: Client, go_on: threading.Event) -> None:
    with httpx.Client(base_url=url, timeout=15) as http:
        created = http.post("/v1/sessions", json={"prompt": PROMPT})
        assert created.status_code == 201, created.text
        client.session = created.json()["id"]
        for number, piece in enumerate(PIECES):
            if number == 4:
                go_on.wait(60)  # every client is past its first feeds before the kill
            before = len(PROMPT) + sum(map(len, client.applied))
            try:
                fed = http.post(f"/v1/sessions/{client.session}/feed", json={"text": piece})
                outcome = f"{fed.status_code} {fed.text[:200]}" if fed.status_code != 200 else ""
            except httpx.TransportError as error:
                outcome = f"{type(error).__name__}: {error}"
            if not outcome:
                client.applied.append(piece)
                client.acknowledged += 1
                continue
            client.failures.append(outcome)
            # The outcome of a failed feed is unknown: the session says whether it was applied.
            deadline = time.monotonic() + 30
            while True:
                state = http.get(f"/v1/sessions/{client.session}")
                if state.status_code == 200:
                    break
                assert time.monotonic() < deadline, state.text
                time.sleep(0.2)
            count = state.json()["token_count"]
            assert count in (before, before + len(piece)), (count, before, piece)
            if count == before + len(piece):
                client.applied.append(piece)


def test_replica_killed_while_8_clients_feed_sessions(stack: Stack) -> None:
    clients = [Client(index) for index in range(8)]
    go_on = threading.Event()
    errors: list[BaseException] = []

    def work(client: Client) -> None:
        try:
            run_client(stack.url, client, go_on)
        except BaseException as error:  # reported below, with the others
            errors.append(error)

    threads = [threading.Thread(target=work, args=(client,)) for client in clients]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 60
    while sum(c.acknowledged for c in clients) < 8 * 4 and not errors:
        assert time.monotonic() < deadline, "the clients did not get going"
        time.sleep(0.05)
    # The replica holding more of the sessions (by the hash) is the one killed.
    before_logs = {service: stack.logs(service) for service in ("api-1", "api-2")}
    on = {service: {c.session for c in clients if c.session in before_logs[service]} for service in before_logs}
    victim = max(on, key=lambda service: len(on[service]))
    survivor = "api-2" if victim == "api-1" else "api-1"
    assert on[victim], on
    os.kill(stack.pid(victim), 9)  # SIGKILL: no drain, no goodbye
    go_on.set()
    for thread in threads:
        thread.join(120)
    assert not errors, errors
    assert all(not thread.is_alive() for thread in threads)

    failures = [failure for c in clients for failure in c.failures]
    print(f"killed {victim} holding {len(on[victim])} of 8 sessions; failed feeds: {failures}")  # shown with -s
    # Only the feeds that were on the killed replica fail, as a gateway error or a cut
    # connection: none waited for the client's timeout (a ReadTimeout would not match).
    assert len(failures) <= len(on[victim]), failures
    assert all(re.match(r"50[234] |RemoteProtocolError|ReadError", failure) for failure in failures), failures

    # The sessions of the killed replica went on on the other one.
    survivor_logs = stack.logs(survivor)
    assert all(f"/v1/sessions/{session}/feed" in survivor_logs for session in on[victim])

    wait_healthy(stack.container(victim))  # podman restarted it (restart: unless-stopped)
    with httpx.Client(base_url=stack.url, timeout=30) as http:
        for client in clients:
            text = PROMPT + "".join(client.applied)
            assert len(client.applied) >= client.acknowledged
            state = http.get(f"/v1/sessions/{client.session}").json()
            assert state["token_count"] == len(text)  # every acknowledged feed is there, nothing else
            generated = http.post(
                f"/v1/sessions/{client.session}/generate", json={"max_tokens": 10, "seed": client.index}
            )
            one_shot = http.post("/v1/generate", json={"prompt": text, "max_tokens": 10, "seed": client.index})
            assert generated.status_code == 200 and one_shot.status_code == 200
            assert generated.json()["text"] == one_shot.json()["text"]
