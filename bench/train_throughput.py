"""Training throughput (tokens/s) of `word-ptb-small` at batch 20, bptt 35, on this machine.

    python bench/train_throughput.py [--steps 200] [--rounds 3] [--threads 0] [--data-dir DIR]

Times the real training loop (training.trainer.Trainer, read from its metrics.jsonl,
validation excluded) and, interleaved with it so both see the same machine load, a
faithful copy of the pytorch/examples word_language_model train() loop on the same
data and sizes. Prints figures; asserts nothing about speed.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch import Tensor, nn

from training.batching import batchify, encode_stream
from training.config import build_config, load_recipe
from training.data import Corpus, load_corpus
from training.metrics import read_metrics
from training.trainer import Trainer, build_tokenizer


class ReferenceModel(nn.Module):
    """pytorch/examples' RNNModel (LSTM): sequence-first, dropout, linear decoder."""

    def __init__(self, vocab_size: int, size: int = 200, layers: int = 2, dropout: float = 0.2) -> None:
        super().__init__()
        self.drop = nn.Dropout(dropout)
        self.encoder = nn.Embedding(vocab_size, size)
        self.rnn = nn.LSTM(size, size, layers, dropout=dropout)
        self.decoder = nn.Linear(size, vocab_size)
        self.layers, self.size = layers, size

    def forward(self, ids: Tensor, hidden: tuple[Tensor, Tensor]) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        output, hidden = self.rnn(self.drop(self.encoder(ids)), hidden)
        return self.decoder(self.drop(output)).view(-1, self.decoder.out_features), hidden

    def init_hidden(self, batch_size: int) -> tuple[Tensor, Tensor]:
        weight = next(self.parameters())
        shape = (self.layers, batch_size, self.size)
        return (weight.new_zeros(shape), weight.new_zeros(shape))


def reference_tokens_per_s(
    stream: Tensor, vocab_size: int, steps: int, batch_size: int = 20, bptt: int = 35
) -> tuple[float, float]:
    """The example's train() loop: repackage_hidden, zero_grad, clip 0.25, p.data.add_(-lr * grad)."""
    torch.manual_seed(1111)
    data = batchify(stream, batch_size).t().contiguous()  # (L, B): the example is sequence-first
    model = ReferenceModel(vocab_size)
    model.train()
    criterion = nn.CrossEntropyLoss()
    hidden = model.init_hidden(batch_size)
    lr, total_loss = 20.0, 0.0

    def one_step(i: int) -> None:
        nonlocal hidden, total_loss
        seq_len = min(bptt, len(data) - 1 - i)
        inputs, targets = data[i : i + seq_len], data[i + 1 : i + 1 + seq_len].reshape(-1)
        model.zero_grad()
        hidden = (hidden[0].detach(), hidden[1].detach())
        output, hidden = model(inputs, hidden)
        loss = criterion(output, targets)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.25)
        for p in model.parameters():
            assert p.grad is not None
            p.data.add_(p.grad, alpha=-lr)
        total_loss += loss.item()

    for step in range(10):  # warm-up
        one_step(step * bptt)
    started, cpu_started = time.perf_counter(), time.process_time()
    for step in range(10, 10 + steps):
        one_step(step * bptt)
    tokens = steps * batch_size * bptt
    return tokens / (time.perf_counter() - started), tokens / (time.process_time() - cpu_started)


def trainer_tokens_per_s(values: dict[str, object], corpus: Corpus, steps: int) -> tuple[float, float]:
    """Tokens/s of Trainer's own loop over `steps` steps after a 25-step warm-up interval."""
    # Only the training loop is timed: a few lines of valid/test keep the closing evaluation short.
    short = dataclasses.replace(corpus, valid=cut_lines(corpus.valid, 100), test=cut_lines(corpus.test, 100))
    with tempfile.TemporaryDirectory() as out:
        config = build_config({**values, "out": out, "max_steps": 25 + steps, "log_every": 25, "progress": False})
        Trainer(config, corpus=short).run()
        rows = [r for r in read_metrics(Path(out)) if r["kind"] == "train"][1:]  # drop the warm-up interval
        tokens = 25 * config.batch_size * config.bptt * len(rows)
        seconds = sum(25 * config.batch_size * config.bptt / r["tokens_per_s"] for r in rows)
        cpu_seconds = sum(25 * config.batch_size * config.bptt / r["tokens_per_cpu_s"] for r in rows)
        return tokens / seconds, tokens / cpu_seconds


def cut_lines(text: str, lines: int) -> str:
    return "".join(text.splitlines(keepends=True)[:lines])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200, help="timed steps per round (after warm-up)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds of each loop")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = all cores)")
    parser.add_argument("--data-dir", default=os.environ.get("RNNLM_DATA_DIR", ""), help="local corpora")
    parser.add_argument("--recipe", default="word-ptb-small")
    args = parser.parse_args()
    torch.set_num_threads(args.threads or os.cpu_count() or 1)

    values = {**load_recipe(args.recipe), "data_dir": args.data_dir, "batch_size": 20, "bptt": 35}
    # The reference configuration (2x200 LSTM, dropout 0.2), whatever the recipe's dropout: same work on both sides.
    values.update(max_minutes=0.0, eval_every=0, dropout=0.2)
    corpus = load_corpus(str(values["data"]), args.data_dir)
    tokenizer = build_tokenizer(build_config(values), corpus.train)
    stream = encode_stream(tokenizer, corpus.train)

    print(f"recipe {args.recipe}: batch 20, bptt 35, vocab {tokenizer.vocab_size}, torch {torch.__version__}")
    print(
        f"threads {torch.get_num_threads()}, cpu_count {os.cpu_count()}, load average before {os.getloadavg()}",
        flush=True,
    )
    ours: list[tuple[float, float]] = []
    reference: list[tuple[float, float]] = []
    for round_number in range(args.rounds):
        ours.append(trainer_tokens_per_s(values, corpus, args.steps))
        reference.append(reference_tokens_per_s(stream, tokenizer.vocab_size, args.steps))
        print(
            f"round {round_number + 1}: rnnlm-train {ours[-1][0]:,.0f} tokens/s ({ours[-1][1]:,.0f} per CPU-second), "
            f"pytorch/examples loop {reference[-1][0]:,.0f} tokens/s ({reference[-1][1]:,.0f} per CPU-second), "
            f"load average {os.getloadavg()[0]:.2f}",
            flush=True,
        )
    wall = statistics.median(o[0] for o in ours), statistics.median(r[0] for r in reference)
    cpu = statistics.median(o[1] for o in ours), statistics.median(r[1] for r in reference)
    print(
        f"median: rnnlm-train {wall[0]:,.0f} tokens/s ({929_589 / wall[0]:.0f} s per PTB epoch), "
        f"pytorch/examples loop {wall[1]:,.0f} tokens/s; ratio {wall[0] / wall[1]:.2f} "
        f"(per CPU-second: {cpu[0]:,.0f} vs {cpu[1]:,.0f}, ratio {cpu[0] / cpu[1]:.2f})"
    )


if __name__ == "__main__":
    main()
