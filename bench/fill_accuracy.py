"""Fill-in-the-blank accuracy of POST /v1/fill on PTB validation sentences.

    python bench/fill_accuracy.py [--forward DIR --backward DIR] [--blanks 1000] [--minutes 4]

One word of each drawn validation line is blanked (never `<unk>`: it is not a fill).
Every blank goes through the real endpoint (the app over ASGI, its engines, a private
Redis) four ways: the forward model alone (`fast` without a partner), both directions
(`fast`), and `exact` rescoring of the top 32 of either. Prints top-1 / top-10
accuracy and the time per fill (one request at a time). Prints figures; asserts
nothing about speed.

Without --forward/--backward it trains the pair first: the `word-ptb-quick` recipe
and its `-backward` variant, each for --minutes of wall clock (rnnlm-train, corpora
from $RNNLM_DATA_DIR, else ../shared/data), into --work; finished checkpoints there
are reused on the next run.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.main import create_app
from app.settings import Settings
from model.checkpoint import CONFIG_FILE, load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
RESCORE = 32


@dataclass
class Tally:
    """Hits and request times of one way of filling."""

    top1: int = 0
    top10: int = 0
    seconds: list[float] = field(default_factory=list)


def data_dir() -> Path:
    return Path(os.environ.get("RNNLM_DATA_DIR", ROOT.parent / "shared" / "data"))


def train_pair(work: Path, recipe: str, minutes: float, threads: int) -> tuple[Path, Path]:
    """The recipe and its -backward variant, trained into `work` unless already there."""
    outs = []
    for name in (recipe, f"{recipe}-backward"):
        out = work / name
        outs.append(out)
        if (out / CONFIG_FILE).is_file():
            print(f"reusing {out}")
            continue
        command = [
            sys.executable,
            "-m",
            "training",
            name,
            "--out",
            str(out),
            "--max-minutes",
            str(minutes),
            "--threads",
            str(threads),
            "--progress",
            "false",
        ]
        print("training:", " ".join(command[2:]), flush=True)
        env = {**os.environ, "RNNLM_DATA_DIR": str(data_dir())}
        subprocess.run(command, check=True, cwd=ROOT, env=env)
    return outs[0], outs[1]


def draw_blanks(count: int, vocabulary: set[str], seed: int) -> list[tuple[str, str]]:
    """(text with one ___, the blanked word) from PTB validation lines of 4 or more words."""
    lines = (data_dir() / "ptb" / "valid.txt").read_text(encoding="utf-8").splitlines()
    rng = random.Random(seed)
    rng.shuffle(lines)
    blanks = []
    for line in lines:
        words = line.split()
        positions = [i for i, word in enumerate(words) if word in vocabulary and word != "<unk>"]
        if len(words) < 4 or not positions:
            continue
        i = rng.choice(positions)
        blanks.append((" ".join([*words[:i], "___", *words[i + 1 :]]), words[i]))
        if len(blanks) == count:
            break
    return blanks


async def run_way(client: httpx.AsyncClient, blanks: list[tuple[str, str]], method: str) -> tuple[Tally, str]:
    tally, used = Tally(), ""
    for text, truth in blanks:
        body = {"model": "fwd", "text": text, "method": method, "top_k": 10}
        if method == "exact":
            body["rescore"] = RESCORE
        started = time.perf_counter()
        response = await client.post("/v1/fill", json=body)
        tally.seconds.append(time.perf_counter() - started)
        response.raise_for_status()
        answer = response.json()
        used = f"{answer['method_used']} (candidates: {answer['candidates_from']})"
        words = [c["text"] for c in answer["candidates"]]
        tally.top1 += words[:1] == [truth]
        tally.top10 += truth in words
    return tally, used


async def measure(forward: Path, backward: Path, blanks: list[tuple[str, str]]) -> list[tuple[str, Tally, str]]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        alone, paired = Path(tmp) / "alone", Path(tmp) / "paired"
        for root in (alone, paired):
            root.mkdir()
            (root / "fwd").symlink_to(forward.resolve())
        (paired / "fwd-backward").symlink_to(backward.resolve())
        for root, ways in ((alone, ["fast", "exact"]), (paired, ["fast", "exact"])):
            app = create_app(Settings(models_dir=root, device="cpu"))
            async with app.router.lifespan_context(app):
                transport = httpx.ASGITransport(app=app)
                async with httpx.AsyncClient(transport=transport, base_url="http://bench", timeout=120) as client:
                    await client.post("/v1/fill", json={"model": "fwd", "text": "the ___ said"})  # warm up
                    for method in ways:
                        tally, used = await run_way(client, blanks, method)
                        label = ("both directions " if root == paired else "forward only ") + method
                        rows.append((label, tally, used))
                        print(f"  done: {label}", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--forward", type=Path, help="forward word checkpoint dir (trained when omitted)")
    parser.add_argument("--backward", type=Path, help="backward word checkpoint dir over the same vocabulary")
    parser.add_argument("--blanks", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--recipe", default="word-ptb-quick", help="recipe trained (with its -backward variant)")
    parser.add_argument("--minutes", type=float, default=4.0, help="training budget per model")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = all cores)")
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "fill-bench", help="where the pair is trained")
    args = parser.parse_args()
    if (args.forward is None) != (args.backward is None):
        parser.error("give both --forward and --backward, or neither")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    forward, backward = args.forward, args.backward
    if forward is None or backward is None:
        forward, backward = train_pair(args.work, args.recipe, args.minutes, args.threads)
    checkpoints = [load_checkpoint(forward), load_checkpoint(backward)]
    for path, checkpoint in zip((forward, backward), checkpoints, strict=True):
        figures = checkpoint.training
        print(
            f"{path}: {checkpoint.direction}, {checkpoint.config.cell} {checkpoint.config.num_layers}x"
            f"{checkpoint.config.hidden_size}, val ppl {figures.get('val_ppl', float('nan')):.1f}, "
            f"steps {figures.get('steps')}, {figures.get('elapsed_seconds', 0):.0f} s"
        )
    blanks = draw_blanks(args.blanks, set(checkpoints[0].tokenizer.tokens), args.seed)
    print(
        f"{len(blanks)} blanks from PTB valid (seed {args.seed}); cpu count {os.cpu_count()}, "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    rows = asyncio.run(measure(forward, backward, blanks))
    print()
    print("| way | method_used | top-1 | top-10 | ms/fill mean | ms/fill median |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    for label, tally, used in rows:
        n = len(tally.seconds)
        print(
            f"| {label} | {used} | {100 * tally.top1 / n:.1f}% | {100 * tally.top10 / n:.1f}% | "
            f"{1000 * statistics.fmean(tally.seconds):.1f} | {1000 * statistics.median(tally.seconds):.1f} |"
        )


if __name__ == "__main__":
    main()
