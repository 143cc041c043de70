"""Multiple-choice items/s through `/v1/completions`, scored the way lm-evaluation-harness scores them.

Each item is one context and four continuations (the true next words of PTB's validation
text and three spans from elsewhere in it), the context four times as long as a
continuation. Every (context + continuation) is a prompt; `--batch` prompts go in one
`/v1/completions` request with `echo`, `logprobs: 1` and `max_tokens: 0` (lm-evaluation-
harness batches its requests the same way and sorts them so that the four choices of an
item are neighbours), `--concurrency` requests in flight. A choice's score is the sum of
its continuation tokens' logprobs; the best one is the answer.

The server runs twice, with `RNNLM_SHARE_PREFIXES=true` and `=false`, so that the four
prompts of an item may share their context's forward pass or not; it prints items/s for
each, the ratio, the accuracy, and how far the two runs' scores differ (they must agree).

    RNNLM_DATA_DIR=../shared/data .venv/bin/python bench/mc_prefix.py [--items 200] [--model DIR]

Without `--model` the model is a random-weight 2x`--hidden` LSTM over PTB's 10k vocabulary
(accuracy is then chance). Prints figures; never asserts on speed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.settings import Settings
from model.checkpoint import load_checkpoint, save_checkpoint
from model.network import RNNLM, ModelConfig
from model.tokenizer import Tokenizer, WordTokenizer
from tests.live_server import ServeProcess

CHOICES = 4


@dataclass(frozen=True)
class Item:
    context: str
    continuations: list[str]  # each starts with a space, as lm-evaluation-harness's do
    answer: int


def ptb_words(data_dir: Path) -> tuple[list[str], str]:
    """PTB's validation text as one word stream (line ends dropped), and the train text for a vocabulary."""
    ptb = data_dir / "ptb"
    if not (ptb / "valid.txt").is_file():
        raise SystemExit(f"no PTB in {ptb}: set RNNLM_DATA_DIR to the folder that holds ptb/ (../shared/data)")
    return (ptb / "valid.txt").read_text(encoding="utf-8").split(), (ptb / "train.txt").read_text(encoding="utf-8")


def build_items(words: list[str], count: int, continuation_words: int, seed: int) -> list[Item]:
    """Contexts of 4x`continuation_words` words; distractors are spans of the same length from elsewhere."""
    rng = random.Random(seed)
    context_words = 4 * continuation_words
    span = context_words + continuation_words
    starts = rng.sample(range(0, len(words) - span), count)
    items = []
    for start in starts:
        context = " ".join(words[start : start + context_words])
        true = " " + " ".join(words[start + context_words : start + span])
        others = []
        while len(others) < CHOICES - 1:
            other = rng.randrange(0, len(words) - continuation_words)
            if abs(other - (start + context_words)) > span:
                others.append(" " + " ".join(words[other : other + continuation_words]))
        answer = rng.randrange(CHOICES)
        items.append(Item(context, [*others[:answer], true, *others[answer:]], answer))
    return items


def prepare_model(models: Path, given: Path | None, train_text: str, hidden: int) -> tuple[str, Tokenizer]:
    """Copy the given checkpoint, or save a random-weight 2-layer LSTM over PTB's vocabulary, into `models`."""
    if given is not None:
        shutil.copytree(given, models / given.name)
        return given.name, load_checkpoint(models / given.name).tokenizer
    tokenizer = WordTokenizer.build(train_text, max_size=10_000)
    torch.manual_seed(0)
    config = ModelConfig(
        vocab_size=tokenizer.vocab_size, cell="lstm", embedding_size=hidden, hidden_size=hidden, num_layers=2, dropout=0
    )
    model_id = f"lstm-2x{hidden}"
    save_checkpoint(models / model_id, RNNLM(config).eval(), tokenizer)
    return model_id, tokenizer


async def score_items(
    url: str, model_id: str, tokenizer: Tokenizer, items: list[Item], batch: int, concurrency: int
) -> tuple[float, list[list[float]]]:
    """(items/s, each item's continuation scores); the batches of `batch` prompts go `concurrency` at a time."""
    prompts = [
        (index, item.context + continuation) for index, item in enumerate(items) for continuation in item.continuations
    ]
    context_tokens = [len(tokenizer.encode(item.context).ids) for item in items]
    batches = [prompts[start : start + batch] for start in range(0, len(prompts), batch)]
    scores: list[list[float]] = [[] for _ in items]
    gate = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=600) as client:

        async def send(rows: list[tuple[int, str]]) -> list[tuple[int, float]]:
            body = {
                "model": model_id,
                "prompt": [text for _, text in rows],
                "max_tokens": 0,
                "echo": True,
                "logprobs": 1,
                "temperature": 0,
            }
            async with gate:
                response = await client.post("/v1/completions", json=body)
            response.raise_for_status()
            choices = sorted(response.json()["choices"], key=lambda choice: choice["index"])
            return [
                (index, sum(choice["logprobs"]["token_logprobs"][context_tokens[index] :]))
                for (index, _), choice in zip(rows, choices, strict=True)
            ]

        await send(batches[0])  # warm up
        started = time.perf_counter()
        answers = await asyncio.gather(*(send(rows) for rows in batches))
        elapsed = time.perf_counter() - started
    for rows in answers:
        for index, logprob in rows:
            scores[index].append(logprob)
    return len(items) / elapsed, scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=200)
    parser.add_argument("--continuation-words", type=int, default=5, help="words per continuation (context: 4x)")
    parser.add_argument("--batch", type=int, default=16, help="prompts per request (lm-eval's batch_size)")
    parser.add_argument("--concurrency", type=int, default=1, help="requests in flight (lm-eval's num_concurrent)")
    parser.add_argument(
        "--model", type=Path, default=None, help="a checkpoint directory (default: random 2xHIDDEN LSTM)"
    )
    parser.add_argument("--hidden", type=int, default=256, help="hidden size of the random model")
    parser.add_argument("--torch-threads", type=int, default=1, help="the server's torch threads")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    words, train_text = ptb_words(Path(os.environ.get("RNNLM_DATA_DIR", "../shared/data")))
    items = build_items(words, args.items, args.continuation_words, args.seed)
    if "share_prefixes" not in Settings.model_fields:
        print("note: this server has no RNNLM_SHARE_PREFIXES setting yet; both runs are the same configuration")
    results: dict[str, tuple[float, list[list[float]]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        models = Path(tmp) / "models"
        models.mkdir()
        model_id, tokenizer = prepare_model(models, args.model, train_text, args.hidden)
        for share in ("true", "false"):
            env = {
                "RNNLM_SHARE_PREFIXES": share,
                "RNNLM_TORCH_THREADS": str(args.torch_threads),
                "RNNLM_MAX_SCORE_TEXTS": str(max(args.batch, 64)),
                "RNNLM_REDIS_URL": None,  # its own embedded Redis
            }
            server = ServeProcess(models, Path(tmp) / f"server-{share}.log", env).start(timeout=180)
            try:
                results[share] = asyncio.run(
                    score_items(server.url, model_id, tokenizer, items, args.batch, args.concurrency)
                )
            finally:
                server.stop()

    shared, unshared = results["true"], results["false"]
    accuracy = sum(
        max(range(CHOICES), key=s.__getitem__) == item.answer for s, item in zip(shared[1], items, strict=True)
    )
    difference = max(abs(a - b) for x, y in zip(shared[1], unshared[1], strict=True) for a, b in zip(x, y, strict=True))
    print(
        f"\n{model_id}; {args.items} PTB-valid items, {CHOICES} choices, context {4 * args.continuation_words} words, "
        f"continuation {args.continuation_words}; {args.batch} prompts/request, {args.concurrency} in flight; "
        f"server torch threads {args.torch_threads}, CPU"
    )
    print(f"{'RNNLM_SHARE_PREFIXES':>22} | {'items/s':>8} | {'prompts/s':>9}")
    print("-" * 46)
    for share, (rate, _) in results.items():
        print(f"{share:>22} | {rate:>8.1f} | {rate * CHOICES:>9.1f}")
    print(f"ratio with / without sharing: {shared[0] / unshared[0]:.2f}x")
    print(
        f"accuracy {accuracy / len(items):.1%} (chance {1 / CHOICES:.0%}); largest score difference between runs {difference:.2e}"
    )


if __name__ == "__main__":
    main()
