"""The output stage: a character is released whole, and text that could still become a stop string is held back."""

from __future__ import annotations

import pytest

from app.engine.output import StopStringMatcher, TextOutput
from model.tokenizer import CharTokenizer


def released(stop: tuple[str, ...], pieces: list[str]) -> tuple[list[str], bool, str]:
    matcher = StopStringMatcher(stop)
    out = []
    for piece in pieces:
        out.append(matcher.push(piece))
        if matcher.stopped:
            break
    return out, matcher.stopped, "".join(out) + ("" if matcher.stopped else matcher.flush())


def test_a_prefix_is_held_until_it_cannot_be_a_stop_string() -> None:
    out, stopped, text = released(("abc",), ["xa", "b", "d", "e"])
    assert out == ["x", "", "abd", "e"]
    assert not stopped and text == "xabde"


def test_the_text_ends_before_the_stop_string_even_inside_one_piece() -> None:
    out, stopped, text = released(("abc",), ["xab", "cyz"])
    assert out == ["x", ""] and stopped and text == "x"
    out, stopped, text = released(("END",), ["hello END and more"])
    assert out == ["hello "] and stopped


def test_the_earliest_of_several_stop_strings_wins() -> None:
    out, stopped, _ = released(("world", "lo w"), ["hello world"])
    assert out == ["hel"] and stopped


def test_a_stop_string_across_many_pieces_and_a_final_flush() -> None:
    pieces = list("the end is near")
    out, stopped, text = released((" is n",), pieces)
    assert stopped and text == "the end" and "".join(out) == "the end"
    out, stopped, text = released(("zzz",), ["z", "z", "y"])
    assert out == ["", "", "zzy"] and not stopped
    matcher = StopStringMatcher(("zzz",))
    assert matcher.push("az") == "a" and matcher.flush() == "z"  # the generation ended: release the rest


class ByteTokenizer(CharTokenizer):
    """Each token one byte of UTF-8 (as a byte-fallback subword model's), so a Hangul syllable takes three."""

    def __init__(self) -> None:
        super().__init__(["<unk>", *(chr(0xE000 + b) for b in range(256))])  # placeholder surface forms

    def piece_bytes(self, token_id: int, previous_id: int | None) -> bytes:
        return bytes([token_id - 1])


def run_output(text: str, stop: tuple[str, ...] = (), max_tokens: int = 1000) -> tuple[list[str], str | None]:
    output = TextOutput(ByteTokenizer(), stop, previous=0, max_tokens=max_tokens)
    released, finish = [], None
    for byte in text.encode("utf-8"):
        step = output.push(byte + 1, eos_id=None)
        released.append(step.text)
        if step.finish:
            finish = step.finish
            break
    return released, finish


@pytest.mark.parametrize("text", ["다람쥐 헌 쳇바퀴", "naïve café", "emoji 🙂 and 👍🏽", "plain"])
def test_a_character_split_across_tokens_is_released_whole_once_complete(text: str) -> None:
    released, finish = run_output(text)
    assert "".join(released) == text and finish is None
    for piece in released:
        assert "\ufffd" not in piece  # never half a character
    assert released.count("") == len(text.encode("utf-8")) - len(text)  # held while incomplete


def test_a_stop_string_made_of_multibyte_characters_stops_without_leaking() -> None:
    released, finish = run_output("가나다라마", stop=("다라",))
    assert "".join(released) == "가나" and finish == "stop"


def test_a_length_cut_inside_a_character_ends_with_a_replacement_character() -> None:
    released, finish = run_output("가나", max_tokens=4)  # 가 (3 bytes) and the first byte of 나
    assert "".join(released) == "가\ufffd" and finish == "length"


def test_a_stop_string_is_kept_at_the_end_with_include() -> None:
    matcher = StopStringMatcher(("abc",), include=True)
    assert matcher.push("xab") == "x" and matcher.push("cyz") == "abc" and matcher.stopped == "abc"


def push_all(output: TextOutput, tokenizer: CharTokenizer, text: str) -> tuple[str, str | None]:
    shown, finish = "", None
    for character in text:
        step = output.push(tokenizer.index[character], eos_id=None)
        shown += step.text
        if step.finish:
            finish = step.finish
            break
    return shown, finish


@pytest.mark.parametrize(("include", "expected"), [(False, "ab"), (True, "abc")])
def test_a_stop_token_id_ends_the_text_and_names_itself(include: bool, expected: str) -> None:
    tokenizer = CharTokenizer(["<unk>", "\n", "a", "b", "c", "d"])
    stop_id = tokenizer.index["c"]
    output = TextOutput(tokenizer, (), previous=1, max_tokens=100, stop_ids=(stop_id,), include_stop=include)
    assert push_all(output, tokenizer, "abcd") == (expected, "stop") and output.stop_reason == stop_id
    strings = TextOutput(tokenizer, ("bc",), previous=1, max_tokens=100, include_stop=include)
    shown, finish = push_all(strings, tokenizer, "abcd")
    assert (shown, finish, strings.stop_reason) == ("abc" if include else "a", "stop", "bc")
