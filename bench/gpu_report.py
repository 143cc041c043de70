"""The report of bench/gpu_check.py: the machine and each step's figures, as JSON and Markdown."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import torch


class Report:
    """The figures so far, rewritten as JSON and Markdown after every step."""

    def __init__(self, out: Path, budget_s: float, dry_run: bool) -> None:
        self.out = out
        self.started = time.monotonic()
        self.budget_s = budget_s
        self.data: dict[str, Any] = {"dry_run": dry_run, "budget_s": budget_s, "machine": machine(), "steps": {}}

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def left(self) -> float:
        return self.budget_s - self.elapsed()

    def step(self, name: str, **figures: Any) -> None:
        self.data["steps"].setdefault(name, {}).update(figures)
        self.save()

    def save(self, finished: bool = False, note: str = "") -> None:
        self.data["elapsed_s"] = round(self.elapsed(), 1)
        self.data["finished"] = finished
        if note:
            self.data["note"] = note
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "report.json").write_text(json.dumps(self.data, indent=2, default=str) + "\n", encoding="utf-8")
        (self.out / "report.md").write_text(markdown(self.data), encoding="utf-8")


def log(report: Report, message: str) -> None:
    print(f"[gpu_check {report.elapsed():6.1f}s / {report.budget_s:.0f}s] {message}", flush=True)


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {
        "host": platform.node(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": cudnn_version(),
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(
            gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1), gpu_count=torch.cuda.device_count()
        )
        info["capability"] = f"{props.major}.{props.minor}"
    return info


def cudnn_version() -> int | None:
    if not torch.backends.cudnn.is_available():  # type: ignore[no-untyped-call]  # unannotated in torch
        return None
    version: int | None = torch.backends.cudnn.version()  # type: ignore[no-untyped-call]
    return version


def markdown(data: dict[str, Any]) -> str:
    """The report for people: the machine, then one section per step."""
    lines = ["# GPU check" + (" (dry run on the CPU: figures mean nothing)" if data["dry_run"] else ""), ""]
    lines += [f"- {key}: {value}" for key, value in data["machine"].items()]
    lines += [
        f"- budget: {data['budget_s']:.0f} s; elapsed: {data.get('elapsed_s')} s; finished: {data.get('finished')}"
    ]
    if data.get("note"):
        lines.append(f"- note: {data['note']}")
    for name, figures in data["steps"].items():
        lines += ["", f"## {name}", "", "| figure | value |", "| --- | --- |"]
        for key, value in figures.items():
            shown = json.dumps(value, default=str) if isinstance(value, (dict, list)) else value
            lines.append(f"| {key} | {shown} |")
    return "\n".join(lines) + "\n"


def failures(steps: dict[str, dict[str, Any]]) -> list[str]:
    """Steps that broke (a missed quality target is a figure, not a failure)."""
    broken = []
    for name, figures in steps.items():
        if "error" in figures or figures.get("timed_out") or figures.get("passed") is False:
            broken.append(name)
        elif "rc" in figures and figures["rc"] != 0:
            broken.append(name)
    return broken
