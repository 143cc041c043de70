import hashlib
import http.server
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from training import data
from training.data import REGISTRY, DataError, Dataset, RemoteFile, load_corpus, split_lines

SHARED = os.environ.get("RNNLM_DATA_DIR", "")  # CI sets it to ../shared/data
CONTENT = "first line\nsecond line\n" * 10


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@pytest.fixture
def served(tmp_path: Path) -> Iterator[str]:
    """A loopback HTTP server over tmp_path/www: stands in for the canonical address."""
    root = tmp_path / "www"
    root.mkdir()
    (root / "corpus.txt").write_text(CONTENT)

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
            super().__init__(*args, directory=str(root), **kwargs)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    thread.join()


def register(monkeypatch: pytest.MonkeyPatch, url: str, digest: str) -> None:
    files = (
        RemoteFile("train.txt", url, digest),
        RemoteFile("valid.txt", url, digest),
        RemoteFile("test.txt", url, digest),
    )
    monkeypatch.setitem(REGISTRY, "toy", Dataset("toy", files, "published splits", "word"))


def test_download_into_cache_on_first_use_then_reuse(
    tmp_path: Path, served: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    register(monkeypatch, f"{served}/corpus.txt", sha(CONTENT))
    cache = tmp_path / "cache"
    corpus = load_corpus("toy", data_dir="", cache_dir=str(cache))
    assert corpus.train == CONTENT and (cache / "toy" / "train.txt").read_text() == CONTENT
    assert corpus.sha256["train.txt"] == sha(CONTENT)
    (tmp_path / "www" / "corpus.txt").unlink()  # the server no longer has it: the cache must serve
    assert load_corpus("toy", data_dir="", cache_dir=str(cache)).valid == CONTENT


def test_download_with_wrong_sha256_is_refused_and_not_cached(
    tmp_path: Path, served: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    register(monkeypatch, f"{served}/corpus.txt", "0" * 64)
    with pytest.raises(DataError, match=r"sha256 .* does not match"):
        load_corpus("toy", cache_dir=str(tmp_path / "cache"))
    assert not any((tmp_path / "cache").rglob("*.txt"))


def test_unreachable_download_names_the_address(tmp_path: Path, served: str, monkeypatch: pytest.MonkeyPatch) -> None:
    register(monkeypatch, f"{served}/missing.txt", sha(CONTENT))
    with pytest.raises(DataError, match=r"could not download http://127\.0\.0\.1:\d+/missing\.txt"):
        load_corpus("toy", cache_dir=str(tmp_path / "cache"))


def test_local_data_dir_is_looked_up_first_and_checked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    register(monkeypatch, "http://127.0.0.1:9/never-fetched", sha(CONTENT))
    local = tmp_path / "data" / "toy"
    local.mkdir(parents=True)
    for name in ("train.txt", "valid.txt", "test.txt"):
        (local / name).write_text(CONTENT)
    corpus = load_corpus("toy", data_dir=str(tmp_path / "data"), cache_dir=str(tmp_path / "cache"))
    assert corpus.test == CONTENT and not (tmp_path / "cache").exists()
    (local / "valid.txt").write_text(CONTENT + "tampered\n")
    with pytest.raises(DataError, match=r"valid\.txt: sha256 .* does not match"):
        load_corpus("toy", data_dir=str(tmp_path / "data"), cache_dir=str(tmp_path / "cache"))


def test_split_rule_cuts_whole_lines_in_order() -> None:
    text = "".join(f"line {i}\n" for i in range(100))
    train, valid, test = split_lines(text, "90/5/5")
    assert train.splitlines()[-1] == "line 89" and valid.splitlines() == [f"line {i}" for i in range(90, 95)]
    assert test.splitlines() == [f"line {i}" for i in range(95, 100)]
    assert train + valid + test == text
    with pytest.raises(ValueError, match="summing to 100"):
        split_lines(text, "90/20/5")
    with pytest.raises(DataError, match="too few"):
        split_lines("one\ntwo\n", "90/5/5")


def test_user_file_and_directories(tmp_path: Path) -> None:
    text = "".join(f"w{i % 7} w{i % 5}\n" for i in range(40))
    (tmp_path / "mine.txt").write_text(text)
    corpus = load_corpus(str(tmp_path / "mine.txt"), split="80/10/10")
    assert len(corpus.train.splitlines()) == 32 and "80/10/10" in corpus.split_rule
    split_dir = tmp_path / "splits"
    split_dir.mkdir()
    (split_dir / "train.txt").write_text("a b\n")
    (split_dir / "valid.txt").write_text("b a\n")
    corpus = load_corpus(str(split_dir))
    assert (corpus.train, corpus.valid, corpus.test) == ("a b\n", "b a\n", "b a\n")
    assert "test = valid" in corpus.split_rule
    with pytest.raises(DataError, match="no such file or directory"):
        load_corpus(str(tmp_path / "nope.txt"))
    (tmp_path / "latin1.txt").write_bytes("caf\xe9\n".encode("latin-1") * 40)
    with pytest.raises(DataError, match="not UTF-8"):
        load_corpus(str(tmp_path / "latin1.txt"))


def test_nsmc_document_column() -> None:
    tsv = 'id\tdocument\tlabel\n1\t재밌다 ㅋㅋ\t1\n2\t\t0\n3\t"최악"이다\t0\n'
    assert data.nsmc_documents(tsv) == ["재밌다 ㅋㅋ", '"최악"이다']


@pytest.mark.skipif(not Path(SHARED, "ptb", "train.txt").is_file(), reason="needs RNNLM_DATA_DIR with the corpora")
def test_registry_corpora_from_the_shared_data_dir(tmp_path: Path) -> None:
    from training.config import TrainConfig
    from training.trainer import build_tokenizer

    ptb = load_corpus("ptb", data_dir=SHARED, cache_dir=str(tmp_path))
    tokenizer = build_tokenizer(TrainConfig(data="ptb", level="word"), ptb.train)
    assert tokenizer.vocab_size == 10_000  # the PTB convention: 9,999 words + <eos> (<unk> is in the text)
    shakespeare = load_corpus("tinyshakespeare", data_dir=SHARED, cache_dir=str(tmp_path))
    assert len(shakespeare.train) == int(1_115_394 * 0.9) and shakespeare.train.startswith("First Citizen:")
    assert shakespeare.valid == shakespeare.test and len(shakespeare.valid) == 1_115_394 - int(1_115_394 * 0.9)
    assert not any(tmp_path.iterdir())  # nothing was downloaded
