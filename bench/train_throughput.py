"""Training throughput (tokens/s) on this machine, float32 and bf16 side by side.

    python bench/train_throughput.py [--steps 200] [--rounds 3] [--threads 0] [--data-dir DIR]
                                     [--sizes 200,650] [--precisions fp32,bf16] [--no-reference]
    python bench/train_throughput.py --quality [--recipes word-ptb-small,char-shakespeare-quick,...]
                                     [--cells lstm,gru,rnn_tanh] [--quality-steps 400] [--seeds 1111,2222]

Speed (the default): `word-ptb-small` at batch 20, bptt 35 (dropout 0.2), one 2xSIZE LSTM per
size, each precision timed in the real training loop (training.trainer.Trainer, read from
its metrics.jsonl, validation excluded) and, interleaved with them so all see the same
machine load, a faithful copy of the pytorch/examples word_language_model train() loop
(float32) on the same data and sizes.

Quality (`--quality`): each recipe (one per level by default) with each cell, trained the
same number of steps in each precision (the recipe's own batch, bptt, optimiser; no time
budget, so the schedule is a function of the step and both precisions see the same tokens),
then validated on the first 1,000 lines: tokens/s, tokens per CPU-second and the validation
figure at equal tokens, with the bf16/fp32 ratios and the recipe gate (bf16 faster, and its
validation within 1% of float32's). The bf16 run's weights are also validated in float32.

Prints figures; asserts nothing about speed.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import math
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch import Tensor, nn

from training.batching import batchify, encode_stream
from training.config import TrainConfig, build_config, load_recipe
from training.data import Corpus, load_corpus
from training.metrics import quality, read_metrics
from training.trainer import Trainer, build_tokenizer

LEVEL_RECIPES = "word-ptb-small,char-shakespeare-quick,subword-shakespeare"
CELLS = "lstm,gru,rnn_tanh"
QUALITY_EVAL_LINES = 1000


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
    stream: Tensor, vocab_size: int, steps: int, size: int = 200, batch_size: int = 20, bptt: int = 35
) -> tuple[float, float]:
    """The example's train() loop: repackage_hidden, zero_grad, clip 0.25, p.data.add_(-lr * grad)."""
    torch.manual_seed(1111)
    data = batchify(stream, batch_size).t().contiguous()  # (L, B): the example is sequence-first
    model = ReferenceModel(vocab_size, size=size)
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


def timed_rate(out: Path, config: TrainConfig) -> tuple[float, float]:
    """Tokens per second and per CPU-second of a finished run from its metrics, the first interval dropped."""
    rows = [r for r in read_metrics(out) if r["kind"] == "train"]
    full_interval = config.log_every * config.batch_size * config.bptt
    tokens = seconds = cpu_seconds = 0.0
    for before, row in itertools.pairwise(rows):
        # An epoch's unlogged tail is not in the next interval (it starts afresh); the last may be short.
        interval = min(row["tokens_seen"] - before["tokens_seen"], full_interval)
        tokens += interval
        seconds += interval / row["tokens_per_s"]
        cpu_seconds += interval / row["tokens_per_cpu_s"]
    return tokens / seconds, tokens / cpu_seconds


def trainer_tokens_per_s(values: dict[str, object], corpus: Corpus, steps: int) -> tuple[float, float]:
    """Tokens/s of Trainer's own loop over `steps` steps after a 25-step warm-up interval."""
    # Only the training loop is timed: a few lines of valid/test keep the closing evaluation short.
    short = dataclasses.replace(corpus, valid=cut_lines(corpus.valid, 100), test=cut_lines(corpus.test, 100))
    with tempfile.TemporaryDirectory() as out:
        config = build_config({**values, "out": out, "max_steps": 25 + steps, "log_every": 25, "progress": False})
        Trainer(config, corpus=short).run()
        return timed_rate(Path(out), config)


@dataclasses.dataclass
class QualityRun:
    """One recipe x cell x precision trained a fixed number of steps."""

    tokens_per_s: float
    tokens_per_cpu_s: float
    tokens_seen: int
    figure: float  # validation perplexity (word) or bits per character, in the run's precision
    figure_fp32: float  # the same weights validated in float32
    diverged: bool  # validation worse than a uniform guess over the vocabulary


def quality_run(values: dict[str, object], corpus: Corpus, steps: int, log_every: int) -> QualityRun:
    with tempfile.TemporaryDirectory() as out:
        config = build_config({**values, "out": out, "max_steps": steps, "log_every": log_every, "progress": False})
        trainer = Trainer(config, corpus=corpus)
        trainer.run()
        key = "ppl" if config.level == "word" else "bpc"
        last = trainer.progress.history[-1]  # the validation at `steps`: equal tokens for every precision
        trainer.precision = "fp32"
        loss = trainer.evaluate(trainer.model, trainer.eval_data["valid"])
        figure_fp32 = quality(loss, config.level, trainer.split_stats["valid"])[key]
        speed, cpu_speed = timed_rate(Path(out), config)
        diverged = not last["loss"] < math.log(trainer.tokenizer.vocab_size)
        return QualityRun(speed, cpu_speed, last["tokens_seen"], last[key], figure_fp32, diverged)


def quality_table(args: argparse.Namespace) -> None:
    """Per recipe and cell: both precisions at equal tokens, and the gate."""
    precisions = args.precisions.split(",")
    print(
        f"quality: {args.quality_steps} steps per run, valid = first {QUALITY_EVAL_LINES} lines, "
        f"threads {torch.get_num_threads()}, torch {torch.__version__}, load average before {os.getloadavg()}",
        flush=True,
    )
    print("| recipe | level | cell | precision | tokens/s | per CPU-s | tokens | valid | valid (fp32 eval) | load |")
    print("| --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    verdicts = []
    for recipe in args.recipes.split(","):
        base = {**load_recipe(recipe), "data_dir": args.data_dir, "max_minutes": 0.0, "eval_every": 0}
        base["eval_lines"] = QUALITY_EVAL_LINES
        corpus = load_corpus(str(base["data"]), args.data_dir)
        for cell in args.cells.split(","):
            runs: dict[str, list[QualityRun]] = {p: [] for p in precisions}
            for seed in [int(s) for s in args.seeds.split(",")]:
                for precision in precisions:
                    values = {**base, "cell": cell, "precision": precision, "seed": seed}
                    run = quality_run(values, corpus, args.quality_steps, args.quality_steps // 8)
                    runs[precision].append(run)
                    unit = "ppl" if base["level"] == "word" else "bpc"
                    print(
                        f"| {recipe} | {base['level']} | {cell} | {precision} (seed {seed}) | "
                        f"{run.tokens_per_s:,.0f} | {run.tokens_per_cpu_s:,.0f} | {run.tokens_seen:,} | "
                        f"{run.figure:.4f} {unit} | {run.figure_fp32:.4f} | {os.getloadavg()[0]:.2f} |",
                        flush=True,
                    )
            if {"fp32", "bf16"} <= set(runs):
                # Means over the seeds; the spread between seeds is the noise the 1% gate sits in.
                fp32, bf16 = (
                    {
                        key: statistics.mean(getattr(r, key) for r in runs[p])
                        for key in ("tokens_per_s", "tokens_per_cpu_s", "figure")
                    }
                    for p in ("fp32", "bf16")
                )
                speedup = bf16["tokens_per_cpu_s"] / fp32["tokens_per_cpu_s"]
                change = bf16["figure"] / fp32["figure"] - 1
                keep = speedup > 1 and change <= 0.01
                shown = f"validation {change:+.2%} -> {'bf16' if keep else 'fp32'}"
                if any(r.diverged for p in ("fp32", "bf16") for r in runs[p]):
                    shown = "diverged (worse than uniform): no verdict"
                verdicts.append(
                    f"{recipe} {cell}: bf16 {speedup:.2f}x per CPU-second "
                    f"({bf16['tokens_per_s'] / fp32['tokens_per_s']:.2f}x wall), {shown}"
                )
    print("\n".join(verdicts))


def cut_lines(text: str, lines: int) -> str:
    return "".join(text.splitlines(keepends=True)[:lines])


def speed_table(args: argparse.Namespace) -> None:
    values = {**load_recipe(args.recipe), "data_dir": args.data_dir, "batch_size": 20, "bptt": 35}
    # The reference configuration (2-layer LSTM, dropout 0.2), whatever the recipe's dropout: same work on both sides.
    values.update(max_minutes=0.0, eval_every=0, dropout=0.2)
    corpus = load_corpus(str(values["data"]), args.data_dir)
    tokenizer = build_tokenizer(build_config(values), corpus.train)
    stream = encode_stream(tokenizer, corpus.train)
    precisions = args.precisions.split(",")

    print(f"recipe {args.recipe}: batch 20, bptt 35, vocab {tokenizer.vocab_size}, torch {torch.__version__}")
    print(
        f"threads {torch.get_num_threads()}, cpu_count {os.cpu_count()}, load average before {os.getloadavg()}",
        flush=True,
    )
    for size in [int(s) for s in args.sizes.split(",")]:
        sized = {**values, "embedding_size": size, "hidden_size": size}
        ours: dict[str, list[tuple[float, float]]] = {p: [] for p in precisions}
        reference: list[tuple[float, float]] = []
        for round_number in range(args.rounds):
            shown = []
            for precision in precisions:
                ours[precision].append(trainer_tokens_per_s({**sized, "precision": precision}, corpus, args.steps))
                wall, cpu = ours[precision][-1]
                shown.append(f"rnnlm-train {precision} {wall:,.0f} tokens/s ({cpu:,.0f} per CPU-second)")
            if args.reference:
                reference.append(reference_tokens_per_s(stream, tokenizer.vocab_size, args.steps, size=size))
                wall, cpu = reference[-1]
                shown.append(f"pytorch/examples loop {wall:,.0f} tokens/s ({cpu:,.0f} per CPU-second)")
            print(
                f"2x{size} round {round_number + 1}: {', '.join(shown)}, load average {os.getloadavg()[0]:.2f}",
                flush=True,
            )
        medians = {p: (statistics.median(o[0] for o in r), statistics.median(o[1] for o in r)) for p, r in ours.items()}
        line = ", ".join(
            f"rnnlm-train {p} {wall:,.0f} tokens/s ({929_589 / wall:.0f} s per PTB epoch; {cpu:,.0f} per CPU-second)"
            for p, (wall, cpu) in medians.items()
        )
        if "fp32" in medians and "bf16" in medians:
            line += (
                f"; bf16/fp32 {medians['bf16'][0] / medians['fp32'][0]:.2f}x "
                f"({medians['bf16'][1] / medians['fp32'][1]:.2f}x per CPU-second)"
            )
        if reference:
            wall = statistics.median(r[0] for r in reference)
            cpu = statistics.median(r[1] for r in reference)
            line += f"; pytorch/examples loop (fp32) {wall:,.0f} tokens/s ({cpu:,.0f} per CPU-second)"
        print(f"2x{size} median: {line}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200, help="timed steps per round (after warm-up)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds of each loop")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = all cores)")
    parser.add_argument("--data-dir", default=os.environ.get("RNNLM_DATA_DIR", ""), help="local corpora")
    parser.add_argument("--recipe", default="word-ptb-small", help="the speed table's recipe")
    parser.add_argument("--sizes", default="200", help="comma-separated LSTM widths of the speed table")
    parser.add_argument("--precisions", default="fp32,bf16", help="comma-separated precisions, side by side")
    parser.add_argument("--no-reference", dest="reference", action="store_false", help="skip the examples loop")
    parser.add_argument("--quality", action="store_true", help="the per-recipe, per-cell table at equal tokens")
    parser.add_argument("--recipes", default=LEVEL_RECIPES, help="comma-separated recipes of the quality table")
    parser.add_argument("--cells", default=CELLS, help="comma-separated cells of the quality table")
    parser.add_argument("--quality-steps", type=int, default=400, help="training steps of each quality run")
    parser.add_argument("--seeds", default="1111", help="comma-separated seeds of each quality run (means compared)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    if args.quality:
        quality_table(args)
    else:
        speed_table(args)


if __name__ == "__main__":
    main()
