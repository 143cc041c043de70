import unicodedata

import pytest

from model.tokenizer import EOS, UNK, CharTokenizer, TokenizerError, WordTokenizer, tokenizer_from_dict


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
