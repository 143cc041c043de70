"""A user's text file or directory, streamed from disk in blocks: no split is ever held whole.

The splits are the ones `load_path_corpus` (training/data.py) cuts from the text in
memory, byte for byte: a directory's train.txt/valid.txt(/test.txt) as they are, or
else the files (one, or a directory's *.txt in name order, each ending in a line end)
cut by whole lines, `str.splitlines` lines, in order. To find where a split starts, a
first pass counts the lines of every block; it runs only when the splits are read
(on a first run, to encode them), never just to name the corpus.

A file's sha256 is remembered in the cache beside its size, mtime and inode, so that a
second run over a 1 GB corpus does not hash it again; as git does with its index, an
entry is only trusted for a file that was already older than two seconds when hashed
(a write in the same clock tick as the hash could otherwise go unnoticed).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from model.checkpoint import write_json_atomic
from training.config import parse_split
from training.data import REGISTRY, SPLIT_FILES, SPLITS, CorpusSource, DataError, load_registry_corpus, sha256_of

BLOCK_BYTES = 1 << 22  # read 4 MB at a time, cut after the block's last line end
RACY_SECONDS = 2.0  # a remembered hash is trusted only for files this much older than the hash


@dataclass(frozen=True)
class Block:
    """A run of whole lines of one file: bytes [start, end), and whether a final "\\n" is added."""

    file: int
    start: int
    end: int
    lines: int
    add_line_end: bool


def read_blocks(path: Path, add_final_line_end: bool) -> Iterator[tuple[int, int, bytes]]:
    """(start, end, data) of `path` in blocks that end just after a b"\\n" (the last may not)."""
    try:
        with path.open("rb") as f:
            offset, carry = 0, b""
            while True:
                data = f.read(BLOCK_BYTES)
                if not data:
                    break
                data = carry + data
                cut = data.rfind(b"\n") + 1
                if cut == 0:  # no line end in 4 MB: keep reading
                    carry = data
                    continue
                yield offset, offset + cut, data[:cut]
                offset, carry = offset + cut, data[cut:]
            if carry or (add_final_line_end and offset == 0):
                yield offset, offset + len(carry), carry
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc})") from exc


def block_lines(text: str, add_line_end: bool, single_file: bool) -> list[str]:
    """The lines of a block, as `load_path_corpus` counts them.

    A file's unfinished last line gets its "\n": a lone file's by `split_lines` (the
    line is completed), a directory's files by joining (the text is completed, which
    for a last line ending in another line separator, like U+2028, is one line more).
    """
    if not add_line_end:
        return text.splitlines(keepends=True)
    if not single_file:
        return (text + "\n").splitlines(keepends=True)
    lines = text.splitlines(keepends=True)
    if lines:
        lines[-1] += "\n"
    return lines


def decode(data: bytes, path: Path) -> str:
    """UTF-8 text with universal newlines ("\\r\\n" and "\\r" read as "\\n"), as `Path.read_text` gives it.

    A block ends just after a b"\\n", so no "\\r\\n" is ever cut in two.
    """
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc})") from exc
    return text.replace("\r\n", "\n").replace("\r", "\n") if "\r" in text else text


@dataclass
class FileCorpus:
    """A text file or directory on disk; see the module docstring for how it is split."""

    name: str
    split_rule: str
    files: list[Path]  # in order
    split_files: dict[str, int] | None  # split -> index in files (a directory's own split files)
    rule: str  # the train/valid/test percentages, when cut by lines
    hash_dir: Path  # where sha256s are remembered
    _sha256: dict[str, str] | None = field(default=None, repr=False)
    _layout: dict[str, list[tuple[Block, int, int]]] | None = field(default=None, repr=False)

    @classmethod
    def open(cls, path: Path, rule: str, cache_dir: Path) -> FileCorpus:
        hash_dir = cache_dir / "tokens" / "sha256"  # beside the token files (training/token_cache.py)
        if path.is_dir():
            found = {
                split: next((path / n for n in names if (path / n).is_file()), None)
                for split, names in SPLIT_FILES.items()
            }
            train, valid, test = found["train"], found["valid"], found["test"]
            if train is not None and valid is not None:
                files = [train, valid] + ([test] if test is not None else [])
                split_files = {"train": 0, "valid": 1, "test": 2 if test is not None else 1}
                how = "the directory's own split files" + ("" if test is not None else "; test = valid")
                return cls(str(path), how, files, split_files, rule, hash_dir)
            files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix == ".txt")
            if not files:
                raise DataError(f"{path}: no .txt files (and no train.txt/valid.txt)")
        elif path.is_file():
            files = [path]
        else:
            from training.data import REGISTRY

            raise DataError(f"{path}: no such file or directory, and not a registry dataset ({', '.join(REGISTRY)})")
        parse_split(rule)
        return cls(str(path), f"by lines, in order: {rule} (train/valid/test %)", files, None, rule, hash_dir)

    @property
    def origin(self) -> str:
        return "files"

    @property
    def sha256(self) -> dict[str, str]:
        if self._sha256 is None:
            self._sha256 = {p.name: remembered_sha256(p, self.hash_dir) for p in self.files}
        return self._sha256

    # ------------------------------------------------------------ the splits

    def layout(self) -> dict[str, list[tuple[Block, int, int]]]:
        """Per split, its blocks and the [first, last) lines of each block that belong to it."""
        if self._layout is not None:
            return self._layout
        if self.split_files is not None:
            self._layout = {}
            for split in SPLITS:
                index = self.split_files[split]
                whole = read_blocks(self.files[index], add_final_line_end=False)
                self._layout[split] = [(Block(index, start, end, -1, False), 0, -1) for start, end, _ in whole]
            return self._layout
        blocks: list[Block] = []
        single = len(self.files) == 1 and Path(self.name).is_file()
        for index, path in enumerate(self.files):
            for start, end, data in read_blocks(path, add_final_line_end=not single):
                text = decode(data, path)
                final = not text.endswith("\n")  # a last "\r" is read as a line end
                blocks.append(Block(index, start, end, len(block_lines(text, final, single)), final))
        total = sum(b.lines for b in blocks)
        train_frac, valid_frac, _ = parse_split(self.rule)
        n_train, n_valid = int(total * train_frac), int(total * valid_frac)
        if n_train == 0 or (valid_frac > 0 and n_valid == 0):
            raise DataError(f"{total} lines are too few to split {self.rule}")
        bounds = {"train": (0, n_train), "valid": (n_train, n_train + n_valid), "test": (n_train + n_valid, total)}
        self._layout = {split: [] for split in SPLITS}
        first = 0
        for block in blocks:
            last = first + block.lines
            for split, (lo, hi) in bounds.items():
                if max(lo, first) < min(hi, last):
                    self._layout[split].append((block, max(lo, first) - first, min(hi, last) - first))
            first = last
        return self._layout

    def chunks(self, split: str) -> Iterator[str]:
        for block, lo, hi in self.layout()[split]:
            path = self.files[block.file]
            with path.open("rb") as f:
                f.seek(block.start)
                text = decode(f.read(block.end - block.start), path)
            if hi < 0 or (lo == 0 and hi == block.lines and not block.add_line_end):
                yield text
                continue
            single = len(self.files) == 1 and Path(self.name).is_file()
            yield "".join(block_lines(text, block.add_line_end, single)[lo:hi])

    def split_bytes(self, split: str) -> int:
        """Exact for whole files; a block shared by two splits is shared in proportion to its lines."""
        if self.split_files is not None:
            return self.files[self.split_files[split]].stat().st_size
        return sum((b.end - b.start) * (hi - lo) // max(b.lines, 1) for b, lo, hi in self.layout()[split])


def remembered_sha256(path: Path, hash_dir: Path) -> str:
    """sha256 of `path`, from the cache when its size, mtime and inode are unchanged."""
    try:
        stat = path.stat()
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc})") from exc
    resolved = str(path.resolve())
    identity: dict[str, object] = {
        "path": resolved,
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "inode": stat.st_ino,
    }
    entry = hash_dir / (hashlib.sha256(resolved.encode()).hexdigest()[:32] + ".json")
    try:
        known = json.loads(entry.read_text(encoding="utf-8"))
        if {k: known.get(k) for k in identity} == identity and isinstance(known.get("sha256"), str):
            return str(known["sha256"])
    except (OSError, ValueError):
        pass
    hashed_at = time.time()
    try:
        digest = sha256_of(path)
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc})") from exc
    if hashed_at - stat.st_mtime > RACY_SECONDS:
        try:
            hash_dir.mkdir(parents=True, exist_ok=True)
            write_json_atomic(entry, {**identity, "sha256": digest})
        except OSError:
            pass  # a read-only cache only costs the hash next time
    return digest


def open_corpus(data: str, data_dir: str = "", cache_dir: str = ".data-cache", split: str = "90/5/5") -> CorpusSource:
    """Like `load_corpus`, but a user's file or directory is streamed from disk, never read whole."""
    if data in REGISTRY:
        return load_registry_corpus(data, data_dir, cache_dir)
    return FileCorpus.open(Path(data).expanduser(), split, Path(cache_dir).expanduser())
