"""The metrics log (`metrics.jsonl`, one JSON object per line) and its plot (`curves.png`)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import Tensor

METRICS_FILE = "metrics.jsonl"
PLOT_FILE = "curves.png"


@dataclass(frozen=True)
class SplitStats:
    """A split's size in tokens and in (NFC) characters, and its unknown tokens."""

    tokens: int
    chars: int
    unknown: int

    @classmethod
    def of(cls, stream: Tensor, chars: int, unk_id: int | None) -> SplitStats:
        unknown = 0 if unk_id is None else int((stream == unk_id).sum())
        return cls(tokens=stream.numel(), chars=chars, unknown=unknown)

    @property
    def tokens_per_char(self) -> float:
        return self.tokens / max(self.chars, 1)

    @property
    def unknown_rate(self) -> float:
        return self.unknown / max(self.tokens, 1)


def quality(loss: float, level: str, stats: SplitStats | None = None) -> dict[str, float]:
    """Figures of a mean loss in nats per token: perplexity, and bits per character.

    Bits per character compare levels on the same text: the loss of the split's tokens
    spread over its characters (a word's `<eos>` is its line's "\\n"). A word-level
    `<unk>` is scored as that one token, with no model of its spelling, so a word
    level's figure flatters it by as much as its unknown rate is high; it is reported
    beside that rate. A char model's tokens are its characters (an unknown one too).
    """
    figures = {"loss": loss, "ppl": math.exp(min(loss, 700.0))}
    if level == "char":
        figures["bpc"] = loss / math.log(2)
    elif stats is not None:
        figures["bpc"] = loss * stats.tokens_per_char / math.log(2)
    return figures


class MetricsLog:
    """Appends records to metrics.jsonl; `enabled` is false on every rank but 0."""

    def __init__(self, directory: Path, enabled: bool = True, keep_after_step: int | None = None) -> None:
        self.path = directory / METRICS_FILE
        self.enabled = enabled
        if enabled:
            directory.mkdir(parents=True, exist_ok=True)
        if enabled and keep_after_step is not None and self.path.is_file():
            # On resume, drop records from beyond the resumed step (a run that went on after it saved).
            kept = [line for line in self.path.read_text().splitlines() if json.loads(line)["step"] <= keep_after_step]
            self.path.write_text("".join(line + "\n" for line in kept))
        elif enabled:
            self.path.write_text("")

    def write(self, kind: str, **record: Any) -> None:
        if self.enabled:
            with self.path.open("a", encoding="utf-8") as f:
                f.write(json.dumps({"kind": kind, **record}) + "\n")


def read_metrics(directory: Path) -> list[dict[str, Any]]:
    path = directory / METRICS_FILE
    return [json.loads(line) for line in path.read_text().splitlines() if line] if path.is_file() else []


def plot_curves(directory: Path, level: str) -> Path:
    """Loss (train and valid) and perplexity or bits/char against tokens seen."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    records = read_metrics(directory)
    train = [r for r in records if r["kind"] == "train"]
    valid = [r for r in records if r["kind"] == "valid"]
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for rows, label, style in ((train, "train", "-"), (valid, "valid", "o-")):
        if rows:
            tokens = [r["tokens_seen"] / 1e6 for r in rows]
            left.plot(tokens, [r["loss"] for r in rows], style, label=label, markersize=3)
            figure_key = "bpc" if level == "char" else "ppl"
            right.plot(tokens, [r[figure_key] for r in rows], style, label=label, markersize=3)
    left.set(xlabel="tokens seen (millions)", ylabel="loss (nats/token)", title="loss")
    right.set(
        xlabel="tokens seen (millions)",
        ylabel="bits per char" if level == "char" else "perplexity",
        title="bits per char" if level == "char" else "perplexity",
    )
    if level != "char":
        right.set_yscale("log")
    for axis in (left, right):
        axis.grid(alpha=0.3)
        axis.legend()
    figure.tight_layout()
    path = directory / PLOT_FILE
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
