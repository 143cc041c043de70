"""What a constraint costs per decode step: the allowed-token mask on each of our vocabularies.

For each vocabulary (characters, PTB words, a 10k byte-level BPE, a large Korean character
set) and each constraint (a regex, a JSON schema), a matcher walks `--steps` tokens, each
drawn at random (seeded) among those it allows, and only the mask computation is timed:
the compile time, the mask per row per step (median and 95th percentile) and llguidance's
mask of `--rows` rows as the engine computes them (one call per row). The same walk is timed with xgrammar
and outlines-core when they are importable (they are not dependencies: `pip install
--target DIR xgrammar outlines-core` and put DIR on PYTHONPATH to compare).

    nice .venv/bin/python bench/constraint_masks.py [--steps 64] [--rows 32]

The vocabularies come from the corpora in `$RNNLM_DATA_DIR` or `../shared/data`
(PTB, NSMC); a missing corpus skips its rows. Prints figures; never asserts on speed.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.engine.constraint import Constraint, ConstraintVocabulary
from model.tokenizer import CharTokenizer, Tokenizer, WordTokenizer

PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 12}, "age": {"type": "integer"}},
    "required": ["name", "age"],
}
REGEX = "( ?[a-z]+)+"  # words mid-line are " word"; characters and subwords either


class BytePieceTokenizer(Tokenizer):
    """A byte-level subword vocabulary (each token a fixed byte string) in the project's Tokenizer shape."""

    kind = "char"  # type: ignore[assignment]

    def __init__(self, pieces: list[bytes]) -> None:
        super().__init__(["<unk>", "\n", *(f"<{i}>" for i in range(len(pieces)))])
        self.pieces = [b"", b"\n", *pieces]

    @property
    def boundary_id(self) -> int:
        return 1

    def piece_bytes(self, token_id: int, previous_id: int | None) -> bytes:
        return self.pieces[token_id]


def data_dir() -> Path:
    return Path(os.environ.get("RNNLM_DATA_DIR", Path(__file__).resolve().parents[2] / "shared" / "data"))


def vocabularies() -> dict[str, Tokenizer]:
    found: dict[str, Tokenizer] = {}
    ptb = data_dir() / "ptb" / "train.txt"
    nsmc = data_dir() / "nsmc" / "ratings_train.txt"
    if ptb.exists():
        text = ptb.read_text()
        found["char (PTB)"] = CharTokenizer.build(text)
        found["word (PTB)"] = WordTokenizer.build(text)
        found["subword (BPE, PTB)"] = BytePieceTokenizer(bpe_pieces(text, 10_000))
    if nsmc.exists():
        found["char (NSMC, Korean)"] = CharTokenizer.build(nsmc.read_text())
    return found


def bpe_pieces(text: str, size: int) -> list[bytes]:
    """A byte-level BPE of `size` tokens trained on `text` (the `tokenizers` package), as byte strings."""
    from tokenizers import ByteLevelBPETokenizer

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator([text], vocab_size=size, show_progress=False)
    decoder = {ch: b for b, ch in _bytes_to_unicode().items()}
    return [bytes(decoder[ch] for ch in token) for token, _ in sorted(bpe.get_vocab().items(), key=lambda kv: kv[1])]


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's printable stand-ins for bytes, as the byte-level BPE writes its tokens."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = list(keep), 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            chars.append(256 + extra)
            extra += 1
    return {b: chr(c) for b, c in zip(keep, chars, strict=True)}


def walk(mask: Callable[[], list[int]], consume: Callable[[int], object], steps: int, seed: int) -> list[float]:
    """Seconds per mask along a walk of random allowed tokens (stops when nothing but the end is left)."""
    rng = random.Random(seed)
    times = []
    for _ in range(steps):
        started = time.perf_counter()
        allowed = mask()
        times.append(time.perf_counter() - started)
        if not allowed:
            break
        consume(rng.choice(allowed))
    return times


def measure_llguidance(tokenizer: Tokenizer, constraint: Constraint, steps: int, rows: int) -> dict[str, float]:
    vocabulary = ConstraintVocabulary(tokenizer)
    vocabulary.view()
    started = time.perf_counter()
    template = vocabulary.compile(constraint, at_line_start=False).matcher
    compile_s = time.perf_counter() - started
    end = vocabulary.end_id

    def ids(mask: torch.Tensor) -> list[int]:
        return [i for i in mask.nonzero().flatten().tolist() if i != end]

    matcher = template.deep_copy()
    single = walk(lambda: ids(vocabulary.masks([matcher])[0]), matcher.consume_token, steps, 0)
    # the engine's way: every constrained row of a tick (ConstraintVocabulary.masks)
    matchers = [template.deep_copy() for _ in range(rows)]
    rng = random.Random(1)
    batched = []
    for _ in range(steps):
        started = time.perf_counter()
        masks = vocabulary.masks(matchers)
        batched.append(time.perf_counter() - started)
        going = []
        for row, mask in zip(matchers, masks, strict=True):
            allowed = ids(mask)
            if allowed:
                row.consume_token(rng.choice(allowed))
                going.append(row)
        matchers = going
        if not matchers:
            break
    return {"compile_ms": compile_s * 1e3, **summary(single), "batch_ms": statistics.median(batched) * 1e3}


def byte_view(tokenizer: Tokenizer) -> list[bytes]:
    """Every token's mid-line bytes, as constraint.py gives them to llguidance (specials as unmatched text)."""
    return [
        b"\xff<special>"
        if i in (tokenizer.unk_id, tokenizer.boundary_id)
        else tokenizer.piece_bytes(i, tokenizer.unk_id)
        for i in range(tokenizer.vocab_size)
    ]


def measure_xgrammar(tokenizer: Tokenizer, constraint: Constraint, steps: int) -> dict[str, float]:
    import xgrammar as xgr

    info = xgr.TokenizerInfo(byte_view(tokenizer), stop_token_ids=[tokenizer.boundary_id])
    compiler = xgr.GrammarCompiler(info, max_threads=1, cache_enabled=False)
    started = time.perf_counter()
    compiled = (
        compiler.compile_regex(constraint.text)
        if constraint.kind == "regex"
        else compiler.compile_json_schema(constraint.text)
    )
    compile_s = time.perf_counter() - started
    matcher = xgr.GrammarMatcher(compiled)
    bitmask = xgr.allocate_token_bitmask(1, tokenizer.vocab_size)
    shifts = torch.arange(32, dtype=torch.int32)

    def mask() -> list[int]:
        matcher.fill_next_token_bitmask(bitmask)
        bits = ((bitmask.unsqueeze(2) >> shifts) & 1).bool().flatten()[: tokenizer.vocab_size]
        return [i for i in bits.nonzero().flatten().tolist() if i not in (tokenizer.boundary_id, tokenizer.unk_id)]

    return {"compile_ms": compile_s * 1e3, **summary(walk(mask, matcher.accept_token, steps, 0))}


def measure_outlines(tokenizer: Tokenizer, constraint: Constraint, steps: int) -> dict[str, float]:
    from outlines_core import Guide, Index, Vocabulary
    from outlines_core.json_schema import build_regex_from_schema

    pieces: dict[bytes, list[int]] = {}
    for i, piece in enumerate(byte_view(tokenizer)):
        if i not in (tokenizer.unk_id, tokenizer.boundary_id):
            pieces.setdefault(piece, []).append(i)
    vocabulary = Vocabulary(tokenizer.boundary_id, pieces)
    regex = constraint.text if constraint.kind == "regex" else build_regex_from_schema(constraint.text)
    started = time.perf_counter()
    guide = Guide(Index(regex, vocabulary))
    compile_s = time.perf_counter() - started

    def mask() -> list[int]:
        return [i for i in guide.get_tokens() if i != tokenizer.boundary_id]

    return {"compile_ms": compile_s * 1e3, **summary(walk(mask, guide.advance, steps, 0))}


def summary(times: list[float]) -> dict[str, float]:
    ordered = sorted(times)
    return {
        "steps": len(times),
        "mask_us_median": statistics.median(ordered) * 1e6,
        "mask_us_p95": ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))] * 1e6,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=64, help="tokens each walk takes")
    parser.add_argument("--rows", type=int, default=32, help="rows in llguidance's batched mask")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows as JSON here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    constraints = [Constraint("regex", REGEX), Constraint("json", json.dumps(PERSON))]
    libraries: dict[str, Callable[[Tokenizer, Constraint], dict[str, float]]] = {
        "llguidance": lambda t, c: measure_llguidance(t, c, args.steps, args.rows)
    }
    for name, measure in (("xgrammar", measure_xgrammar), ("outlines-core", measure_outlines)):
        try:
            __import__(name.replace("-", "_"))
        except Exception as exc:  # not installed (or not importable here): compare without it
            print(f"({name} not importable: {type(exc).__name__}; skipped)")
            continue
        libraries[name] = lambda t, c, measure=measure: measure(t, c, args.steps)  # type: ignore[misc]

    print(
        f"\nmask cost per decode step, {args.steps}-token random walks, 1 torch thread, load {os.getloadavg()[0]:.1f}"
    )
    header = f"{'vocabulary':>22} | {'size':>6} | {'constraint':>10} | {'library':>13} | {'compile ms':>10} | {'mask µs med':>11} | {'p95':>7} | {f'{args.rows} rows ms':>10}"
    print(header)
    print("-" * len(header))
    rows = []
    for vocab_name, tokenizer in vocabularies().items():
        for constraint in constraints:
            for library, measure in libraries.items():
                try:
                    figures = measure(tokenizer, constraint)
                except Exception as exc:  # e.g. a vocabulary that cannot start the constraint
                    print(
                        f"{vocab_name:>22} | {tokenizer.vocab_size:>6} | {constraint.kind:>10} | {library:>13} | {type(exc).__name__}: {str(exc)[:60]}"
                    )
                    continue
                batch = f"{figures['batch_ms']:>10.2f}" if "batch_ms" in figures else f"{'':>10}"
                print(
                    f"{vocab_name:>22} | {tokenizer.vocab_size:>6} | {constraint.kind:>10} | {library:>13} | "
                    f"{figures['compile_ms']:>10.1f} | {figures['mask_us_median']:>11.0f} | {figures['mask_us_p95']:>7.0f} | {batch}"
                )
                rows.append(
                    {
                        "vocabulary": vocab_name,
                        "size": tokenizer.vocab_size,
                        "constraint": constraint.kind,
                        "library": library,
                        **figures,
                    }
                )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
