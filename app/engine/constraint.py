"""Constrained decoding: a regex, a choice, a JSON schema or a grammar that the generated text must follow.

The matching is llguidance's (guidance-ai's Earley parser with a lazy regex lexer, one of
the guided-decoding backends of vLLM and SGLang): it sees the vocabulary as the bytes
each token adds, and each step gives a bitmask of the tokens that keep the text a
prefix of the language. This module builds that byte view once per model, compiles
constraints (bounded in size and effort, cached by their text; the engine calls `compile`
on a thread of its own, never on the event loop or the worker) and computes the masks of
a batch of rows (one call per row, on a background thread while the next forward runs).

The byte view. A token adds `piece_bytes(token, previous)`, which for a word model
depends on the token before: b" word" mid-line, b"word" after the line boundary: the
space belongs between two words, and a word ends only where the next one (or the end)
starts. So the view gives a token the bytes it adds at a line start followed by that
separator, the fixed prefix a token drops at a line start (b"word " for words; for
characters the separator is empty and a token is its character), and the matcher reads
the text followed by the separator: the constraint, then the separator. A generation
that starts mid-line has the separator fed first (as one of the single-byte tokens
below), since its real text starts with it. A word is thus allowed only if the text can
go on after it with another word or end there: the view's bytes say where a word ends.
The constraint is about the text the client sees, whatever the level. (A vocabulary
whose tokens drop different prefixes, like "▁word" and "ing", gets its mid-line bytes as
they are and refuses a constraint at a line start.)

The ends. The boundary token (a word model's `<eos>`, a char model's "\\n") is the
matcher's end of text: allowed only where the text is complete, and it adds nothing, so
a constrained text is one line. `<unk>` is a special token in the view, which no
constraint can produce. The view also carries the 256 single bytes as tokens past the
vocabulary (never allowed, as the mask is cut to the vocabulary): llguidance assumes
every forced byte string can be tokenized, which a word vocabulary cannot do alone,
and they are how a separator is fed.

What the vocabulary can spell. llguidance allows a token when the text after it is still
a prefix of the language; it assumes that whatever the language needs next can be
tokenized, which holds for a byte-level vocabulary with every byte, not for a char or a
word one (a char model without "+" would be let into "C" of "C++" and find no token to
go on with). So a `choice` keeps only the options the vocabulary can spell
(`ConstraintVocabulary.spell`: a segmentation of the option into tokens of the view),
and a regex, on a vocabulary of single characters, is intersected with what its alphabet
spells (llguidance's lexer then knows that a prefix with no spellable end is dead). JSON
schemas and grammars get no such pruning: their text stays a prefix of the language, and
a row that no token can continue ends with "length".
"""

from __future__ import annotations

import json
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any, Literal, TypeVar

import llguidance
import torch
from llguidance import LLMatcher, LLParserLimits, LLTokenizer, TokenizerWrapper
from torch import Tensor

from app.errors import ConstraintError
from model.tokenizer import Tokenizer

ConstraintKind = Literal["regex", "choice", "json", "grammar"]

T = TypeVar("T")

# llguidance's grammar analysis recurses as deep as a grammar nests: a chain of 2,900 nested rules (64,503 bytes,
# under the default size bound) overflowed a default 8 MB thread stack and killed the process. Compiles run on
# threads of their own with this stack (address space, reserved lazily), about 30 times that depth.
COMPILE_STACK_BYTES = 256 * 2**20
COMPILE_THREADS = 2  # per model: compiles at once (a third waits for one)


# llguidance's own effort bounds (its fuel is work, so these bound time on any machine):
# about 20 ms of lexer construction, 15 ms of lexer work per token, a grammar of 100k symbols.
def _parser_limits() -> LLParserLimits:
    return LLParserLimits(initial_lexer_fuel=1_000_000, step_lexer_fuel=200_000, max_grammar_size=100_000)


@dataclass(frozen=True)
class Constraint:
    """What the text must match: `kind` and its text (a regex, a JSON list of choices, a JSON schema, a grammar).

    A grammar is Lark in llguidance's dialect, or GBNF (llama.cpp's), told apart by llguidance.
    """

    kind: ConstraintKind
    text: str
    field: str = ""  # the request field it came from, named by its errors (structured_outputs.<kind> if unsaid)

    @classmethod
    def choice(cls, options: Sequence[str], field: str = "") -> Constraint:
        return cls("choice", json.dumps(list(options)), field)

    def error(self, message: str) -> ConstraintError:
        """The 422 for this constraint, naming its field."""
        return ConstraintError(message, field=self.field or f"structured_outputs.{self.kind}")


@dataclass(frozen=True)
class CompiledConstraint:
    """A request's constraint compiled once for its model and its start (a line start or mid-line).

    `matcher` is the request's own, at the start of the text; each row takes a copy
    (`fork`). A choice keeps `options`: the ones the vocabulary can spell, each with a
    spelling in token ids (a greedy choice generates the likeliest of them).
    """

    constraint: Constraint
    matcher: LLMatcher
    at_line_start: bool
    options: tuple[tuple[str, tuple[int, ...]], ...] = ()
    start_mask: Tensor | None = None  # (V,) bool on the CPU: what it allows first, computed with the compile

    def fork(self) -> LLMatcher:
        """A matcher of its own for one row."""
        return self.matcher.deep_copy()


@dataclass(frozen=True)
class ConstraintLimits:
    """The bounds a constraint must fit (from Settings): its text's size, the time to compile it, the cache's size."""

    max_bytes: int = 65_536
    compile_seconds: float = 2.0
    cache_size: int = 256


def _grammar(constraint: Constraint, options: Sequence[str], alphabet: str | None) -> str:
    """llguidance's grammar for a constraint (not yet checked: the matcher does that).

    A choice is its spellable `options`; a regex on a vocabulary of single characters is
    intersected with the strings of its `alphabet`.
    """
    if constraint.kind == "choice":  # one lexeme: the lexer takes any number of options (the parser, 2,000 a row)
        return LLMatcher.grammar_from_lark("start: OPTION\nOPTION: " + " | ".join(json.dumps(o) for o in options))
    if constraint.kind == "regex":
        grammar = LLMatcher.grammar_from_regex(constraint.text)
        if alphabet is None:
            return grammar
        top = json.loads(grammar)
        (inner,) = top["grammars"]
        lexeme = inner["lark_grammar"].removeprefix("start: ")  # /the regex/, escaped for Lark
        spellable = "".join(f"\\x{{{ord(char):x}}}" for char in alphabet)
        inner = dict(inner, lark_grammar=f"start: CONSTRAINED\nCONSTRAINED: {lexeme} & /[{spellable}]*/")
        return json.dumps({**top, "grammars": [inner]})
    if constraint.kind == "json":
        try:
            schema = json.loads(constraint.text)
        except json.JSONDecodeError as exc:
            raise constraint.error(f"the JSON schema is not JSON: {exc}") from None
        try:
            return LLMatcher.grammar_from_json_schema(schema)
        except ValueError as exc:
            raise constraint.error(f"invalid JSON schema: {exc}") from None
    try:
        return llguidance.grammar_from("grammar", constraint.text)
    except ValueError as exc:
        raise constraint.error(str(exc)) from None


def _then(grammar: str, separator: bytes) -> str:
    """The grammar of `grammar` followed by `separator` (a reference to it as a nested grammar)."""
    if not separator:
        return grammar
    top = _top_level(grammar)
    inner = dict(top["grammars"][0], name="constrained")
    head = {"lark_grammar": f"start: @constrained {json.dumps(separator.decode('utf-8'))}"}
    return json.dumps({**top, "grammars": [head, inner, *top["grammars"][1:]]})


def _top_level(grammar: str) -> dict[str, Any]:
    """A grammar as llguidance's top-level JSON object (a Lark text becomes its one grammar)."""
    try:
        top = json.loads(grammar)
    except json.JSONDecodeError:
        top = None
    return top if isinstance(top, dict) and "grammars" in top else {"grammars": [{"lark_grammar": grammar}]}


class ConstraintVocabulary:
    """One model's byte view for llguidance, its compiled constraints (LRU by text) and the mask computation.

    Built lazily (the view costs a pass over the vocabulary); safe to use from the event
    loop's threads (compiling) and the worker (masks) at once.
    """

    def __init__(self, tokenizer: Tokenizer, limits: ConstraintLimits | None = None) -> None:
        self.tokenizer = tokenizer
        self.limits = limits or ConstraintLimits()
        self.vocab_size = tokenizer.vocab_size
        self.end_id = tokenizer.boundary_id  # the matcher's end of text
        self._lock = threading.Lock()
        self._view: LLTokenizer | None = None
        self._separator: bytes | None = b""  # what a token drops at a line start; None: not one for all
        self._pieces: dict[bytes, int] = {}  # the view's bytes of each ordinary token (what `spell` segments into)
        self._alphabet: str | None = None  # when every ordinary token is one character: those characters
        self._compiled: OrderedDict[tuple[str, str, bool], CompiledConstraint] = OrderedDict()
        # llguidance drops the GIL while it computes a mask, so this thread overlaps the model's next forward.
        self._background = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rnnlm-masks")
        self._compiling = _DeepStackThreads(COMPILE_THREADS, "rnnlm-compile")

    # ---- the byte view ------------------------------------------------------------------

    def view(self) -> LLTokenizer:
        with self._lock:
            if self._view is None:
                self._view, self._separator = self._build_view()
            return self._view

    def _build_view(self) -> tuple[LLTokenizer, bytes | None]:
        tokenizer = self.tokenizer
        special_bytes = {self.end_id: b"<end>"}
        if tokenizer.unk_id is not None:
            special_bytes[tokenizer.unk_id] = b"<unk>"
        ordinary = next(i for i in range(self.vocab_size) if i != self.end_id)  # what follows it is mid-line
        starts: list[bytes] = []
        middles: list[bytes] = []
        prefixes: set[bytes] = set()
        for token_id in range(self.vocab_size):
            if token_id in special_bytes:
                continue
            middle = tokenizer.piece_bytes(token_id, ordinary)
            start = tokenizer.piece_bytes(token_id, self.end_id)
            if not middle.endswith(start):
                raise ConstraintError(
                    f"this model's vocabulary cannot be constrained: token {token_id} adds {start!r} at a line start, "
                    f"which does not end what it adds mid-line, {middle!r}"
                )
            starts.append(start)
            middles.append(middle)
            prefixes.add(middle[: len(middle) - len(start)])
        separator = prefixes.pop() if len(prefixes) == 1 else b"" if not prefixes else None
        pieces = iter(middles if separator is None else [start + separator for start in starts])
        tokens = [special_bytes[i] if i in special_bytes else next(pieces) for i in range(self.vocab_size)]
        self._pieces = {piece: i for i, piece in reversed(list(enumerate(tokens))) if i not in special_bytes}
        characters = [piece.decode("utf-8", errors="replace") for piece in self._pieces]
        if separator == b"" and all(len(char) == 1 and char != "\ufffd" for char in characters):
            self._alphabet = "".join(characters)
        tokens.extend(bytes([b]) for b in range(256))  # past the vocabulary: see the module's docstring
        view = LLTokenizer(TokenizerWrapper(_ByteView(tokens, self.end_id, sorted(special_bytes))))
        return view, separator

    # ---- compiling ----------------------------------------------------------------------

    def compile_later(self, constraint: Constraint, at_line_start: bool) -> Future[CompiledConstraint]:
        """`compile` on a compile thread (a deep stack; llguidance drops the GIL while it compiles)."""
        return self._compiling.submit(self.compile, constraint, at_line_start)

    def compile(self, constraint: Constraint, at_line_start: bool) -> CompiledConstraint:
        """`constraint` compiled, with a matcher of its own (cached by its text); ConstraintError if it cannot be used.

        Slow for a large constraint (bounded by the limits): the engine calls it through
        `compile_later`, never on the event loop or the worker.
        """
        key = (constraint.kind, constraint.text, at_line_start)
        with self._lock:
            template = self._compiled.get(key)
            if template is not None:
                self._compiled.move_to_end(key)
        if template is None:
            template = self._compile(constraint, at_line_start)
            with self._lock:
                self._compiled[key] = template
                while len(self._compiled) > self.limits.cache_size:
                    self._compiled.popitem(last=False)
        return replace(template, constraint=constraint, matcher=template.fork())

    def _compile(self, constraint: Constraint, at_line_start: bool) -> CompiledConstraint:
        try:
            size = len(constraint.text.encode("utf-8"))
        except UnicodeEncodeError:
            raise constraint.error(
                f"the {constraint.kind} holds a lone surrogate, which is not valid Unicode"
            ) from None
        if size > self.limits.max_bytes:
            raise constraint.error(f"the {constraint.kind} is {size} bytes, over the bound of {self.limits.max_bytes}")
        view = self.view()
        separator = self._separator
        if at_line_start and separator is None:
            raise constraint.error(
                "this model's tokens drop different prefixes at a line start, so a constrained text cannot "
                "start there: give a prompt that does not end a line"
            )
        began = time.monotonic()
        options = self._spellable_options(constraint, at_line_start) if constraint.kind == "choice" else ()
        grammar = _grammar(constraint, [option for option, _ in options], self._alphabet)
        matcher = LLMatcher(view, _then(grammar, separator or b""), log_level=0, limits=_parser_limits())
        if matcher.is_error():
            raise constraint.error(_first_line(matcher.get_error()))
        cannot_start = f"no token of this model's vocabulary can start text matching the {constraint.kind}"
        if separator and not at_line_start:  # mid-line the text starts with the separator
            if not matcher.consume_tokens([self.vocab_size + byte for byte in separator]):
                raise constraint.error(
                    f"{cannot_start} (after this prompt the text starts with {separator.decode()!r})"
                )
        mask = self.masks([matcher])[0]
        if time.monotonic() - began > self.limits.compile_seconds:
            raise constraint.error(f"the {constraint.kind} took over {self.limits.compile_seconds} s to compile")
        if matcher.is_error():
            raise constraint.error(_first_line(matcher.get_error()))
        if not bool(mask.any()):
            raise constraint.error(cannot_start)
        return CompiledConstraint(constraint, matcher, at_line_start, options, start_mask=mask)

    def _spellable_options(
        self, constraint: Constraint, at_line_start: bool
    ) -> tuple[tuple[str, tuple[int, ...]], ...]:
        """A choice's options that this vocabulary can spell, each with a spelling; ConstraintError if none."""
        options = json.loads(constraint.text)
        if not options:
            raise constraint.error("choice needs at least one option")
        spelled = [(option, self.spell(option, at_line_start)) for option in dict.fromkeys(options)]
        kept = tuple((option, ids) for option, ids in spelled if ids is not None)
        if not kept:
            shown = ", ".join(json.dumps(option, ensure_ascii=False) for option in list(dict.fromkeys(options))[:5])
            raise constraint.error(
                "no token of this model's vocabulary can start text matching the choice: the vocabulary cannot "
                f"spell any of its options ({shown}{', ...' if len(options) > 5 else ''}), each needs a character "
                "or a word it lacks"
            )
        return kept

    def spell(self, text: str, at_line_start: bool) -> tuple[int, ...] | None:
        """Token ids whose view bytes are `text` followed by the separator (where the text starts), or None.

        The tokenizer's own encoding when it spells the text so, else the first
        segmentation into the view's tokens found (longest token first).
        """
        self.view()
        separator = self._separator or b""
        target = text.encode("utf-8") + separator
        if separator and not at_line_start:  # the matcher is fed the separator first
            if not target.startswith(separator):
                return None
            target = target[len(separator) :]
        if not target:
            return None
        ids = self.tokenizer.encode(text).ids
        pieces = {i: piece for piece, i in self._pieces.items()}
        if ids and all(i in pieces for i in ids) and b"".join(pieces[i] for i in ids) == target:
            return tuple(ids)
        return _segment(target, self._pieces)

    # ---- the worker's side --------------------------------------------------------------

    def masks_later(self, matchers: list[LLMatcher]) -> Future[Tensor]:
        """`masks(matchers)` (on the CPU) on a background thread; the matchers are not to be touched until it is done."""
        return self._background.submit(self.masks, matchers)

    def close(self) -> None:
        self._background.shutdown(wait=False, cancel_futures=True)
        self._compiling.close()

    def masks(self, matchers: list[LLMatcher], device: torch.device | None = None) -> Tensor:
        """(len(matchers), V) bool on `device`: the tokens each matcher allows next (`<unk>` never)."""
        view = self.view()
        words = (view.vocab_size + 31) // 32
        bits = torch.zeros(len(matchers), words, dtype=torch.int32)  # (C, W) 32 tokens a word
        # One call per row: llguidance's batched LLExecutor measured slower here (32 rows of our 10k word
        # vocabulary: a median 24 ms against 14 ms on 2 busy cores).
        for i, matcher in enumerate(matchers):
            matcher.unsafe_compute_mask_ptr(bits[i].data_ptr(), words * 4)
        bits = bits.to(device) if device is not None else bits
        shifts = torch.arange(32, dtype=torch.int32, device=bits.device)
        allowed = ((bits.unsqueeze(2) >> shifts) & 1).bool().reshape(len(matchers), words * 32)  # (C, W*32)
        allowed = allowed[:, : self.vocab_size].clone()
        if self.tokenizer.unk_id is not None:
            allowed[:, self.tokenizer.unk_id] = False
        return allowed


class _DeepStackThreads:
    """A few daemon threads with COMPILE_STACK_BYTES of stack (started on first use) that run what is submitted."""

    def __init__(self, count: int, name: str) -> None:
        self._count = count
        self._name = name
        self._jobs: queue.SimpleQueue[tuple[Future[Any], Callable[..., Any], tuple[Any, ...]] | None] = (
            queue.SimpleQueue()
        )
        self._lock = threading.Lock()
        self._started = False

    def submit(self, function: Callable[..., T], *args: Any) -> Future[T]:
        future: Future[T] = Future()
        with self._lock:
            if not self._started:
                previous = threading.stack_size(COMPILE_STACK_BYTES)
                try:
                    for i in range(self._count):
                        threading.Thread(target=self._run, name=f"{self._name}-{i}", daemon=True).start()
                finally:
                    threading.stack_size(previous)
                self._started = True
        self._jobs.put((future, function, args))
        return future

    def close(self) -> None:
        for _ in range(self._count):
            self._jobs.put(None)

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            future, function, args = job
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(function(*args))
            except BaseException as exc:  # the caller gets it (a ConstraintError, or a bug)
                future.set_exception(exc)


class _ByteView:
    """What llguidance's TokenizerWrapper asks of a tokenizer: the bytes of each token and an encoder.

    The encoder is greedy longest-match over the same bytes, so the tokens it returns spell
    exactly what they encode (llguidance tokenizes forced bytes with it).
    """

    def __init__(self, tokens: list[bytes], end_id: int, specials: list[int]) -> None:
        self.tokens = tokens
        self.eos_token_id = end_id
        self.bos_token_id = None
        self.special_token_ids = specials
        self._index = {piece: i for i, piece in reversed(list(enumerate(tokens))) if i not in specials}
        self._longest = max(map(len, self._index))

    def __call__(self, text: str | bytes) -> list[int]:
        data = text.encode("utf-8") if isinstance(text, str) else text
        ids: list[int] = []
        at = 0
        while at < len(data):
            for length in range(min(self._longest, len(data) - at), 0, -1):
                token_id = self._index.get(data[at : at + length])
                if token_id is not None:
                    ids.append(token_id)
                    at += length
                    break
        return ids


def _segment(target: bytes, pieces: dict[bytes, int]) -> tuple[int, ...] | None:
    """A segmentation of `target` into `pieces` (bytes -> token id), longest piece first; None if there is none."""
    longest = max(map(len, pieces), default=0)
    reached: dict[int, tuple[int, int]] = {0: (-1, -1)}  # end position -> (start position, token id)
    for at in range(len(target)):
        if at not in reached:
            continue
        for length in range(min(longest, len(target) - at), 0, -1):
            token_id = pieces.get(target[at : at + length])
            if token_id is not None and at + length not in reached:
                reached[at + length] = (at, token_id)
    if len(target) not in reached:
        return None
    ids: list[int] = []
    at = len(target)
    while at:
        at, token_id = reached[at]
        ids.append(token_id)
    return tuple(reversed(ids))


def _first_line(message: str) -> str:
    """llguidance's error without the parser state it appends."""
    return message.split("\n<state>", 1)[0].strip()
