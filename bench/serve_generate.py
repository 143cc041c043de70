"""Aggregate generation throughput of a live server against the model's forward-only ceiling.

A 2x650 LSTM over a 10k-word vocabulary (random weights: only shapes matter for speed;
`--hidden`/`--layers` change it) is written into a temporary models directory and
`rnnlm-serve` is started on a loopback port. For each client count N: the ceiling is
the model's batched one-token forward alone at batch N (no sampling, no engine: the
physical limit of a decode step), measured while the server idles; then N concurrent
clients each stream a generation of the same length from the server with the given
sampling settings. Prints tokens/s, the share of the ceiling and the speed-up over one
client, measured side by side in one run.

With `--regex PATTERN` every client count is measured in the same run free and with
every request constrained to the regex (`structured_outputs.regex`; the vocabulary is
`w0 .. w9997`, and a text from an empty prompt starts at a line start, so e.g.
`'w[0-9]*[02468]( w[0-9]*[02468])*'` allows the words that end in an even digit), each
the median of `--repeat` alternating runs; then the mask cost per decode step alone:
llguidance's masks for that many rows along a random walk of allowed tokens, as the
engine computes them each tick. Run it with PYTHONPATH=. so that the server started is
this checkout's.

    nice .venv/bin/python bench/serve_generate.py [--tokens 64] [--clients 1 32 64]
        [--temperature 0.8 --top-p 0.95 --top-k 0] [--regex PATTERN [--repeat 3]]
        [--torch-threads 1] [--device cpu|cuda] [--json OUT]

Prints figures; never asserts on speed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.engine.constraint import Constraint, ConstraintVocabulary
from model.checkpoint import load_checkpoint, save_checkpoint
from model.inference import advance
from model.network import RNNLM, ModelConfig
from model.tokenizer import EOS, UNK, Tokenizer, WordTokenizer
from tests.live_server import ServeProcess

MODEL_ID = "lstm-2x650"


def build_models_dir(root: Path, vocab_size: int = 10_000, hidden: int = 650, layers: int = 2) -> Path:
    """A word checkpoint shaped like the medium PTB model, with random weights."""
    tokenizer = WordTokenizer([UNK, EOS, *(f"w{i}" for i in range(vocab_size - 2))])
    torch.manual_seed(0)
    config = ModelConfig(
        vocab_size=vocab_size, cell="lstm", embedding_size=hidden, hidden_size=hidden, num_layers=layers, dropout=0.0
    )
    save_checkpoint(root / MODEL_ID, RNNLM(config).eval(), tokenizer, training={"corpus": "random weights"})
    return root


def ceiling_tokens_per_second(model: RNNLM, batch: int, steps: int) -> float:
    """The model's batched one-token forward alone (the decode step's physical limit), tokens/s."""
    device = model.decoder.weight.device
    with torch.inference_mode():
        state = model.init_state(batch)
        pending = torch.ones(batch, dtype=torch.long, device=device)
        advance(model, pending, state)  # warm up (kernels, allocator)
        synchronize(device)
        started = time.perf_counter()
        for _ in range(steps):
            _, state = advance(model, pending, state)  # (B, V) logits, never looked at
        synchronize(device)
        return batch * steps / (time.perf_counter() - started)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextmanager
def live_server(models: Path, env_overrides: dict[str, str]) -> Iterator[str]:
    """`rnnlm-serve` on a free loopback port until the block ends."""
    log = Path(tempfile.NamedTemporaryFile(prefix="rnnlm-serve-", suffix=".log", delete=False).name)
    server = ServeProcess(models, log, env_overrides)
    try:
        try:
            server.start(timeout=180)
        except RuntimeError as exc:
            raise SystemExit(str(exc)) from exc
        yield server.url
    finally:
        server.stop()


def mask_cost_ms(tokenizer: Tokenizer, regex: str, rows: int, steps: int) -> float:
    """Median milliseconds for one tick's masks of `rows` rows under `regex` (llguidance, as the engine computes them)."""
    vocabulary = ConstraintVocabulary(tokenizer)
    matchers = [vocabulary.compile(Constraint("regex", regex), at_line_start=True).matcher for _ in range(rows)]
    rng = random.Random(0)
    times = []
    for _ in range(steps):
        started = time.perf_counter()
        masks = vocabulary.masks(matchers)
        times.append(time.perf_counter() - started)
        going = []
        for matcher, mask in zip(matchers, masks, strict=True):
            allowed = [i for i in mask.nonzero().flatten().tolist() if i != vocabulary.end_id]
            if allowed:
                matcher.consume_token(rng.choice(allowed))
                going.append(matcher)
        matchers = going
        if not matchers:
            break
    return statistics.median(times) * 1e3


async def stream_one(url: str, tokens: int, seed: int, sampling: dict[str, Any]) -> int:
    """One streaming client on a raw socket (an HTTP client library would take CPU from the server it
    measures on a small machine); returns the tokens it received."""
    body = json.dumps(
        {"model": MODEL_ID, "max_tokens": tokens, "seed": seed, "stream": True, "stop_at_eos": False, **sampling}
    ).encode()
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(
        b"POST /v1/generate HTTP/1.1\r\nHost: " + host.encode() + b"\r\nContent-Type: application/json\r\n"
        b"Connection: close\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )
    marker = b"event: token"
    received, tail = 0, b""
    try:
        status = await reader.readline()
        if b" 200 " not in status:
            raise SystemExit(f"the server answered {status!r}: {(await reader.read())[-400:]!r}")
        while chunk := await reader.read(65536):  # count events without parsing: keep the client cheap
            data = tail + chunk
            received += data.count(marker)
            if b"event: done" in data:
                break
            tail = data[-(len(marker) - 1) :]
    finally:
        writer.close()
    return received


async def served_tokens_per_second(url: str, clients: int, tokens: int, sampling: dict[str, Any]) -> float:
    await asyncio.gather(*(stream_one(url, 2, i, sampling) for i in range(clients)))  # warm up
    started = time.perf_counter()
    counts = await asyncio.gather(*(stream_one(url, tokens, i, sampling) for i in range(clients)))
    return sum(counts) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=64, help="tokens each client generates")
    parser.add_argument(
        "--clients", nargs="+", default=["1", "32", "64"], help="client counts, space- or comma-separated"
    )
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--top-k", type=int, default=0)
    parser.add_argument("--regex", default=None, help="also measure every request constrained to this regex")
    parser.add_argument("--repeat", type=int, default=3, help="with --regex: free and constrained runs, alternating")
    parser.add_argument("--hidden", type=int, default=650)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--torch-threads", type=int, default=None, help="same for the ceiling and the server")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows as JSON here")
    args = parser.parse_args()
    args.clients = [int(n) for group in args.clients for n in group.split(",") if n]
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    threads = torch.get_num_threads()
    sampling: dict[str, Any] = {"temperature": args.temperature, "top_p": args.top_p, "top_k": args.top_k}

    with tempfile.TemporaryDirectory() as tmp:
        models = build_models_dir(Path(tmp), hidden=args.hidden, layers=args.layers)
        model = load_checkpoint(models / MODEL_ID).model.to(args.device)
        env = {
            "RNNLM_TORCH_THREADS": str(threads),
            "RNNLM_MAX_ACTIVE_SEQUENCES": str(max(args.clients) + 8),
            "RNNLM_DEVICE": args.device,
        }
        ceiling, served, constrained, masks = {}, {}, {}, {}
        constraint = {"structured_outputs": {"regex": args.regex}}
        with live_server(models, env) as url:
            # Interleaved (the server idles while the forward runs), so load from other jobs drifts less between them.
            for n in args.clients:
                ceiling[n] = ceiling_tokens_per_second(model, n, args.tokens)
                if not args.regex:
                    served[n] = asyncio.run(served_tokens_per_second(url, n, args.tokens, sampling))
                    continue
                # Free and constrained alternate `--repeat` times: the medians, so that load from other
                # jobs that comes and goes falls on both alike.
                free, held = [], []
                for _ in range(args.repeat):
                    free.append(asyncio.run(served_tokens_per_second(url, n, args.tokens, sampling)))
                    held.append(asyncio.run(served_tokens_per_second(url, n, args.tokens, {**sampling, **constraint})))
                served[n], constrained[n] = statistics.median(free), statistics.median(held)
        if args.regex:
            tokenizer = load_checkpoint(models / MODEL_ID).tokenizer
            masks = {n: mask_cost_ms(tokenizer, args.regex, n, args.tokens) for n in args.clients}

    settings = ", ".join(f"{k} {v:g}" for k, v in sampling.items())
    print(
        f"\n{args.layers}x{args.hidden} LSTM, 10k vocabulary, {args.tokens} tokens per sequence, {settings}, "
        f"torch threads {threads}, {args.device}"
    )
    print(
        f"{'clients':>7} | {'server tok/s':>12} | {'forward-only ceiling tok/s':>26} | {'of ceiling':>10} | {'vs 1 client':>11}"
    )
    print("-" * 80)
    base = served[args.clients[0]]
    rows = []
    for n in args.clients:
        rows.append(
            {
                "clients": n,
                "tokens_per_s": served[n],
                "ceiling_tokens_per_s": ceiling[n],
                "ratio_to_ceiling": served[n] / ceiling[n],
                "speedup_vs_one": served[n] / base,
            }
        )
        print(
            f"{n:>7} | {served[n]:>12.0f} | {ceiling[n]:>26.0f} | {served[n] / ceiling[n]:>10.0%} | {served[n] / base:>10.1f}x"
        )
    if args.regex:
        print(f"\nconstrained to the regex {args.regex!r} (load {os.getloadavg()[0]:.1f})")
        print(
            f"{'clients':>7} | {'free tok/s':>10} | {'constrained tok/s':>17} | {'constrained/free':>16} | "
            f"{'mask ms/step':>12} | {'mask µs/row':>11}"
        )
        print("-" * 90)
        for row in rows:
            n = row["clients"]
            row |= {"constrained_tokens_per_s": constrained[n], "mask_ms_per_step": masks[n]}
            print(
                f"{n:>7} | {served[n]:>10.0f} | {constrained[n]:>17.0f} | {constrained[n] / served[n]:>16.0%} | "
                f"{masks[n]:>12.2f} | {masks[n] * 1e3 / n:>11.0f}"
            )
    if args.json:
        settings = {**sampling, "regex": args.regex}
        args.json.write_text(json.dumps({"settings": settings, "device": args.device, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
