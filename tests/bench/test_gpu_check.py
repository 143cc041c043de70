"""bench/gpu_check.py: one line and exit 2 without CUDA; its dry run walks every step on the CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "gpu_check.py"


def run(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_without_cuda_it_says_so_in_one_line_and_exits_2() -> None:
    result = run(timeout=60)
    assert result.returncode == 2
    assert len(result.stdout.strip().splitlines()) == 1 and "no CUDA" in result.stdout


def test_the_dry_run_walks_every_step_and_writes_the_report(tmp_path: Path) -> None:
    result = run("--dry-run", "--out", str(tmp_path), timeout=240)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "step sessions" in result.stdout  # progress is printed as it goes
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["dry_run"] and report["finished"] and report["failed_steps"] == []
    steps = report["steps"]
    assert steps["1. CUDA tests"]["tests"] > 0 and steps["1. CUDA tests"]["skipped"] == steps["1. CUDA tests"]["tests"]
    for recipe in ("word-ptb-speedrun", "char-shakespeare-speedrun"):
        figures = steps[f"2. speedrun {recipe}"]
        assert figures["rc"] == 0 and figures["tokens_per_s_median"] > 0 and "target_met" in figures
    assert steps["3. serving: /v1/score"]["served_sentences_per_s"] > 0
    generate = steps["3. serving: generate, 2x650 LSTM"]
    rows = generate["rows"]["rows"]  # one server per RNNLM_DTYPE, side by side
    assert generate["rc"] == 0 and [(row["clients"], row["dtype"]) for row in rows] == [
        (1, "float32"),
        (1, "bfloat16"),
        (2, "float32"),
        (2, "bfloat16"),
    ]
    assert all(row["tokens_per_s"] > 0 and row["ceiling_tokens_per_s"] > 0 for row in generate["rows"]["rows"])
    assert steps["4. sessions across devices"]["passed"] is True
    assert "# GPU check" in (tmp_path / "report.md").read_text()
