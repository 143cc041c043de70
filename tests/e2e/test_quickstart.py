"""The README's `make serve` from a fresh clone: install, train, serve, Ctrl-C, again.

A `git clone` of this repository goes into a temporary directory with `shared/` beside
it, and `make serve` runs there with a clean environment: it makes its own venv (the
torch wheel is local), trains the char recipe cut short by the documented
`RNNLM_QUICKSTART_MAX_MINUTES`, starts its embedded Redis and serves it while the word
recipe trains in the background, then serves that too. Ctrl-C (SIGINT to the foreground
process group, as a terminal sends it) is pressed four times: while the first recipe
trains (nothing half-trained may stay), once the service has served both models, after a
second run that must reuse everything and be up quickly, and while a word model trains
behind a running server (nothing half-trained may stay). Each time nothing may be left
running.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from app.main import create_app
from app.quickstart import banner, models_by_level
from app.settings import Settings
from model.checkpoint import save_checkpoint
from tests.factories import make_checkpoint, tiny_model, word_tokenizer
from tests.helpers import wait_until
from tests.redis_server import free_port
from tests.test_readme import curl_commands, run_examples

ROOT = Path(__file__).resolve().parents[2]
# CI cuts training short with the setting the README documents; a person leaves it unset.
MAX_MINUTES = "0.05"


def shared_dir() -> Path:
    """The `shared/` that sits beside this checkout (or holds RNNLM_DATA_DIR)."""
    beside = ROOT.parent / "shared"
    if (beside / "data").is_dir():
        return beside
    data = os.environ.get("RNNLM_DATA_DIR")
    assert data and Path(data).is_dir(), "needs ../shared/data beside the checkout, or RNNLM_DATA_DIR"
    return Path(data).resolve().parent


def clean_environment(port: int) -> dict[str, str]:
    """This process's environment minus the venv and every RNNLM_ setting, as on a fresh machine."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RNNLM_") and k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    venv_bin = str(ROOT / ".venv" / "bin")
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if p != venv_bin)
    env["RNNLM_QUICKSTART_MAX_MINUTES"] = MAX_MINUTES
    env["RNNLM_PORT"] = str(port)
    return env


def processes_left(session_id: int, directory: Path) -> list[str]:
    """Command lines of the live processes in session `session_id` or working in `directory`.

    The trainer runs in a session of its own, hence the second test.
    """
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue  # gone meanwhile
        try:
            cwd = Path(os.readlink(entry / "cwd"))
        except OSError:
            cwd = Path("/")
        fields = stat.rsplit(")", 1)[1].split()  # after "pid (comm)": state ppid pgrp session ...
        in_session = int(fields[3]) == session_id
        if fields[0] != "Z" and (in_session or cwd.is_relative_to(directory)):
            found.append(cmdline.strip())
    return found


def as_from_a_terminal() -> Callable[[], None]:
    """What `make serve` runs before exec: Ctrl-C at its default, as a terminal's shell has it
    (whatever pytest inherited), and SIGTERM when this test process dies, so a test run that
    is killed leaves no server behind (make passes SIGTERM on to the quickstart)."""
    prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up here: the child only calls it
    pr_set_pdeathsig = 1

    def setup() -> None:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        prctl(pr_set_pdeathsig, signal.SIGTERM)

    return setup


class MakeServe:
    """`make serve` in its own session (so Ctrl-C can go to the whole group), output to a log."""

    def __init__(self, clone: Path, env: dict[str, str], log: Path) -> None:
        self.clone = clone
        self.log_path = log
        self.log = log.open("w")
        self.process = subprocess.Popen(
            ["make", "serve"],
            cwd=clone,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=as_from_a_terminal(),
        )

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for_output(self, text: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.output():
            assert self.process.poll() is None, f"make serve exited early:\n{self.output()[-4000:]}"
            assert time.monotonic() < deadline, f"no {text!r} after {timeout:.0f} s:\n{self.output()[-4000:]}"
            time.sleep(0.5)

    def wait_ready(self, base: str, timeout: float) -> float:
        """Seconds until /ready answered 200; fails with the log if it never did."""
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            assert self.process.poll() is None, f"make serve exited early:\n{self.output()[-4000:]}"
            try:
                if httpx.get(f"{base}/ready", timeout=2).status_code == 200:
                    return time.monotonic() - start
            except httpx.TransportError:
                pass
            time.sleep(1)
        raise AssertionError(f"not ready after {timeout:.0f} s:\n{self.output()[-4000:]}")

    def interrupt(self) -> None:
        """Ctrl-C as a terminal sends it: SIGINT to every process of the foreground group."""
        try:
            if self.process.poll() is None:
                os.killpg(self.process.pid, signal.SIGINT)
                self.process.wait(timeout=60)
        finally:
            self.log.close()
        time.sleep(0.5)  # a process that is exiting may still be listed for a moment
        left = processes_left(self.process.pid, self.clone)
        assert not left, f"still running after Ctrl-C: {left}"


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_make_serve_from_a_fresh_clone(tmp_path: Path) -> None:
    (tmp_path / "shared").symlink_to(shared_dir())
    clone = tmp_path / "main"
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(clone)], check=True)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = clean_environment(port)

    # Ctrl-C while the first recipe trains: the trainer stops, nothing half-trained is kept.
    interrupted = MakeServe(clone, env, tmp_path / "interrupted.log")
    try:
        interrupted.wait_for_output("==> training char-shakespeare-quick", timeout=600)
        interrupted.wait_for_output("it/s", timeout=300)  # the progress bar: the trainer is running
    finally:
        interrupted.interrupt()
    assert "==> interrupted; nothing half-trained was kept" in interrupted.output()
    assert "Traceback" not in interrupted.output()
    assert not (clone / "models").exists() and not list((clone / "runs" / "quickstart").iterdir())

    # Served as soon as the char model exists; the word model joins while it runs.
    first = MakeServe(clone, env, tmp_path / "first.log")
    try:
        ready = first.wait_ready(base, timeout=900)
        generated = httpx.post(
            f"{base}/v1/generate",
            json={"model": "char-shakespeare-quick", "prompt": "ROMEO:", "max_tokens": 20, "seed": 1},
            timeout=30,
        )
        assert generated.status_code == 200, generated.text
        assert generated.json()["usage"]["completion_tokens"] == 20
        both = ready + wait_until_served(first, base, "word-ptb-quick", timeout=600)
        models = {card["id"]: card["level"] for card in httpx.get(f"{base}/v1/models").json()["data"]}
        assert models == {"char-shakespeare-quick": "char", "word-ptb-quick": "word"}
        first.wait_for_output("==> word-ptb-quick is served now", timeout=30)
    finally:
        first.interrupt()
    output = first.output()
    assert "==> training char-shakespeare-quick" in output
    assert "==> training word-ptb-quick in the background" in output
    assert output.index("rnnlm-service is ready") < output.index("==> word-ptb-quick is served now")
    assert "it/s" in output or "s/it" in output  # the trainer's progress bar was shown
    assert f"rnnlm-service is ready at {base}" in output and "curl -sN" in output
    assert "==> stopped" in output and "Traceback" not in output
    print(f"first `make serve` ready in {ready:.1f} s, both models served in {both:.1f} s")
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{base}/health", timeout=2)

    # Again: nothing to install or train, up in seconds.
    second = MakeServe(clone, env, tmp_path / "second.log")
    try:
        seconds = second.wait_ready(base, timeout=120)
    finally:
        second.interrupt()
    output = second.output()
    assert "==> training" not in output and "pip install" not in output and "Traceback" not in output
    assert "==> stopped" in output
    print(f"second `make serve` ready in {seconds:.1f} s")

    # Ctrl-C while a recipe trains behind the server: the trainer stops, nothing half-trained is kept.
    shutil.rmtree(clone / "models" / "word-ptb-quick")
    behind = MakeServe(clone, {**env, "RNNLM_QUICKSTART_MAX_MINUTES": "1"}, tmp_path / "behind.log")
    try:
        behind.wait_ready(base, timeout=120)
        behind.wait_for_output("==> training word-ptb-quick in the background", timeout=30)
        trainer_log = clone / "runs" / "quickstart" / "word-ptb-quick.log"
        wait_for(lambda: "it/s" in trainer_log.read_text(errors="replace"), "the trainer's progress", timeout=300)
    finally:
        behind.interrupt()
    output = behind.output()
    assert "==> stopped training word-ptb-quick; nothing half-trained was kept" in output
    assert "==> stopped" in output and "Traceback" not in output
    assert not (clone / "models" / "word-ptb-quick").exists()
    assert not (clone / "runs" / "quickstart" / "word-ptb-quick").exists()


def wait_for(condition: Callable[[], bool], what: str, timeout: float) -> None:
    """The shared wait, from this synchronous test (polling every half second)."""
    asyncio.run(wait_until(condition, what, timeout, interval=0.5))


def wait_until_served(serve: MakeServe, base: str, model_id: str, timeout: float) -> float:
    """Seconds until /v1/models lists `model_id`."""
    start = time.monotonic()

    def listed() -> bool:
        assert serve.process.poll() is None, f"make serve exited early:\n{serve.output()[-4000:]}"
        return model_id in [card["id"] for card in httpx.get(f"{base}/v1/models", timeout=5).json()["data"]]

    wait_for(listed, f"{model_id} in /v1/models", timeout)
    return time.monotonic() - start


def test_a_level_counts_as_present_only_with_a_forward_checkpoint(tmp_path: Path) -> None:
    tokenizer = word_tokenizer()
    save_checkpoint(tmp_path / "a-word-backward", tiny_model(tokenizer), tokenizer, direction="backward")
    (tmp_path / "b-notes").mkdir()  # not a checkpoint
    make_checkpoint(tmp_path / "c-char", level="char")
    assert models_by_level(tmp_path) == {"char": "c-char"}  # a backward model cannot continue a prompt
    make_checkpoint(tmp_path / "d-word", level="word")
    make_checkpoint(tmp_path / "e-word", level="word")
    assert models_by_level(tmp_path) == {"char": "c-char", "word": "d-word"}
    assert models_by_level(tmp_path / "missing") == {}


async def test_the_curl_lines_it_prints_work(tmp_path: Path, redis_url: str) -> None:
    make_checkpoint(tmp_path / "c", level="char")
    make_checkpoint(tmp_path / "w", level="word")
    commands = curl_commands(banner("http://127.0.0.1:8000", {"char": "c", "word": "w"}))
    assert len(commands) == 4
    app = create_app(Settings(models_dir=tmp_path, redis_url=redis_url))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8000", timeout=30) as client:
            await run_examples(client, commands)
