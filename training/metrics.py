"""The metrics log (`metrics.jsonl`, one JSON object per line) and its plot (`curves.png`)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

METRICS_FILE = "metrics.jsonl"
PLOT_FILE = "curves.png"


def quality(loss: float, level: str) -> dict[str, float]:
    """Figures of a mean loss in nats per token: perplexity, and bits per char for char models."""
    figures = {"loss": loss, "ppl": math.exp(min(loss, 700.0))}
    if level == "char":
        figures["bpc"] = loss / math.log(2)
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
