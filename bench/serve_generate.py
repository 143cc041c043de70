"""Aggregate generation throughput of a live server against the in-process batched loop.

A 2x650 LSTM over a 10k-word vocabulary (random weights: only shapes matter for speed)
is written into a temporary models directory and `rnnlm-serve` is started on a loopback
port. For each of 1, 8 and 32: the in-process loop (`advance` + `sample_next` on a batch,
the ceiling the engine can reach) runs at that batch size while the server idles, then
that many concurrent clients each stream a generation of the same length from the
server. Prints tokens/s and the ratios.

    nice .venv/bin/python bench/serve_generate.py [--tokens 64] [--clients 1 8 32] [--torch-threads N]

Prints figures; never asserts on speed.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model.checkpoint import load_checkpoint, save_checkpoint
from model.inference import SamplingParams, advance, make_generator, sample_next
from model.network import RNNLM, ModelConfig, cat_states, split_state
from model.tokenizer import EOS, UNK, WordTokenizer
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


def in_process_tokens_per_second(model: RNNLM, batch: int, steps: int) -> float:
    """The engine's decoding step without the engine: one batched forward + per-row sampling."""
    params = [SamplingParams()] * batch
    generators = [make_generator(row) for row in range(batch)]
    histories: list[list[int]] = [[] for _ in range(batch)]
    with torch.inference_mode():
        states = split_state(model.init_state(batch))
        pending = torch.ones(batch, dtype=torch.long)
        started = time.perf_counter()
        for _ in range(steps):
            logits, state = advance(model, pending, cat_states(states))  # (B, V)
            ids, _ = sample_next(logits, params, generators, histories)
            states = split_state(state)  # the engine keeps one state per sequence
            pending = torch.tensor(ids)
        return batch * steps / (time.perf_counter() - started)


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


async def stream_one(client: httpx.AsyncClient, tokens: int, seed: int) -> int:
    """One streaming client; returns the tokens it received."""
    body = {"model": MODEL_ID, "max_tokens": tokens, "seed": seed, "stream": True, "stop_at_eos": False}
    marker = b"event: token"
    received, tail = 0, b""
    async with client.stream("POST", "/v1/generate", json=body) as response:
        response.raise_for_status()
        async for chunk in response.aiter_raw():  # count events without parsing: keep the client cheap
            data = tail + chunk
            received += data.count(marker)
            tail = data[-(len(marker) - 1) :] if not data.endswith(marker) else b""
    return received


async def served_tokens_per_second(url: str, clients: int, tokens: int) -> float:
    limits = httpx.Limits(max_connections=clients + 4)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:
        await asyncio.gather(*(stream_one(client, 2, seed=i) for i in range(clients)))  # open the connections
        started = time.perf_counter()
        counts = await asyncio.gather(*(stream_one(client, tokens, seed=i) for i in range(clients)))
        return sum(counts) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=64, help="tokens each client generates")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--torch-threads", type=int, default=None, help="same for the loop and the server")
    args = parser.parse_args()
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    threads = torch.get_num_threads()

    with tempfile.TemporaryDirectory() as tmp:
        models = build_models_dir(Path(tmp))
        model = load_checkpoint(models / MODEL_ID).model
        env = {"RNNLM_TORCH_THREADS": str(threads), "RNNLM_MAX_ACTIVE_SEQUENCES": str(max(args.clients) + 8)}
        in_process, served = {}, {}
        with live_server(models, env) as url:
            # Interleaved (the server idles while the loop runs), so load from other jobs drifts less between the two.
            for n in args.clients:
                in_process_tokens_per_second(model, n, 3)  # warm up
                in_process[n] = in_process_tokens_per_second(model, n, args.tokens)
                served[n] = asyncio.run(served_tokens_per_second(url, n, args.tokens))

    print(f"\n2x650 LSTM, 10k vocabulary, {args.tokens} tokens per sequence, torch threads {threads}, CPU")
    print(
        f"{'batch/clients':>13} | {'in-process tok/s':>16} | {'server tok/s':>12} | {'server/in-process':>17} | {'server vs 1 client':>18}"
    )
    print("-" * 90)
    base = served[args.clients[0]]
    for n in args.clients:
        print(
            f"{n:>13} | {in_process[n]:>16.0f} | {served[n]:>12.0f} | {served[n] / in_process[n]:>16.0%} | "
            f"{served[n] / base:>17.1f}x"
        )


if __name__ == "__main__":
    main()
