"""Aggregate generation throughput of a live server against the model's forward-only ceiling.

A 2x650 LSTM over a 10k-word vocabulary (random weights: only shapes matter for speed;
`--hidden`/`--layers` change it) is written into a temporary models directory and
`rnnlm-serve` is started on a loopback port. For each client count N: the ceiling is
the model's batched one-token forward alone at batch N (no sampling, no engine: the
physical limit of a decode step), measured while the server idles; then N concurrent
clients each stream a generation of the same length from the server with the given
sampling settings. Prints tokens/s, the share of the ceiling and the speed-up over one
client, measured side by side in one run. With `--dtype float32 bfloat16` (the default) one
server per RNNLM_DTYPE runs, and each is compared with the forward in its own dtype and
with the physical ceiling: the faster of the two forwards at that batch.

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
        [--torch-threads 1] [--device cpu|cuda] [--dtype float32 bfloat16] [--json OUT]

Prints figures; never asserts on speed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
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
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


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
    parser.add_argument(
        "--dtype",
        nargs="+",
        choices=list(DTYPES),
        default=["float32", "bfloat16"],
        help="RNNLM_DTYPE of the servers measured side by side (one server each)",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the rows as JSON here")
    args = parser.parse_args()
    args.clients = [int(n) for group in args.clients for n in group.split(",") if n]
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    threads = torch.get_num_threads()
    sampling: dict[str, Any] = {"temperature": args.temperature, "top_p": args.top_p, "top_k": args.top_k}

    dtypes = [DTYPES[name] for name in args.dtype]
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as servers:
        models = build_models_dir(Path(tmp), hidden=args.hidden, layers=args.layers)
        env = {
            "RNNLM_TORCH_THREADS": str(threads),
            "RNNLM_MAX_ACTIVE_SEQUENCES": str(max(args.clients) + 8),
            "RNNLM_DEVICE": args.device,
        }
        # One server per dtype, all started first; the measurements interleave (each server idles
        # while another is measured), so load from other jobs falls on every dtype alike.
        urls = {name: servers.enter_context(live_server(models, {**env, "RNNLM_DTYPE": name})) for name in args.dtype}
        forward = {
            name: load_checkpoint(models / MODEL_ID).model.to(args.device, dtype)
            for name, dtype in zip(args.dtype, dtypes, strict=True)
        }
        ceiling: dict[tuple[str, int], float] = {}
        served: dict[tuple[str, int], float] = {}
        constrained: dict[tuple[str, int], float] = {}
        masks: dict[int, float] = {}
        constraint = {"structured_outputs": {"regex": args.regex}}
        for n in args.clients:
            for name in args.dtype:
                key = (name, n)
                ceiling[key] = ceiling_tokens_per_second(forward[name], n, args.tokens)
                if not args.regex:
                    served[key] = asyncio.run(served_tokens_per_second(urls[name], n, args.tokens, sampling))
                    continue
                # Free and constrained alternate `--repeat` times: the medians, so that load from other
                # jobs that comes and goes falls on both alike.
                free, held = [], []
                for _ in range(args.repeat):
                    free.append(asyncio.run(served_tokens_per_second(urls[name], n, args.tokens, sampling)))
                    held.append(
                        asyncio.run(served_tokens_per_second(urls[name], n, args.tokens, {**sampling, **constraint}))
                    )
                served[key], constrained[key] = statistics.median(free), statistics.median(held)
        load = os.getloadavg()
        if args.regex:
            tokenizer = load_checkpoint(models / MODEL_ID).tokenizer
            masks = {n: mask_cost_ms(tokenizer, args.regex, n, args.tokens) for n in args.clients}

    settings = ", ".join(f"{k} {v:g}" for k, v in sampling.items())
    print(
        f"\n{args.layers}x{args.hidden} LSTM, 10k vocabulary, {args.tokens} tokens per sequence, {settings}, "
        f"torch threads {threads}, {args.device}, load average {load[0]:.2f} {load[1]:.2f}"
    )
    print(
        "ceiling: the batched one-token forward alone in the server's dtype; physical: the best of the dtypes "
        "measured (the machine's fastest precision at that batch)"
    )
    print(
        f"{'clients':>7} | {'dtype':>8} | {'server tok/s':>12} | {'forward-only tok/s':>18} | {'of it':>6} | "
        f"{'physical tok/s':>14} | {'of it':>6} | {'vs 1 client':>11}"
    )
    print("-" * 104)
    rows = []
    for n in args.clients:
        physical = max(ceiling[(name, n)] for name in args.dtype)
        for name in args.dtype:
            key = (name, n)
            base = served[(name, args.clients[0])]
            rows.append(
                {
                    "clients": n,
                    "dtype": name,
                    "tokens_per_s": served[key],
                    "ceiling_tokens_per_s": ceiling[key],
                    "ratio_to_ceiling": served[key] / ceiling[key],
                    "physical_ceiling_tokens_per_s": physical,
                    "ratio_to_physical": served[key] / physical,
                    "speedup_vs_one": served[key] / base,
                }
            )
            print(
                f"{n:>7} | {name:>8} | {served[key]:>12.0f} | {ceiling[key]:>18.0f} | {served[key] / ceiling[key]:>6.0%} | "
                f"{physical:>14.0f} | {served[key] / physical:>6.0%} | {served[key] / base:>10.1f}x"
            )
    if len(args.dtype) > 1:
        first, *others = args.dtype
        for other in others:
            ratios = ", ".join(f"{n}: {served[(other, n)] / served[(first, n)]:.2f}x" for n in args.clients)
            print(f"server {other} / {first} by clients: {ratios}")
    if args.regex:
        print(f"\nconstrained to the regex {args.regex!r}")
        print(
            f"{'clients':>7} | {'dtype':>8} | {'free tok/s':>10} | {'constrained tok/s':>17} | {'constrained/free':>16} | "
            f"{'mask ms/step':>12} | {'mask µs/row':>11}"
        )
        print("-" * 101)
        for row in rows:
            n, key = row["clients"], (row["dtype"], row["clients"])
            row |= {"constrained_tokens_per_s": constrained[key], "mask_ms_per_step": masks[n]}
            print(
                f"{n:>7} | {row['dtype']:>8} | {served[key]:>10.0f} | {constrained[key]:>17.0f} | "
                f"{constrained[key] / served[key]:>16.0%} | {masks[n]:>12.2f} | {masks[n] * 1e3 / n:>11.0f}"
            )
    if args.json:
        settings = {**sampling, "regex": args.regex}
        args.json.write_text(json.dumps({"settings": settings, "device": args.device, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
