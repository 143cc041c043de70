"""A session made on one device continues on another: two `rnnlm-serve` processes, one Redis.

One server runs on `--first` (cuda), the other on `--second` (cpu); both share a private
redis-server. A session is created and fed on one, forked there, and then the same text
is fed to the session on one server and to its fork on the other: the per-token
log-probabilities must agree within `--tolerance`, and a greedy continuation must be the
same tokens. Then the other way round. Writes the figures as JSON (`--json`) and exits 1
when a check fails.

    python bench/cross_device_sessions.py --first cuda --second cpu [--checkpoint DIR] --json out.json

Without `--checkpoint` a tiny random model is made (then greedy ties are likelier: prefer a
trained checkpoint, as bench/gpu_check.py does).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.factories import make_checkpoint
from tests.live_server import ServeProcess
from tests.redis_server import RedisServer

MODEL_ID = "lm"
PROMPT = {"char": "the king said ", "word": "the company said"}
MORE = {"char": "that the lord of the house", "word": " it expects the market to"}
FED = {"char": " would come to the court\n", "word": " rise in the next year \n"}


def call(server: ServeProcess, method: str, path: str, **body: Any) -> Any:
    response = httpx.request(method, server.url + path, json=body or None, timeout=60)
    if response.status_code >= 300:
        raise RuntimeError(f"{method} {path} on {server.url}: {response.status_code} {response.text[:300]}")
    return response.json()


def compare(maker: ServeProcess, other: ServeProcess, level: str, tolerance: float) -> dict[str, Any]:
    """Create on `maker`, continue the session on `other` and its fork on `maker`; compare."""
    session = call(maker, "POST", "/v1/sessions", model=MODEL_ID, prompt=PROMPT[level])["id"]
    call(maker, "POST", f"/v1/sessions/{session}/feed", text=MORE[level])
    twin = call(maker, "POST", f"/v1/sessions/{session}/fork")["id"]
    there = call(other, "POST", f"/v1/sessions/{session}/feed", text=FED[level], flush=True)
    here = call(maker, "POST", f"/v1/sessions/{twin}/feed", text=FED[level], flush=True)
    a = [t["logprob"] for t in here["tokens"]]
    b = [t["logprob"] for t in there["tokens"]]
    worst = max((abs(x - y) for x, y in zip(a, b, strict=True)), default=0.0) if len(a) == len(b) else float("inf")
    greedy = {"max_tokens": 20, "temperature": 0.0, "stop_at_eos": False}
    text_here = call(maker, "POST", f"/v1/sessions/{twin}/generate", **greedy)
    text_there = call(other, "POST", f"/v1/sessions/{session}/generate", **greedy)
    ids_here = [t["id"] for t in text_here["tokens"]]
    ids_there = [t["id"] for t in text_there["tokens"]]
    return {
        "tokens_compared": len(a),
        "max_abs_logprob_difference": worst,
        "logprobs_agree": worst <= tolerance,
        "greedy_same": ids_here == ids_there,
        "greedy_text_maker": text_here["text"],
        "greedy_text_other": text_there["text"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--first", default="cuda", help="device of the first server")
    parser.add_argument("--second", default="cpu", help="device of the second server")
    parser.add_argument("--checkpoint", type=Path, default=None, help="a trained checkpoint (else a tiny random one)")
    parser.add_argument(
        "--tolerance",
        type=float,
        default=1e-2,
        help="largest per-token log-probability difference (cuDNN may use TF32)",
    )
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="cross-device-") as tmp:
        root = Path(tmp)
        if args.checkpoint is not None:
            shutil.copytree(args.checkpoint, root / "models" / MODEL_ID)
        else:
            make_checkpoint(root / "models" / MODEL_ID, level="char", cell="lstm", seed=5, hidden=32)
        kind = json.loads((root / "models" / MODEL_ID / "config.json").read_text())["tokenizer"]["kind"]
        level = "word" if kind == "word" else "char"
        with RedisServer(root / "redis") as redis_server:
            env = {"RNNLM_REDIS_URL": redis_server.url, "RNNLM_TORCH_THREADS": "2"}
            first = ServeProcess(root / "models", root / "first.log", {**env, "RNNLM_DEVICE": args.first})
            second = ServeProcess(root / "models", root / "second.log", {**env, "RNNLM_DEVICE": args.second})
            try:
                first.launch()
                second.launch()
                first.wait_ready(180)
                second.wait_ready(180)
                result = {
                    "devices": [args.first, args.second],
                    "checkpoint": str(args.checkpoint) if args.checkpoint else "tiny random char LSTM",
                    "tolerance": args.tolerance,
                    "made_on_first_continued_on_second": compare(first, second, level, args.tolerance),
                    "made_on_second_continued_on_first": compare(second, first, level, args.tolerance),
                }
            finally:
                first.stop()
                second.stop()
    checks = [v for v in result.values() if isinstance(v, dict)]
    result["passed"] = all(c["logprobs_agree"] and c["greedy_same"] for c in checks)
    print(json.dumps(result, indent=2))
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
