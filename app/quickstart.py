"""`make serve`: from a fresh clone to a running service on the embedded defaults.

Finds a character model and a word model in the models directory and serves as soon as
one exists: with neither, it first trains the character recipe (the quicker; the
trainer's own progress bar shows). The recipe still missing trains in the background
while the server runs, and the server loads it when it lands in the models directory
(app/models/watcher.py). A second run finds the models and is up in seconds. Ctrl-C
stops it cleanly, also while training, in front or behind.

Training runs as a child process (`python -m training`): the online half never
imports the offline half.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path

import uvicorn
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from app.main import create_app
from app.settings import Settings
from model.checkpoint import CheckpointError, read_config

# The recipe trained when the models directory has no checkpoint of that level; the first
# is trained before serving when there is none of either, so it is the quicker one.
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
    threads: int = Field(
        default=0,
        ge=0,
        description="torch threads of the trainer (0 = one per core; 1 trains several times faster on a busy CPU)",
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


class TrainingStopped(Exception):
    """`Training.stop` was called: the trainer was ended and its work directory removed."""


class Training:
    """One quick recipe trained in a child process; only a finished checkpoint moves into `models_dir`."""

    def __init__(self, recipe: str, models_dir: Path, quick: QuickstartSettings) -> None:
        self.recipe = recipe
        self.models_dir = models_dir
        self.work = WORK_DIR / recipe
        # The bar (and the budget check) every 10 steps rather than the recipe's 50, so a
        # newcomer watching a slow CPU sees it move.
        self.command = [sys.executable, "-m", "training", recipe, "--out", str(self.work), "--log-every", "10"]
        if quick.max_minutes > 0:
            self.command += ["--max-minutes", f"{quick.max_minutes:g}"]
        if quick.threads > 0:
            self.command += ["--threads", str(quick.threads)]
        self._lock = threading.Lock()  # `stop` may come from another thread
        self._trainer: subprocess.Popen[bytes] | None = None
        self._stopped = False

    def run(self, log: Path | None = None, niceness: int = 0) -> None:
        """Train (output to `log`, else this terminal), then move the checkpoint into place.

        Raises CalledProcessError when the trainer fails, TrainingStopped after `stop`.
        """
        shutil.rmtree(self.work, ignore_errors=True)
        env = dict(os.environ)
        if "RNNLM_DATA_DIR" not in env and SHARED_DATA.is_dir():
            env["RNNLM_DATA_DIR"] = str(SHARED_DATA.resolve())
        with ExitStack() as stack:
            output = stack.enter_context(log.open("wb")) if log else None
            with self._lock:
                if self._stopped:
                    raise TrainingStopped(self.recipe)
                # Its own session, so Ctrl-C reaches only this process, which stops the
                # trainer quietly (SIGTERM) rather than have it print a KeyboardInterrupt trace.
                trainer = subprocess.Popen(self.command, env=env, stdout=output, stderr=output, start_new_session=True)
                self._trainer = trainer
            if niceness:
                with suppress(OSError):  # set before torch starts its threads, which inherit it
                    os.setpriority(os.PRIO_PROCESS, trainer.pid, niceness)
            try:
                returncode = trainer.wait()
            finally:
                if trainer.poll() is None:  # interrupted here (Ctrl-C)
                    self._end(trainer)
        if self._stopped:
            shutil.rmtree(self.work, ignore_errors=True)
            raise TrainingStopped(self.recipe)
        if returncode != 0:
            raise subprocess.CalledProcessError(returncode, self.command)
        read_config(self.work)  # the trainer finished: it must have left a checkpoint
        self.models_dir.mkdir(parents=True, exist_ok=True)
        shutil.move(str(self.work), str(self.models_dir / self.recipe))

    def stop(self) -> None:
        """End the trainer if it runs (from any thread); `run` then removes its work and raises TrainingStopped."""
        with self._lock:
            self._stopped = True
            trainer = self._trainer
        if trainer is not None and trainer.poll() is None:
            self._end(trainer)

    def _end(self, trainer: subprocess.Popen[bytes]) -> None:
        trainer.terminate()
        trainer.wait()
        shutil.rmtree(self.work, ignore_errors=True)


class BackgroundTraining:
    """The recipes still missing once the server is up, trained one after another on a thread.

    Training competes with serving for the CPU (2 cores on the machine this was built
    on). The trainer keeps one torch thread per core unless RNNLM_QUICKSTART_THREADS says
    otherwise, so it finishes as soon as an idle server allows, but runs at a lower
    priority (`NICENESS`): when requests come, the server's threads get about three
    quarters of a contended core. Not lower: at nice 10 a trainer beside other busy
    processes gets a tenth of a core and its wall-clock budget runs out with little trained. Each finished checkpoint moves into
    the models directory, where the server's watcher picks it up.
    """

    NICENESS = 5

    def __init__(self, recipes: list[str], models_dir: Path, quick: QuickstartSettings, base: str) -> None:
        self.trainings = [Training(recipe, models_dir, quick) for recipe in recipes]
        self.base = base
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="quickstart-training", daemon=True)
        self._interrupted: str | None = None  # the recipe `stop` ended while it trained

    def start(self) -> None:
        if self.trainings:
            self._thread.start()

    def stop(self) -> None:
        """End the trainer, if one runs, and wait for the thread; nothing half-trained is kept."""
        self._stopping.set()
        for training in self.trainings:
            training.stop()
        if self._thread.is_alive():
            self._thread.join()
        if self._interrupted is not None:
            print(f"==> stopped training {self._interrupted}; nothing half-trained was kept", flush=True)

    def _run(self) -> None:
        for training in self.trainings:
            log = WORK_DIR / f"{training.recipe}.log"
            log.parent.mkdir(parents=True, exist_ok=True)
            print(f"\n==> training {training.recipe} in the background (progress: tail -f {log})", flush=True)
            try:
                training.run(log=log, niceness=self.NICENESS)
            except TrainingStopped:
                self._interrupted = training.recipe
                return
            except subprocess.CalledProcessError as exc:
                message = f"training {training.recipe} failed (exit status {exc.returncode}); see {log}"
                print(f"\n==> {message}", file=sys.stderr, flush=True)
                continue
            self._announce_when_served(training.recipe)

    def _announce_when_served(self, recipe: str) -> None:
        """Print what to try on a model trained here once the server lists it."""
        print(f"\n==> {recipe} trained; the server picks it up in a few seconds", flush=True)
        while not self._stopping.wait(1):
            if recipe in (served_models(self.base) or []):
                level = next(level for level, name in QUICK_RECIPES.items() if name == recipe)
                print(f"\n==> {recipe} is served now. Try:\n{examples(self.base, level, recipe)}", flush=True)
                return


@contextmanager
def hangup_and_terminate_interrupt() -> Iterator[None]:
    """While training, a closed terminal or `kill` stops the trainer as Ctrl-C does."""
    previous = {sig: signal.signal(sig, signal.default_int_handler) for sig in (signal.SIGHUP, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def examples(base: str, level: str, model_id: str) -> str:
    """A few curl lines to try on a model of this level."""
    if level == "char":
        return f"""    curl -s {base}/v1/generate -H 'Content-Type: application/json' \\
         -d '{{"model": "{model_id}", "prompt": "ROMEO:", "max_tokens": 120, "temperature": 0.8}}'
    curl -sN {base}/v1/generate -H 'Content-Type: application/json' \\
         -d '{{"model": "{model_id}", "prompt": "JULIET:", "max_tokens": 80, "stream": true}}'
"""
    return f"""    curl -s {base}/v1/next-token -H 'Content-Type: application/json' \\
         -d '{{"model": "{model_id}", "context": "the company said it", "top_k": 5}}'
    curl -s {base}/v1/score -H 'Content-Type: application/json' \\
         -d '{{"model": "{model_id}", "texts": ["the stock market fell sharply", "market the fell stock sharply"]}}'
"""


def banner(base: str, models: dict[str, str], training: list[str] | None = None) -> str:
    """What to look at and try, for the models served; `training` names those still to come."""
    tries = "".join(examples(base, level, model_id) for level, model_id in sorted(models.items()))
    coming = "".join(
        f"    {recipe} is training in the background; it is served when done (watch {base}/v1/models)\n"
        for recipe in training or []
    )
    return f"""
==> rnnlm-service is ready at {base}
    playground  {base}/          (pick a model, stream a generation, score a sentence)
    API docs    {base}/docs
    models      {base}/v1/models    metrics {base}/metrics    limits {base}/info

    Try:
{tries}{coming}
    Ctrl-C stops the server.
"""


def announce_when_ready(base: str, models: dict[str, str], training: list[str], server: uvicorn.Server) -> None:
    """Print the banner once /ready answers 200 (models loaded, Redis up)."""
    while not server.should_exit:
        if served_models(base) is not None:
            print(banner(base, models, training), flush=True)
            return
        time.sleep(0.5)


def served_models(base: str) -> list[str] | None:
    """The models /ready lists when it answers 200 (it needs no API key), else None."""
    try:
        with urllib.request.urlopen(f"{base}/ready", timeout=2) as response:
            models: list[str] = json.load(response)["models"]
            return models
    except OSError:
        return None  # not listening yet, or not ready (503)


def serve(settings: Settings, models: dict[str, str], training: list[str], quick: QuickstartSettings) -> None:
    """Run the service until Ctrl-C, training `training` meanwhile; uvicorn drains, the trainer stops."""
    redis = "RNNLM_REDIS_URL" if settings.redis_url else "its own embedded Redis"
    print(f"==> serving the models in {settings.models_dir}/ with {redis}")
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host=settings.host, port=settings.port))
    base = f"http://{'127.0.0.1' if settings.host in ('0.0.0.0', '::') else settings.host}:{settings.port}"
    threading.Thread(target=announce_when_ready, args=(base, models, training, server), daemon=True).start()
    background = BackgroundTraining(training, settings.models_dir, quick, base)
    # uvicorn turns Ctrl-C and SIGTERM into a clean shutdown; a closed terminal does the same.
    hangup = signal.signal(signal.SIGHUP, server.handle_exit)
    try:
        background.start()
        server.run()
    except KeyboardInterrupt:
        pass  # uvicorn re-raises the Ctrl-C it caught once it has shut down cleanly
    finally:
        signal.signal(signal.SIGHUP, hangup)
        background.stop()


def main() -> int:
    settings = Settings()
    quick = QuickstartSettings()
    found = models_by_level(settings.models_dir)
    missing = [(level, recipe) for level, recipe in QUICK_RECIPES.items() if level not in found]
    try:
        with hangup_and_terminate_interrupt():
            if not found:  # nothing to serve yet: train the first recipe (the quicker) before serving
                level, recipe = missing.pop(0)
                print(f"\n==> training {recipe} (no {level} model in {settings.models_dir}/ yet)")
                Training(recipe, settings.models_dir, quick).run()
            # The others train while the server runs; each is served once it is done.
            training = [recipe for _, recipe in missing]
            serve(settings, models_by_level(settings.models_dir), training, quick)
    except KeyboardInterrupt:
        print("\n==> interrupted; nothing half-trained was kept", file=sys.stderr)
        return 130
    except subprocess.CalledProcessError as exc:
        print(f"\n==> training failed (exit status {exc.returncode}); see the trainer's message above", file=sys.stderr)
        return 1
    print("==> stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
