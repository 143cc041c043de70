import codecs
import json
import random
import unicodedata

import pytest

from model.subword import SubwordTokenizer, byte_symbols, readable
from model.tokenizer import TokenizerError
from model.tokenizers import tokenizer_from_dict

TRAIN = "".join(
    line + "\n"
    for line in [
        "the cat sat on the mat, and the dog sat on the log.",
        "영화가 정말 재밌다! 배우들 연기도 좋고 다시 보고 싶다",
        "이 영화 진짜 별로... 시간 아깝다",
        "Привет, мир! Café au lait, s'il vous plaît.",
        "def f(x):\treturn x ** 2  # squared",
    ]
    * 20
)

# Hard strings: the round trip must give back their NFC form exactly.
HARD = [
    "",
    "\n",
    "\n\n\n",
    "안녕하세요  세계\t탭\r\n",
    "한글 자모 분리: \u1112\u1161\u11ab",  # conjoining jamo, composed by NFC
    "e\u0301 vs é, naïve façade, Ωμέγα, Привет мир",
    "😀 👍🏽 👨\u200d👩\u200d👧 🇰🇷 emoji",
    "def f(x):\n\treturn {'a': [1, 2]}  # code\n",
    r"$\int_0^1 x^2\,dx = \frac{1}{3}$ \LaTeX{}",
    "   leading, trailing and    repeated spaces   ",
    "\x00\x07\x1b[0m \u200b\ufeff\u00a0 zero-width and controls",
    "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 漢字かなカナ العربية עברית हिन्दी",
    "tabs\t\tand\vvertical\fform feeds\r",
]


@pytest.fixture(scope="module")
def tokenizer() -> SubwordTokenizer:
    return SubwordTokenizer.train(TRAIN.splitlines(keepends=True), vocab_size=400)


@pytest.mark.parametrize("text", HARD)
def test_round_trip_of_hard_strings(tokenizer: SubwordTokenizer, text: str) -> None:
    encoding = tokenizer.encode(text)
    assert not any(encoding.unknown)
    assert tokenizer.decode(encoding.ids) == unicodedata.normalize("NFC", text)
    spelled = b"".join(tokenizer.piece_bytes(i, None) for i in encoding.ids)
    assert spelled == unicodedata.normalize("NFC", text).encode("utf-8")


def test_random_unicode_has_no_unknown_token_and_round_trips(tokenizer: SubwordTokenizer) -> None:
    rng = random.Random(16)
    planes = [(0x20, 0x2FFF), (0xAC00, 0xD7A3), (0x3000, 0x9FFF), (0x1F300, 0x1FAFF), (0x10000, 0x10FFFF)]
    for _ in range(300):
        chars = []
        for _ in range(rng.randint(1, 30)):
            low, high = rng.choice(planes)
            code = rng.randint(low, high)
            chars.append(chr(code) if not 0xD800 <= code <= 0xDFFF else " ")
        text = "".join(chars)
        encoding = tokenizer.encode(text)
        assert tokenizer.unk_id is None and not any(encoding.unknown)
        assert tokenizer.decode(encoding.ids) == unicodedata.normalize("NFC", text)


def test_line_end_is_one_token_and_the_boundary(tokenizer: SubwordTokenizer) -> None:
    assert tokenizer.encode("\n").ids == [tokenizer.boundary_id]
    ids = tokenizer.encode("the cat\n\nsat\n").ids
    assert ids.count(tokenizer.boundary_id) == 3
    assert tokenizer.piece(tokenizer.boundary_id, None) == "\n"


def test_bytes_fed_incrementally_never_give_half_a_character(tokenizer: SubwordTokenizer) -> None:
    text = "희귀한 음절 뷁 and 🦜"
    decoder = codecs.getincrementaldecoder("utf-8")()
    shown = []
    previous = None
    for token_id in tokenizer.encode(text).ids:
        shown.append(decoder.decode(tokenizer.piece_bytes(token_id, previous)))
        previous = token_id
    assert "".join(shown) == text
    assert all("\ufffd" not in piece for piece in shown)


def test_partial_character_tokens_are_shown_as_bytes(tokenizer: SubwordTokenizer) -> None:
    parrot = tokenizer.encode("🦜")  # not in the training text: four byte tokens
    assert [tokenizer.piece(i, None) for i in parrot.ids] == ["<0xF0>", "<0x9F>", "<0xA6>", "<0x9C>"]
    assert parrot.tokens == ["<0xF0>", "<0x9F>", "<0xA6>", "<0x9C>"]
    assert readable("a🦜".encode()[:3]) == "a<0xF0><0x9F>"
    assert tokenizer.decode(parrot.ids[:2]) == "\ufffd"  # a cut sequence decodes with a replacement


def test_frequent_words_become_single_tokens(tokenizer: SubwordTokenizer) -> None:
    assert tokenizer.encode(" the").tokens == [" the"]
    assert len(tokenizer.encode("영화가 정말 재밌다").ids) < len("영화가 정말 재밌다".encode())


def test_serialised_in_the_library_format_and_reloaded(tokenizer: SubwordTokenizer) -> None:
    data = tokenizer.to_dict()
    assert data["kind"] == "subword" and data["tokenizer"]["model"]["type"] == "BPE"
    again = tokenizer_from_dict(json.loads(json.dumps(data)))
    assert isinstance(again, SubwordTokenizer)
    assert again.tokens == tokenizer.tokens and again.boundary_id == tokenizer.boundary_id
    assert again.encode(HARD[5]).ids == tokenizer.encode(HARD[5]).ids


def test_bad_serialisations_are_refused(tokenizer: SubwordTokenizer) -> None:
    data = tokenizer.to_dict()
    with pytest.raises(TokenizerError, match="JSON object"):
        tokenizer_from_dict({**data, "tokenizer": "nope"})
    with pytest.raises(TokenizerError, match="not a tokenizers JSON"):
        tokenizer_from_dict({**data, "tokenizer": {"model": {"type": "nothing"}}})
    pipeline = json.loads(json.dumps(data["tokenizer"]))
    vocabulary = pipeline["model"]["vocab"]
    del vocabulary[next(s for s in byte_symbols() if s in vocabulary and s != "Ċ")]
    with pytest.raises(TokenizerError):
        tokenizer_from_dict({**data, "tokenizer": pipeline})


def test_vocabulary_too_small_is_refused() -> None:
    with pytest.raises(TokenizerError, match="at least 257"):
        SubwordTokenizer.train(["abc\n"], vocab_size=100)


def test_out_of_range_ids_are_refused(tokenizer: SubwordTokenizer) -> None:
    with pytest.raises(TokenizerError, match="outside the vocabulary"):
        tokenizer.piece_bytes(tokenizer.vocab_size, None)


def test_invalid_after_masks_what_would_break_utf8(tokenizer: SubwordTokenizer) -> None:
    byte = {b[0]: i for i, b in enumerate(tokenizer.token_bytes) if len(b) == 1}
    lead = "뷁".encode()  # three bytes: a lead byte and two continuation bytes
    assert byte[lead[1]] in tokenizer.invalid_after(b"")  # a continuation byte cannot start a character
    assert byte[ord("a")] not in tokenizer.invalid_after(b"")
    after_lead = tokenizer.invalid_after(lead[:1])
    assert byte[lead[1]] not in after_lead and byte[ord("a")] in after_lead and tokenizer.boundary_id in after_lead
    assert byte[lead[2]] not in tokenizer.invalid_after(lead[:2])


def test_text_offsets_count_characters_not_bytes(tokenizer: SubwordTokenizer) -> None:
    text = "a 🦜 뷁b"
    ids = tokenizer.encode(text).ids
    offsets = tokenizer.text_offsets(ids)
    assert len(offsets) == len(ids) and offsets[0] == 0
    parrot = next(i for i, token in enumerate(tokenizer.encode(text).tokens) if token.startswith("<0xF0>"))
    assert offsets[parrot : parrot + 4] == [text.index("🦜")] * 4  # its four byte tokens all start at the parrot
    assert offsets[-1] == text.index("b") and offsets == sorted(offsets)


def test_partial_ids_are_the_tokens_inside_a_character(tokenizer: SubwordTokenizer) -> None:
    parrot = tokenizer.encode("🦜").ids
    assert set(parrot) <= tokenizer.partial_ids
    assert tokenizer.encode(" the").ids[0] not in tokenizer.partial_ids
    assert all("<0x" in tokenizer.tokens[i] for i in tokenizer.partial_ids)
