import unicodedata

import pytest

from model.tokenizer import EOS, UNK, CharTokenizer, TokenizerError, WordTokenizer
from model.tokenizers import tokenizer_from_dict
from tests.factories import char_tokenizer, subword_tokenizer, word_tokenizer


def test_char_round_trip_with_korean() -> None:
    text = "안녕하세요, world!\n한국어도 됩니다."
    tokenizer = CharTokenizer.build(text)
    encoding = tokenizer.encode(text)
    assert not any(encoding.unknown)
    assert tokenizer.decode(encoding.ids) == text


def test_char_nfc_makes_decomposed_hangul_the_same_token() -> None:
    composed = "한글"
    decomposed = unicodedata.normalize("NFD", composed)
    assert decomposed != composed
    tokenizer = CharTokenizer.build(composed)
    assert tokenizer.encode(decomposed).ids == tokenizer.encode(composed).ids
    assert len(tokenizer.encode(decomposed).ids) == 2


def test_char_unknown_is_reported_not_a_crash() -> None:
    tokenizer = CharTokenizer.build("abc")
    encoding = tokenizer.encode("abz")
    assert encoding.unknown == [False, False, True]
    assert encoding.ids[2] == tokenizer.unk_id
    assert tokenizer.decode(encoding.ids) == "ab\ufffd"


def test_word_eos_per_line_and_round_trip() -> None:
    tokenizer = WordTokenizer.build("the cat\nsat down\n")
    encoding = tokenizer.encode("the cat\nsat down\n")
    assert encoding.tokens == ["the", "cat", EOS, "sat", "down", EOS]
    assert tokenizer.decode(encoding.ids) == "the cat\nsat down\n"
    # the unfinished last line gets no <eos>
    assert tokenizer.encode("the cat").tokens == ["the", "cat"]


def test_word_unknown_lowercase_and_limits() -> None:
    text = "a a a b b c\n"
    tokenizer = WordTokenizer.build(text, max_size=4)
    assert tokenizer.tokens == [UNK, EOS, "a", "b"]
    encoding = tokenizer.encode("a c zebra")
    assert encoding.unknown == [False, True, True]
    assert WordTokenizer.build(text, min_freq=2).tokens == [UNK, EOS, "a", "b"]
    lower = WordTokenizer.build("The THE the\n", lowercase=True)
    assert lower.encode("THE The").ids == [lower.index["the"]] * 2


def test_serialisation_round_trip() -> None:
    for tokenizer in (CharTokenizer.build("héllo 세계"), WordTokenizer.build("x y z\n", lowercase=True)):
        again = tokenizer_from_dict(tokenizer.to_dict())
        assert type(again) is type(tokenizer)
        assert again.tokens == tokenizer.tokens
        assert again.to_dict() == tokenizer.to_dict()


@pytest.mark.parametrize(
    "data",
    [
        {"format_version": 99, "kind": "char", "tokens": [UNK]},
        {"format_version": 1, "kind": "bpe", "tokens": [UNK]},
        {"format_version": 1, "kind": "word", "tokens": [UNK]},
        {"format_version": 1, "kind": "char", "tokens": [UNK, "a", "a"]},
        {"format_version": 1, "kind": "char", "tokens": "abc"},
    ],
)
def test_bad_tokenizer_dicts_are_refused(data: dict[str, object]) -> None:
    with pytest.raises(TokenizerError):
        tokenizer_from_dict(data)


# Raw text the punctuation pre-tokenizer must give back exactly (every token known).
RAW = [
    "Hello, world! It's 3:45 p.m. -- isn't it?",
    '  two leading spaces, "quotes" and (brackets)  ',
    "tabs\tand\t\truns   of spaces ",
    "영화가 정말 재밌다!! ㅋㅋㅋ 10점 만점에 10점^^",
    "Привет, мир… Café crème; naïve — über.",
    "x = f(a, b) ** 2  # code: {k: v}\r",
    "emoji 😀👍🏽 and $\\frac{1}{2}$",
]


def test_punctuation_pretokenizer_round_trips_raw_text() -> None:
    text = "\n".join(RAW) + "\n\nlast line without a line end"
    tokenizer = WordTokenizer.build(text, pretokenizer="punctuation")
    encoding = tokenizer.encode(text)
    assert not any(encoding.unknown)
    assert tokenizer.decode(encoding.ids) == text
    for line in RAW:
        assert tokenizer.decode(tokenizer.encode(line).ids) == line


def test_punctuation_pretokenizer_splits_symbols_and_keeps_spacing() -> None:
    tokenizer = WordTokenizer.build("", pretokenizer="punctuation")
    assert tokenizer.split("Hello, world!") == ["Hello", ",", " world", "!"]
    assert tokenizer.split("재밌다!! 최고") == ["재밌다", "!", "!", " 최고"]
    assert tokenizer.split("a  b\tc") == ["a", " ", " b", "\t", "c"]
    assert tokenizer.split("naïve (e\u0301)") == ["naïve", " (", "é", ")"]
    assert tokenizer.split("one\ntwo\n") == ["one", EOS, "two", EOS]


def test_punctuation_halves_unknown_words_of_raw_text() -> None:
    train = "The cat sat. The cat ran! A dog sat, and ran.\n" * 3
    held_out = "The dog ran, the cat sat! A cat sat.\n"
    rates = {}
    for pretokenizer in ("whitespace", "punctuation"):
        tokenizer = WordTokenizer.build(train, pretokenizer=pretokenizer)  # type: ignore[arg-type]
        unknown = tokenizer.encode(held_out).unknown
        rates[pretokenizer] = sum(unknown) / len(unknown)
    assert rates["punctuation"] <= rates["whitespace"] / 2


def test_punctuation_unknown_word_is_spaced_like_a_word() -> None:
    tokenizer = WordTokenizer.build("the cat\n", pretokenizer="punctuation")
    assert tokenizer.decode(tokenizer.encode("the zebra\nzebra cat").ids) == f"the {UNK}\n{UNK} cat"


def test_pretokenizer_is_recorded_and_old_dicts_stay_whitespace() -> None:
    punctuation = WordTokenizer.build("a, b\n", pretokenizer="punctuation")
    again = tokenizer_from_dict(punctuation.to_dict())
    assert isinstance(again, WordTokenizer) and again.pretokenizer == "punctuation"
    assert again.encode("a, b").tokens == ["a", ",", " b"]
    # A dict written before the pre-tokenizer existed: no key, whitespace words, same dict back.
    old = {"format_version": 1, "kind": "word", "tokens": [UNK, EOS, "a,", "b"], "lowercase": False}
    tokenizer = tokenizer_from_dict(old)
    assert isinstance(tokenizer, WordTokenizer) and tokenizer.pretokenizer == "whitespace"
    assert tokenizer.encode("a, b").tokens == ["a,", "b"]
    assert tokenizer.decode(tokenizer.encode("a, b\nb").ids) == "a, b\nb"
    assert tokenizer.to_dict() == old
    with pytest.raises(TokenizerError, match="unknown pretokenizer"):
        tokenizer_from_dict({**old, "pretokenizer": "moses"})


def test_every_level_gives_the_bytes_of_its_pieces() -> None:
    word = WordTokenizer.build("가 나\n")
    ids = word.encode("가 나").ids
    assert word.piece_bytes(ids[1], ids[0]) == " 나".encode()
    char = CharTokenizer.build("é")
    assert char.piece_bytes(char.encode("é").ids[0], None) == "é".encode()


def test_text_offsets_follow_the_pieces() -> None:
    word = WordTokenizer.build("the cat\nsat\n")
    ids = word.encode("the cat\nsat").ids
    assert word.text_offsets(ids) == [0, 3, 7, 8]  # "the", " cat", "\n", "sat"


def test_each_level_says_how_text_is_cut_what_separates_tokens_and_what_it_counts() -> None:
    """The level behaviour the service asks of a tokenizer instead of branching on its kind."""
    char, word, subword = char_tokenizer(), word_tokenizer(), subword_tokenizer()
    text = "the cat sa"
    assert char.split_unfinished(text) == (text, "")  # a character is a token as it arrives
    assert word.split_unfinished(text) == ("the cat ", "sa")  # an unfinished word waits
    assert subword.split_unfinished(text) == ("the cat", " sa")  # with its space: BPE merges " sa"
    assert (char.separator, word.separator, subword.separator) == ("", " ", "")
    assert (char.eos_id, word.eos_id, subword.eos_id) == (None, word.boundary_id, None)
    for tokenizer in (char, word, subword):
        assert tokenizer.encode(tokenizer.boundary_text).ids == [tokenizer.boundary_id]
    ids = char.encode("다람쥐").ids
    assert char.characters(ids) == 3 and subword.characters(subword.encode("다람쥐").ids) == 3
    assert word.characters(word.encode("the cat").ids) is None  # <unk> hides how many
    assert char.joins_previous(char.encode("e").ids[0], "\u0301") and not char.joins_previous(ids[0], "x")
    assert not word.joins_previous(word.boundary_id, "\u0301")


def test_source_offsets_find_each_token_in_the_text_as_sent() -> None:
    word = word_tokenizer()
    assert word.source_offsets("The  cat\nsat", word.encode("The  cat\nsat")) == [0, 5, 8, 9]
    subword = subword_tokenizer()
    text = "the 다람쥐"
    assert subword.source_offsets(text, subword.encode(text)) == subword.text_offsets(subword.encode(text).ids)
