"""`make serve`: from a fresh clone to a running service on the embedded defaults.

Finds a character model and a word model in the models directory and trains the quick
recipe for whichever is missing (the trainer's own progress bar shows), then serves
them with the embedded Redis and prints where to look. A second run finds the models
and is up in seconds. Ctrl-C stops it cleanly, also while training.

Training runs as a child process (`python -m training`): the online half never
imports the offline half.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import uvicorn
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from app.main import create_app
from app.settings import Settings
from model.checkpoint import CheckpointError, read_config

# The recipe trained when the models directory has no checkpoint of that level.
QUICK_RECIPES = {"char": "char-shakespeare-quick", "word": "word-ptb-quick"}
# Where a training run writes until it has finished (git-ignored); only a finished
# checkpoint is moved into the models directory, so an interrupted run leaves none.
WORK_DIR = Path("runs") / "quickstart"
# The corpora of a clone with ../shared beside it, when RNNLM_DATA_DIR is not set.
SHARED_DATA = Path("..") / "shared" / "data"


class QuickstartSettings(BaseSettings):
    """What `make serve` itself can be told (the server's settings are `Settings`)."""

    model_config = SettingsConfigDict(env_prefix="RNNLM_QUICKSTART_", extra="ignore")

    max_minutes: float = Field(
        default=0.0,
        ge=0,
        description="cap each quick recipe's training at this many minutes (0 = the recipe's own budget)",
    )


def models_by_level(models_dir: Path) -> dict[str, str]:
    """{level: model id} of the forward checkpoints found (the first by name for each level).

    A backward model (trained on reversed text) does not count: it cannot continue a prompt.
    """
    found: dict[str, str] = {}
    if not models_dir.is_dir():
        return found
    for directory in sorted(p for p in models_dir.iterdir() if p.is_dir()):
        try:
            config = read_config(directory)
        except CheckpointError:
            continue  # not a checkpoint; the server will say so when it loads the directory
        if config.get("direction", "forward") == "forward":
            found.setdefault(str(config["tokenizer"]["kind"]), directory.name)
    return found


def train(recipe: str, models_dir: Path, max_minutes: float) -> None:
    """Train `recipe` into a work directory, then move the finished checkpoint into place."""
    work = WORK_DIR / recipe
    shutil.rmtree(work, ignore_errors=True)
    # The bar (and the budget check) every 10 steps rather than the recipe's 50, so a
    # newcomer watching a slow CPU sees it move.
    command = [sys.executable, "-m", "training", recipe, "--out", str(work), "--log-every", "10"]
    if max_minutes > 0:
        command += ["--max-minutes", f"{max_minutes:g}"]
    env = dict(os.environ)
    if "RNNLM_DATA_DIR" not in env and SHARED_DATA.is_dir():
        env["RNNLM_DATA_DIR"] = str(SHARED_DATA.resolve())
    print(f"    {' '.join(command[1:])}", flush=True)
    # The trainer gets its own session, so Ctrl-C reaches only this process, which stops
    # the trainer quietly (SIGTERM) rather than have it print a KeyboardInterrupt trace.
    trainer = subprocess.Popen(command, env=env, start_new_session=True)
    try:
        returncode = trainer.wait()
    finally:
        if trainer.poll() is None:
            trainer.terminate()
            trainer.wait()
            shutil.rmtree(work, ignore_errors=True)
    if returncode != 0:
        raise subprocess.CalledProcessError(returncode, command)
    read_config(work)  # the trainer finished: it must have left a checkpoint
    models_dir.mkdir(parents=True, exist_ok=True)
    shutil.move(str(work), str(models_dir / recipe))


@contextmanager
def hangup_and_terminate_interrupt() -> Iterator[None]:
    """While training, a closed terminal or `kill` stops the trainer as Ctrl-C does."""
    previous = {sig: signal.signal(sig, signal.default_int_handler) for sig in (signal.SIGHUP, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def banner(base: str, models: dict[str, str]) -> str:
    char, word = models["char"], models["word"]
    return f"""
==> rnnlm-service is ready at {base}
    playground  {base}/          (pick a model, stream a generation, score a sentence)
    API docs    {base}/docs
    models      {base}/v1/models    metrics {base}/metrics    limits {base}/info

    Try:
    curl -s {base}/v1/generate -H 'Content-Type: application/json' \\
         -d '{{"model": "{char}", "prompt": "ROMEO:", "max_tokens": 120, "temperature": 0.8}}'
    curl -sN {base}/v1/generate -H 'Content-Type: application/json' \\
         -d '{{"model": "{char}", "prompt": "JULIET:", "max_tokens": 80, "stream": true}}'
    curl -s {base}/v1/next-token -H 'Content-Type: application/json' \\
         -d '{{"model": "{word}", "context": "the company said it", "top_k": 5}}'
    curl -s {base}/v1/score -H 'Content-Type: application/json' \\
         -d '{{"model": "{word}", "texts": ["the stock market fell sharply", "market the fell stock sharply"]}}'

    Ctrl-C stops the server.
"""


def announce_when_ready(base: str, models: dict[str, str], server: uvicorn.Server) -> None:
    """Print the banner once /ready answers 200 (models loaded, Redis up)."""
    while not server.should_exit:
        try:
            with urllib.request.urlopen(f"{base}/ready", timeout=2) as response:
                if response.status == 200:
                    print(banner(base, models), flush=True)
                    return
        except OSError:
            pass  # not listening yet, or not ready (503)
        time.sleep(0.5)


def serve(settings: Settings, models: dict[str, str]) -> None:
    """Run the service until Ctrl-C; uvicorn drains and runs the lifespan's shutdown."""
    redis = "RNNLM_REDIS_URL" if settings.redis_url else "its own embedded Redis"
    print(f"==> serving the models in {settings.models_dir}/ with {redis}")
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host=settings.host, port=settings.port))
    base = f"http://{'127.0.0.1' if settings.host in ('0.0.0.0', '::') else settings.host}:{settings.port}"
    threading.Thread(target=announce_when_ready, args=(base, models, server), daemon=True).start()
    try:
        server.run()
    except KeyboardInterrupt:
        pass  # uvicorn re-raises the Ctrl-C it caught once it has shut down cleanly


def main() -> int:
    settings = Settings()
    quick = QuickstartSettings()
    models = models_by_level(settings.models_dir)
    try:
        with hangup_and_terminate_interrupt():
            for level, recipe in QUICK_RECIPES.items():
                if level not in models:
                    print(f"\n==> training {recipe} (no {level} model in {settings.models_dir}/ yet)")
                    train(recipe, settings.models_dir, quick.max_minutes)
    except KeyboardInterrupt:
        print("\n==> interrupted; nothing half-trained was kept", file=sys.stderr)
        return 130
    except subprocess.CalledProcessError as exc:
        print(f"\n==> training failed (exit status {exc.returncode}); see the trainer's message above", file=sys.stderr)
        return 1
    serve(settings, models_by_level(settings.models_dir))
    print("==> stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
