"""Corpora of 100 MB to 1 GB: encode once, then start at once, in bounded memory.

Builds corpora of the given sizes from the local WikiText-2 (all three files, lines
repeated in order until the size is reached; written under --workdir, never in the
repository), then, per size and level, runs `rnnlm-train char-shakespeare-quick --data
FILE --level L` twice in a fresh subprocess each, over a fresh token cache:

- first run: the token files are written; prints the time spent learning the
  vocabulary and encoding (and the corpus MB per second of it);
- second run: the same command; prints the time from the process's start to the end
  of the first training step (imports, hashing or not, opening the memmaps, the model).

Each run stops right after its first optimizer step and reports its peak RSS
(`ru_maxrss`). Word level: 10,000 words; subword: 8,000 BPE tokens.

    .venv/bin/python bench/corpus_scale.py --sizes 100,400,1000 --data-dir ../shared/data
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
LEVEL_FLAGS = {
    "char": ["--level", "char"],
    "word": ["--level", "word", "--max-vocab", "10000"],
    "subword": ["--level", "subword", "--max-vocab", "8000"],
}


def build_corpus(path: Path, megabytes: int, data_dir: Path) -> None:
    """WikiText-2's lines, repeated in order, up to `megabytes` MB (cut at a line end)."""
    if path.is_file() and path.stat().st_size >= megabytes * 1_000_000 - 100_000:
        return
    source = b"".join((data_dir / "wikitext-2" / f"{s}.txt").read_bytes() for s in ("train", "valid", "test"))
    target = megabytes * 1_000_000
    tmp = path.with_suffix(".tmp")
    with tmp.open("wb") as out:
        written = 0
        while written + len(source) <= target:
            out.write(source)
            written += len(source)
        rest = source[: target - written]
        out.write(rest[: rest.rfind(b"\n") + 1])
    tmp.replace(path)


def child(argv: list[str], report: Path) -> None:
    """Run rnnlm-train in this process; at the first optimizer step write the figures and exit."""

    from training import cli, token_cache

    timings: dict[str, float] = {}

    def timed(name: str, function: Any) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            started, cpu = time.perf_counter(), time.process_time()
            try:
                return function(*args, **kwargs)
            finally:
                timings[name] = timings.get(name, 0.0) + time.perf_counter() - started
                timings[f"{name}_cpu"] = timings.get(f"{name}_cpu", 0.0) + time.process_time() - cpu

        return wrapper

    token_cache.build_tokenizer_from = timed("vocabulary_s", token_cache.build_tokenizer_from)
    token_cache.encoded_corpus = timed("prepare_s", token_cache.encoded_corpus)
    from training import trainer  # it imports encoded_corpus by name

    trainer.encoded_corpus = token_cache.encoded_corpus

    def first_step(*_: Any) -> None:
        figures = {
            **timings,
            "first_step_s": time.time() - STARTED,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        }
        report.write_text(json.dumps(figures))
        os._exit(0)

    from torch.optim.optimizer import register_optimizer_step_post_hook

    register_optimizer_step_post_hook(first_step)
    sys.exit(cli.main(argv))


STARTED = time.time()


def run_once(corpus: Path, level: str, cache: Path, out: Path, report: Path, threads: int) -> dict[str, Any]:
    argv = [
        "char-shakespeare-quick",
        "--data",
        str(corpus),
        *LEVEL_FLAGS[level],
        "--cache-dir",
        str(cache),
        "--out",
        str(out),
        "--progress",
        "false",
        "--max-minutes",
        "1",
        "--threads",
        str(threads),
    ]
    report.unlink(missing_ok=True)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, __file__, "--child", str(report), "--", *argv]
    done = subprocess.run(command, env=env, cwd=ROOT, check=False, capture_output=True, text=True)
    if not report.is_file():
        raise SystemExit(f"{level} run failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return dict(json.loads(report.read_text()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="100,400,1000", help="corpus sizes in MB")
    parser.add_argument("--levels", default="char,word,subword")
    parser.add_argument("--data-dir", default=os.environ.get("RNNLM_DATA_DIR", str(ROOT.parent / "shared" / "data")))
    parser.add_argument("--workdir", default="/tmp/rnnlm-corpus-scale", help="corpora, caches and runs go here")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--keep", action="store_true", help="keep the token caches afterwards")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args, rest = parser.parse_known_args()
    if args.child:
        child([a for a in rest if a != "--"], Path(args.child))
        return
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    sizes = [int(s) for s in args.sizes.split(",")]
    for size in sizes:
        build_corpus(work / f"corpus-{size}mb.txt", size, Path(args.data_dir))
    print(f"# {os.cpu_count()} CPUs, {args.threads} torch threads; load average at start {os.getloadavg()}")
    print(
        "| corpus | level | first run: vocabulary (s) | first run: vocabulary + encode, all splits (s; CPU s) "
        "| MB/s (per CPU-s) | peak RSS, first run | second run: time to first step (of it, opening the data) "
        "| peak RSS, second run | load average after |"
    )
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    for size in sizes:
        corpus = work / f"corpus-{size}mb.txt"
        megabytes = corpus.stat().st_size / 1e6
        for level in args.levels.split(","):
            cache = work / f"cache-{size}-{level}"
            shutil.rmtree(cache, ignore_errors=True)
            out = work / f"run-{size}-{level}"
            first = run_once(corpus, level, cache, out, work / "report.json", args.threads)
            second = run_once(corpus, level, cache, out, work / "report.json", args.threads)
            prepare = first["prepare_s"]
            vocabulary = first.get("vocabulary_s", 0.0)
            load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
            cpu = first["prepare_s_cpu"]
            print(
                f"| {megabytes:,.0f} MB | {level} | {vocabulary:.1f} | {prepare:.1f}; {cpu:.1f} "
                f"| {megabytes / prepare:.1f} ({megabytes / cpu:.1f}) | {first['peak_rss_mb']:,.0f} MB "
                f"| {second['first_step_s']:.1f} s ({second['prepare_s']:.2f} s) | {second['peak_rss_mb']:,.0f} MB "
                f"| {load} |",
                flush=True,
            )
            if not args.keep:
                shutil.rmtree(cache, ignore_errors=True)
            shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
