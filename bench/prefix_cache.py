"""The prefix-state cache across requests (`RNNLM_PREFIX_CACHE_MB`): what it saves, and why it stays in the process.

Three parts, each run unless `--parts` names fewer:

- `lm-eval`: lm-evaluation-harness's own `simple_evaluate` with `local-completions` and its
  default arguments (one choice per request, token-id prompts, the remote tokenizer) on a
  4-choice task written here from PTB's validation text (contexts of 50-100 words, each
  choice `--continuation-words` words: the true next words and three spans from
  elsewhere), against a live server with the cache off (`0`) and on (`64`). Prints
  items/s of each, the ratio, and the largest difference between the two runs' logged
  log-likelihoods (they must agree).
- `autocomplete`: one growing prefix (PTB text, one more word per request) sent to
  `/v1/next-token`, cache off and on; prints the tokens each request fed (its context
  tokens less what `rnnlm_prefix_cache_tokens_saved_total` grew by) at the start, middle
  and end.
- `redis`: SET + GET of the model's state (2 layers x (h, c) x hidden float32) in a Redis
  against `feed_tokens` of 32 and 100 tokens in this process (the tokens a cached state
  saves): whether sharing the cache between replicas through Redis could pay.

    RNNLM_DATA_DIR=../shared/data .venv/bin/python bench/prefix_cache.py [--items 100] [--parts lm-eval autocomplete redis]

The model is a random-weight 2x`--hidden` (650) LSTM over PTB's 10k vocabulary (the
shapes decide the speed; accuracy is chance). Prints figures; never asserts on speed.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import redis
import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.mc_prefix import prepare_model, ptb_words
from model.checkpoint import load_checkpoint
from model.inference import feed_tokens, fresh_sequences
from model.network import state_tensors
from tests.live_server import ServeProcess

CHOICES = 4
CACHE_SETTINGS = ("0", "64")  # RNNLM_PREFIX_CACHE_MB: off, the default


def build_rows(words: list[str], count: int, continuation_words: int, seed: int) -> list[dict[str, Any]]:
    """lm_eval multiple-choice rows: a 50-100-word context, the true continuation and three from elsewhere."""
    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        context_words = rng.randint(50, 100)
        start = rng.randrange(0, len(words) - context_words - continuation_words)
        cut = start + context_words
        true = " ".join(words[cut : cut + continuation_words])
        others: list[str] = []
        while len(others) < CHOICES - 1:
            other = rng.randrange(0, len(words) - continuation_words)
            if abs(other - cut) > context_words + continuation_words:
                others.append(" ".join(words[other : other + continuation_words]))
        answer = rng.randrange(CHOICES)
        choices = [*others[:answer], true, *others[answer:]]
        rows.append({"context": " ".join(words[start:cut]), "choices": choices, "answer": answer})
    return rows


def write_task(directory: Path, rows: list[dict[str, Any]]) -> None:
    """The task config and its JSONL data, as tests/e2e/test_lm_eval_tasks.py writes them."""
    data = directory / "ptb_choice.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    task = {
        "task": "ptb_choice",
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data)}},
        "test_split": "test",
        "output_type": "multiple_choice",
        "doc_to_text": "context",
        "doc_to_choice": "choices",
        "doc_to_target": "answer",
        "metric_list": [{"metric": "acc"}],
        "metadata": {"version": 1.0},
    }
    (directory / "ptb_choice.yaml").write_text(yaml.safe_dump(task))


def cache_metrics(url: str, model_id: str) -> dict[str, float]:
    """The rnnlm_prefix_cache_* samples of one model from /metrics."""
    found = {}
    for line in httpx.get(f"{url}/metrics", timeout=30).text.splitlines():
        if line.startswith("rnnlm_prefix_cache_") and f'model="{model_id}"' in line and "_created" not in line:
            name, value = line.split("{")[0], line.rsplit(" ", 1)[1]
            found[name.removeprefix("rnnlm_prefix_cache_")] = float(value)
    return found


@dataclass
class Evaluated:
    requesting_s: float  # wall time of lm_eval's requests (after its tokenizing)
    requesting_cpu_s: float  # the server's CPU time meanwhile
    simple_evaluate_s: float  # the whole simple_evaluate call: tokenizing, metrics and all
    logged: dict[tuple[int, int], float]  # log-likelihood of each (doc, choice)


def evaluate(server: ServeProcess, model_id: str, tasks: Path) -> Evaluated:
    from lm_eval import simple_evaluate
    from lm_eval.api.registry import get_model
    from lm_eval.tasks import TaskManager

    # What simple_evaluate builds from model="local-completions" and these model_args (every other one its
    # default), made here only so that the requests can be timed apart from task loading and tokenizing.
    model_args = f"model={model_id},base_url={server.url}/v1/completions"
    lm = get_model("local-completions").create_from_arg_string(model_args)
    requesting = [0.0, 0.0]
    send = lm._loglikelihood_tokens

    def timed(requests: list[Any], **kwargs: Any) -> list[tuple[float, bool]]:
        started, cpu = time.perf_counter(), cpu_seconds(server)
        answers: list[tuple[float, bool]] = send(requests, **kwargs)
        requesting[0] += time.perf_counter() - started
        requesting[1] += cpu_seconds(server) - cpu
        return answers

    lm._loglikelihood_tokens = timed  # type: ignore[method-assign]
    task_manager = TaskManager(include_path=str(tasks))  # indexes lm_eval's own tasks too: seconds, not timed
    started = time.perf_counter()
    results = simple_evaluate(model=lm, tasks=["ptb_choice"], task_manager=task_manager, log_samples=True)
    whole = time.perf_counter() - started
    assert results is not None
    logged = {
        (sample["doc_id"], choice): logprob
        for sample in results["samples"]["ptb_choice"]
        for choice, [(logprob, _is_greedy)] in enumerate(sample["resps"])
    }
    return Evaluated(requesting[0], requesting[1], whole, logged)


def run_lm_eval(models: Path, model_id: str, root: Path, args: argparse.Namespace) -> None:
    words, _ = ptb_words(data_dir())
    rows = build_rows(words, args.items, args.continuation_words, args.seed)
    tasks = root / "tasks"
    tasks.mkdir()
    write_task(tasks, rows)
    context_words = statistics.mean(len(row["context"].split()) for row in rows)
    print(
        f"\nlm-eval local-completions (defaults: 1 choice per request), {model_id}, {args.items} PTB-valid items x "
        f"{CHOICES} choices, contexts 50-100 words (mean {context_words:.1f}), continuations {args.continuation_words} "
        f"words; server torch threads {args.torch_threads}, CPU"
    )
    print(
        f"{'round':>5} | {'RNNLM_PREFIX_CACHE_MB':>21} | {'items/s requesting':>18} | {'items/s simple_evaluate':>23} | "
        f"{'server CPU s/item':>17} | load"
    )
    logged: dict[str, dict[tuple[int, int], float]] = {}
    ratios: list[tuple[float, float]] = []
    for round_ in range(1, args.rounds + 1):
        # Off and on alternate, so that the load other jobs put on the machine drifts less between them.
        measured: dict[str, tuple[float, float]] = {}
        for cache_mb in CACHE_SETTINGS:
            log = root / f"lm-eval-{cache_mb}-{round_}.log"
            with serve(models, model_id, log, cache_mb, args.torch_threads) as server:
                run = evaluate(server, model_id, tasks)
                metrics = cache_metrics(server.url, model_id)
            logged[cache_mb] = run.logged
            measured[cache_mb] = (run.requesting_s, run.requesting_cpu_s)
            print(
                f"{round_:>5} | {cache_mb:>21} | {args.items / run.requesting_s:>18.2f} | "
                f"{args.items / run.simple_evaluate_s:>23.2f} | {run.requesting_cpu_s / args.items:>17.3f} | {load()}"
            )
            if cache_mb != "0":
                print(f"{'':>5}   /metrics: {metrics}")
        (off, off_cpu), (on, on_cpu) = measured["0"], measured["64"]
        ratios.append((off / on, off_cpu / on_cpu))
        difference = max(abs(logged["0"][key] - logged["64"][key]) for key in logged["0"])
        print(
            f"{'':>5}   ratio on / off: {off / on:.2f}x items/s requesting, {off_cpu / on_cpu:.2f}x server CPU per "
            f"item (target >= 2.5x); {len(logged['0'])} logged log-likelihoods, largest |off - on| {difference:.3g}"
        )
    print(
        f"median over {args.rounds} round(s): {statistics.median(r for r, _ in ratios):.2f}x items/s, "
        f"{statistics.median(c for _, c in ratios):.2f}x server CPU per item"
    )


def cpu_seconds(server: ServeProcess) -> float:
    """User + system CPU seconds the server process has used (Linux /proc; its threads included)."""
    assert server.process is not None
    fields = Path(f"/proc/{server.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


def run_autocomplete(models: Path, model_id: str, root: Path, args: argparse.Namespace) -> None:
    words, _ = ptb_words(data_dir())
    start = random.Random(args.seed).randrange(0, len(words) - args.prefix_words)
    prefix = words[start : start + args.prefix_words]
    marks = sorted({0, 1, 2, args.prefix_words // 2, args.prefix_words - 2, args.prefix_words - 1})
    for cache_mb in CACHE_SETTINGS:
        with serve(models, model_id, root / f"autocomplete-{cache_mb}.log", cache_mb, args.torch_threads) as server:
            url = server.url
            fed, seconds = [], []
            with httpx.Client(base_url=url, timeout=120) as client:
                saved = cache_metrics(url, model_id).get("tokens_saved_total", 0.0)
                for n in range(1, args.prefix_words + 1):
                    body = {"model": model_id, "context": " ".join(prefix[:n]), "top_k": 5}
                    started = time.perf_counter()
                    answer = client.post("/v1/next-token", json=body)
                    seconds.append(time.perf_counter() - started)
                    answer.raise_for_status()
                    now = cache_metrics(url, model_id).get("tokens_saved_total", 0.0)
                    fed.append(answer.json()["context_tokens"] - int(now - saved))
                    saved = now
        print(
            f"\nautocomplete, RNNLM_PREFIX_CACHE_MB={cache_mb}: one PTB prefix growing a word a request to "
            f"{args.prefix_words} words, /v1/next-token; load {load()}"
        )
        print(" | ".join(f"request {n + 1}: fed {fed[n]}, {seconds[n] * 1000:.1f} ms" for n in marks))
        print(
            f"mean ms/request: first 10 {1000 * statistics.mean(seconds[:10]):.1f}, "
            f"last 10 {1000 * statistics.mean(seconds[-10:]):.1f}; tokens fed in all {sum(fed)}"
        )


def run_redis(models: Path, model_id: str, args: argparse.Namespace) -> None:
    torch.set_num_threads(args.torch_threads)
    checkpoint = load_checkpoint(models / model_id)
    model, boundary = checkpoint.model.eval(), checkpoint.tokenizer.boundary_id
    words, _ = ptb_words(data_dir())
    ids = checkpoint.tokenizer.encode(" ".join(words[:200])).ids
    state, _ = fresh_sequences(model, boundary, 1)
    blob = b"".join(t.numpy().tobytes() for t in state_tensors(state))
    key = f"rnnlm-bench:prefix-state:{secrets.token_hex(6)}"
    shapes = [t.shape for t in state_tensors(state)]

    def round_trip() -> None:
        client.set(key, blob, ex=60)
        raw = client.get(key)
        assert raw is not None
        torch.frombuffer(bytearray(raw), dtype=torch.float32).view(len(shapes), *shapes[0]).unbind(0)  # (h, c)

    with redis.Redis.from_url(args.redis_url) as client:
        client.ping()
        try:
            trips = timings(round_trip, args.repeats)
        finally:
            client.delete(key)
    print(
        f"\nRedis {args.redis_url}: SET + GET + decode of a {len(blob):,}-byte state ({model_id}), "
        f"{args.repeats} times; load {load()}"
    )
    print(f"  p50 {trips[0]:.3f} ms, p99 {trips[1]:.3f} ms")
    for count in (32, 100):
        for with_logprobs in (True, False):
            feed = partial(feed_tokens, model, state, [boundary], [ids[:count]], with_logprobs)
            p50, p99 = timings(feed, args.repeats // 20)
            print(
                f"feed_tokens {count} tokens, batch 1, {args.torch_threads} thread(s), logprobs {with_logprobs}: "
                f"p50 {p50:.2f} ms, p99 {p99:.2f} ms; load {load()}"
            )


def timings(fn: Callable[[], object], repeats: int) -> tuple[float, float]:
    """p50 and p99 of `fn` in ms (after one warm-up call)."""
    fn()
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - started) * 1000)
    samples.sort()
    return statistics.median(samples), samples[min(len(samples) - 1, round(0.99 * (len(samples) - 1)))]


@contextmanager
def serve(models: Path, model_id: str, log: Path, cache_mb: str, threads: int) -> Iterator[ServeProcess]:
    """`rnnlm-serve` with its own Redis, the model as default (lm_eval's remote tokenizer names none)."""
    env = {
        "RNNLM_PREFIX_CACHE_MB": cache_mb,
        "RNNLM_DEFAULT_MODEL": model_id,
        "RNNLM_TORCH_THREADS": str(threads),
        "RNNLM_REDIS_URL": None,
    }
    server = ServeProcess(models, log, env).start(timeout=180)
    try:
        yield server
    finally:
        server.stop()
        if "Traceback" in log.read_text():
            print(f"a Traceback in the server log:\n{log.read_text()[-3000:]}")


def data_dir() -> Path:
    return Path(os.environ.get("RNNLM_DATA_DIR", "../shared/data"))


def load() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", nargs="+", choices=["lm-eval", "autocomplete", "redis"], default=None)
    parser.add_argument("--items", type=int, default=100, help="multiple-choice items")
    parser.add_argument("--rounds", type=int, default=2, help="lm-eval: off/on pairs, alternating")
    parser.add_argument("--continuation-words", type=int, default=5, help="words per choice")
    parser.add_argument("--prefix-words", type=int, default=200, help="autocomplete: words in the end")
    parser.add_argument("--hidden", type=int, default=650, help="hidden size of the random 2-layer LSTM")
    parser.add_argument("--torch-threads", type=int, default=1, help="the server's (and the redis part's) threads")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--repeats", type=int, default=2000, help="redis round trips (feeds: a twentieth)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    parts = args.parts or ["lm-eval", "autocomplete", "redis"]

    _, train_text = ptb_words(data_dir())
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        models = root / "models"
        models.mkdir()
        model_id, _ = prepare_model(models, None, train_text, args.hidden)
        print(f"{model_id}: random weights, PTB's 10k vocabulary; load at start {load()}")
        if "lm-eval" in parts:
            run_lm_eval(models, model_id, root, args)
        if "autocomplete" in parts:
            run_autocomplete(models, model_id, root, args)
        if "redis" in parts:
            run_redis(models, model_id, args)


if __name__ == "__main__":
    main()
