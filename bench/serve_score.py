"""Sentences/s through `POST /v1/score` against an in-process batched forward over the same sentences.

The model is the 2x650 LSTM of bench/serve_generate.py (random weights) over a 10k-word
vocabulary. The sentences are the first lines of PTB's validation split when
`RNNLM_DATA_DIR` has it (the vocabulary is then PTB's), else random sentences of PTB-like
lengths. The in-process side calls `feed_tokens` on batches of `--batch` sentences from
fresh states (what the engine does); the server side sends the same batches as
`/v1/score` calls, `--concurrency` at a time. Prints sentences/s and the ratio.

    nice .venv/bin/python bench/serve_score.py [--sentences 512] [--batch 64] [--concurrency 4]
                                               [--device cpu|cuda] [--json PATH]

Prints figures; never asserts on speed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

import httpx
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from serve_generate import MODEL_ID, live_server

from model.checkpoint import load_checkpoint, save_checkpoint
from model.inference import feed_tokens, fresh_sequences
from model.network import RNNLM, ModelConfig
from model.tokenizer import EOS, UNK, WordTokenizer


def corpus(count: int) -> tuple[WordTokenizer, list[str], str]:
    """A 10k vocabulary and `count` sentences: PTB's when available, else random ones."""
    data = Path(os.environ.get("RNNLM_DATA_DIR", "../shared/data")) / "ptb"
    if (data / "train.txt").is_file() and (data / "valid.txt").is_file():
        tokenizer = WordTokenizer.build((data / "train.txt").read_text(encoding="utf-8"), max_size=10_000)
        lines = [line.strip() for line in (data / "valid.txt").read_text(encoding="utf-8").splitlines() if line.strip()]
        return tokenizer, lines[:count], f"PTB valid, first {min(count, len(lines))} lines"
    tokenizer = WordTokenizer([UNK, EOS, *(f"w{i}" for i in range(9_998))])
    rng = random.Random(0)
    lines = [" ".join(f"w{rng.randrange(9_998)}" for _ in range(rng.randint(5, 45))) for _ in range(count)]
    return tokenizer, lines, f"{count} random sentences of 5-45 words (no RNNLM_DATA_DIR/ptb)"


def in_process_sentences_per_second(model: RNNLM, tokenizer: WordTokenizer, lines: list[str], batch: int) -> float:
    texts = [tokenizer.encode(line).ids for line in lines]
    started = time.perf_counter()
    for start in range(0, len(texts), batch):
        rows = texts[start : start + batch]
        state, pending = fresh_sequences(model, tokenizer.boundary_id, len(rows))
        feed_tokens(model, state, pending, rows)  # returns CPU lists: waits for the device
    return len(texts) / (time.perf_counter() - started)


async def served_sentences_per_second(url: str, lines: list[str], batch: int, concurrency: int) -> float:
    batches = [lines[start : start + batch] for start in range(0, len(lines), batch)]
    gate = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=600) as client:

        async def score(texts: list[str]) -> int:
            async with gate:
                response = await client.post("/v1/score", json={"model": MODEL_ID, "texts": texts})
                response.raise_for_status()
                return len(response.json()["results"])

        await score(batches[0][:2])  # warm up
        started = time.perf_counter()
        done = sum(await asyncio.gather(*(score(texts) for texts in batches)))
        return done / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sentences", type=int, default=512)
    parser.add_argument("--batch", type=int, default=64, help="sentences per forward / per /v1/score call")
    parser.add_argument("--concurrency", type=int, default=4, help="/v1/score calls in flight")
    parser.add_argument("--torch-threads", type=int, default=None, help="same for the loop and the server")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="for the loop and the server")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures to this JSON file")
    args = parser.parse_args()
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    threads = torch.get_num_threads()

    tokenizer, lines, source = corpus(args.sentences)
    tokens = sum(len(tokenizer.encode(line).ids) for line in lines)
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        config = ModelConfig(
            vocab_size=tokenizer.vocab_size, cell="lstm", embedding_size=650, hidden_size=650, num_layers=2, dropout=0
        )
        save_checkpoint(Path(tmp) / MODEL_ID, RNNLM(config).eval(), tokenizer)
        model = load_checkpoint(Path(tmp) / MODEL_ID, device=args.device).model
        in_process_sentences_per_second(model, tokenizer, lines[: args.batch], args.batch)  # warm up
        # The engine may merge the calls in flight into one forward: compare with that batch size too.
        sizes = sorted({args.batch, args.batch * args.concurrency})
        in_process = {size: in_process_sentences_per_second(model, tokenizer, lines, size) for size in sizes}
        del model
        env = {
            "RNNLM_TORCH_THREADS": str(threads),
            "RNNLM_MAX_SCORE_TEXTS": str(args.batch),
            "RNNLM_DEVICE": args.device,
        }
        with live_server(Path(tmp), env) as url:
            served = asyncio.run(served_sentences_per_second(url, lines, args.batch, args.concurrency))

    device = args.device.upper() if args.device == "cpu" else torch.cuda.get_device_name()
    print(
        f"\n2x650 LSTM, vocabulary {tokenizer.vocab_size}; {source}; {tokens} tokens; torch threads {threads}, {device}"
    )
    print(f"{'':>36} | {'sentences/s':>11} | {'tokens/s':>9} | {'server / this':>13}")
    print("-" * 80)
    for size, rate in in_process.items():
        label = f"in-process feed_tokens, batch {size}"
        print(f"{label:>36} | {rate:>11.1f} | {rate * tokens / len(lines):>9.0f} | {served / rate:>13.0%}")
    label = f"/v1/score, {args.batch}/call, {args.concurrency} in flight"
    print(f"{label:>36} | {served:>11.1f} | {served * tokens / len(lines):>9.0f} |")
    if args.json is not None:
        figures = {
            "device": device,
            "source": source,
            "sentences": len(lines),
            "tokens": tokens,
            "batch": args.batch,
            "concurrency": args.concurrency,
            "served_sentences_per_s": served,
            "in_process_sentences_per_s": {str(size): rate for size, rate in in_process.items()},
        }
        args.json.write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
