"""Stop strings: text that could still become one is held back, never partly released."""

from __future__ import annotations

from app.engine.output import StopStringMatcher


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
