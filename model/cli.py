"""`rnnlm sample` and `rnnlm score`: offline use of a checkpoint, on the server's primitives.

    rnnlm sample CHECKPOINT_DIR --prompt TEXT [--max-tokens N] [--temperature T] [--seed S] [--top-k K] [--top-p P]
    rnnlm score  CHECKPOINT_DIR [FILE]     # one text per line (stdin without FILE); JSON lines out

Scoring follows KenLM's flags: with `bos` (default) the first token is conditioned on
the start of a line (the tokenizer's boundary token, as in training); with `eos`
(default) the end of the line is scored too. Without `bos` the first token only
starts the sequence and gets no probability of its own.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Iterable, Iterator
from typing import Any, TextIO

import torch

from model.checkpoint import Checkpoint, CheckpointError, load_checkpoint
from model.inference import feed_tokens, fresh_sequences, generate_ids
from model.sampling import SamplingParams
from model.tokenizer import normalize

SCORE_BATCH = 32  # lines scored together in one batched feed


def sample_text(
    checkpoint: Checkpoint,
    prompt: str,
    max_tokens: int,
    params: SamplingParams,
    seed: int | None,
) -> str:
    """The prompt followed by a sampled continuation (a backward model extends it to the left)."""
    tokenizer, model = checkpoint.tokenizer, checkpoint.model
    prompt_ids = tokenizer.encode(prompt).ids
    backward = checkpoint.direction == "backward"
    context = prompt_ids[::-1] if backward else prompt_ids
    generated = generate_ids(model, tokenizer.boundary_id, context, max_tokens, params, seed=seed)
    if backward:
        return tokenizer.decode(generated[::-1]) + prompt
    return prompt + tokenizer.decode(generated, previous_id=prompt_ids[-1] if prompt_ids else None)


def score_lines(
    checkpoint: Checkpoint, lines: Iterable[str], bos: bool = True, eos: bool = True
) -> Iterator[dict[str, Any]]:
    """One record per line: total and per-token log-probabilities (natural logs)."""
    batch: list[str] = []
    for line in lines:
        batch.append(line)
        if len(batch) == SCORE_BATCH:
            yield from _score_batch(checkpoint, batch, bos, eos)
            batch = []
    if batch:
        yield from _score_batch(checkpoint, batch, bos, eos)


def _score_batch(checkpoint: Checkpoint, texts: list[str], bos: bool, eos: bool) -> list[dict[str, Any]]:
    tokenizer, model = checkpoint.tokenizer, checkpoint.model
    encodings = [tokenizer.encode(text) for text in texts]
    ids = [enc.ids + ([tokenizer.boundary_id] if eos else []) for enc in encodings]
    state, pending = fresh_sequences(model, tokenizer.boundary_id, len(texts))
    if not bos:  # the first token is the one pending, not scored
        pending = [row[0] if row else tokenizer.boundary_id for row in ids]
        ids = [row[1:] for row in ids]
    logprobs, _, _ = feed_tokens(model, state, pending, ids)
    records = []
    for text, enc, row, values in zip(texts, encodings, ids, logprobs, strict=True):
        surface = enc.tokens + ([tokenizer.tokens[tokenizer.boundary_id]] if eos else [])
        unknown = enc.unknown + ([False] if eos else [])
        offset = len(surface) - len(row)  # 1 without bos: the unscored first token
        per_token: list[dict[str, Any]] = [
            {"token": surface[i], "logprob": None, "unknown": unknown[i]} for i in range(offset)
        ]
        per_token += [
            {"token": surface[offset + i], "logprob": float(values[i]), "unknown": unknown[offset + i]}
            for i in range(len(row))
        ]
        total = float(values.double().sum())
        count = len(row)
        chars = len(normalize(text)) + (1 if eos else 0)
        records.append(
            {
                "text": text,
                "total_logprob": total,
                "token_count": count,
                "perplexity": math.exp(-total / count) if count else None,
                "bits_per_token": -total / count / math.log(2) if count else None,
                "bits_per_char": -total / chars / math.log(2) if chars else None,
                "tokens": per_token,
            }
        )
    return records


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rnnlm", description="Sample from or score text with a trained checkpoint.")
    commands = parser.add_subparsers(dest="command", required=True)

    sample = commands.add_parser("sample", help="generate a continuation of a prompt")
    sample.add_argument("checkpoint", metavar="CHECKPOINT_DIR")
    sample.add_argument("--prompt", default="", help="text to continue (default: start of a line)")
    sample.add_argument("--max-tokens", type=int, default=200, help="tokens to generate")
    sample.add_argument("--temperature", type=float, default=1.0, help="0 is greedy")
    sample.add_argument("--top-k", type=int, default=0, help="keep the k most likely tokens (0 = off)")
    sample.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (1 = off)")
    sample.add_argument("--seed", type=int, default=None, help="same seed, same text")
    sample.add_argument("--device", default="cpu", help="cpu or cuda")

    score = commands.add_parser("score", help="log-probabilities of each line of a file (JSON lines)")
    score.add_argument("checkpoint", metavar="CHECKPOINT_DIR")
    score.add_argument("file", nargs="?", help="UTF-8 text, one text per line (default: stdin)")
    score.add_argument("--bos", action=argparse.BooleanOptionalAction, default=True, help="condition on line start")
    score.add_argument("--eos", action=argparse.BooleanOptionalAction, default=True, help="score the line end")
    score.add_argument("--device", default="cpu", help="cpu or cuda")
    return parser


def _read_lines(stream: TextIO) -> Iterator[str]:
    for line in stream:
        yield line.rstrip("\n").rstrip("\r")


def main(argv: list[str] | None = None, stdin: TextIO | None = None, stdout: TextIO | None = None) -> int:
    args = build_parser().parse_args(argv)
    stdin, stdout = stdin or sys.stdin, stdout or sys.stdout
    try:
        if args.device.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError("--device cuda but no CUDA device is available")
        checkpoint = load_checkpoint(args.checkpoint, device=args.device)
        if args.command == "sample":
            if args.max_tokens < 0:
                raise ValueError("--max-tokens must be >= 0")
            params = SamplingParams(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p)
            stdout.write(sample_text(checkpoint, args.prompt, args.max_tokens, params, args.seed) + "\n")
            return 0
        if args.file is None:
            records = score_lines(checkpoint, _read_lines(stdin), bos=args.bos, eos=args.eos)
            for record in records:
                stdout.write(json.dumps(record, ensure_ascii=False) + "\n")
            return 0
        with open(args.file, encoding="utf-8") as f:
            for record in score_lines(checkpoint, _read_lines(f), bos=args.bos, eos=args.eos):
                stdout.write(json.dumps(record, ensure_ascii=False) + "\n")
        return 0
    except (CheckpointError, ValueError, OSError) as exc:  # UnicodeDecodeError is a ValueError
        print(f"rnnlm: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
