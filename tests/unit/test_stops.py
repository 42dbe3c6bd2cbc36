"""Stop strings on streamed deltas: never leak a stop, never depend on how text is chunked."""

from __future__ import annotations

import itertools
import time

from hypothesis import given, settings
from hypothesis import strategies as st

from chatd.chat.choice import ChoiceStream
from chatd.chat.generation import UsageCount, feed_event
from chatd.chat.stops import StopMatcher
from chatd.engine.types import TokenEvent


def run(stops: list[str], chunks: list[str]) -> tuple[list[str], bool]:
    """Feed chunks until stopped; return every emitted piece (flush included) and stopped."""
    m = StopMatcher(stops)
    out: list[str] = []
    for chunk in chunks:
        piece, stopped = m.feed(chunk)
        out.append(piece)
        if stopped:
            return out, True
    out.append(m.flush())
    return out, False


def reference(text: str, stops: list[str]) -> str:
    """The documented semantics: cut at the earliest-ending stop (ties: earliest start)."""
    best: tuple[int, int] | None = None
    for stop in stops:
        if not stop:
            continue
        i = text.find(stop)
        if i >= 0 and (best is None or (i + len(stop), i) < best):
            best = (i + len(stop), i)
    return text if best is None else text[: best[1]]


def test_no_stops_is_pass_through() -> None:
    m = StopMatcher([])
    assert m.feed("hello") == ("hello", False)
    assert m.feed("") == ("", False)
    assert m.flush() == ""
    assert StopMatcher(["", ""]).feed("abc") == ("abc", False)


def test_stop_split_across_single_char_deltas() -> None:
    m = StopMatcher(["<|end|>"])
    emitted = []
    for ch in "Hello<|end|>world":
        piece, stopped = m.feed(ch)
        emitted.append(piece)
        assert "<" not in "".join(emitted)  # no part of the stop ever leaks
        if stopped:
            break
    assert "".join(emitted) == "Hello"
    assert m.stopped and m.matched == "<|end|>"
    assert m.feed("more") == ("", True)
    assert m.flush() == ""


def test_stop_inside_one_delta_and_at_very_start() -> None:
    assert StopMatcher(["STOP"]).feed("abcSTOPdef") == ("abc", True)
    assert StopMatcher(["STOP"]).feed("STOP and more") == ("", True)
    m = StopMatcher(["STOP"])
    assert m.feed("ST") == ("", False)
    assert m.feed("OP") == ("", True)


def test_partial_match_that_diverges_is_released() -> None:
    m = StopMatcher(["</answer>"])
    assert m.feed("x </ans") == ("x ", False)
    assert m.pending == "</ans"
    assert m.feed("wer>") == ("", True)

    m = StopMatcher(["</answer>"])
    assert m.feed("x </ans") == ("x ", False)
    assert m.feed("i") == ("</ansi", False)
    assert m.flush() == ""

    m = StopMatcher(["abc"])
    assert m.feed("xab") == ("x", False)
    assert m.flush() == "ab"  # end of generation: held text is released


def test_holds_only_longest_suffix_that_is_a_stop_prefix() -> None:
    m = StopMatcher(["abcdef"])
    assert m.feed("hello") == ("hello", False)  # not the whole len(stop)-1 window
    assert m.feed("xxabc") == ("xx", False)
    assert m.pending == "abc"
    # a re-start inside the held text: "aba" -> "a" may still begin "abcdef"
    m = StopMatcher(["abab"])
    assert m.feed("aba") == ("", False)
    assert m.feed("c") == ("abac", False)
    m = StopMatcher(["abab"])
    assert m.feed("ababa") == ("", True)
    m = StopMatcher(["aab"])
    assert m.feed("aaa") == ("a", False)  # "aa" may still begin "aab"
    assert m.feed("b") == ("", True)  # "aaab" -> "a", already emitted


def test_overlapping_candidates_earliest_completed_wins() -> None:
    # "bc" is complete at offset 3, before "abcd" could be: generation stops right there.
    m = StopMatcher(["abcd", "bc"])
    assert m.feed("xa") == ("x", False)  # "a" may begin "abcd"
    assert m.feed("b") == ("", False)  # "ab" may begin "abcd", "b" may begin "bc"
    assert m.feed("c") == ("a", True)
    assert m.matched == "bc"
    assert StopMatcher(["abcd", "bc"]).feed("xabcdy") == ("xa", True)  # same in one delta
    # Same end offset: the earlier start (longer stop) wins, so no stop text leaks.
    for stops in (["bcd", "abcd"], ["abcd", "bcd"]):
        m = StopMatcher(stops)
        assert m.feed("xabcdy") == ("x", True)
        assert m.matched == "abcd"
    # Several stops in one delta: the earliest-ending one wins regardless of list order.
    assert StopMatcher(["zz", "b"]).feed("a zz b") == ("a ", True)


def test_unicode() -> None:
    m = StopMatcher(["日本語", "🛑"])
    assert m.feed("こんにちは日") == ("こんにちは", False)
    assert m.feed("本") == ("", False)
    assert m.feed("人") == ("日本人", False)
    assert m.feed("é🛑ü") == ("é", True)
    assert m.matched == "🛑"


def test_long_generation_is_linear() -> None:
    stops = ["x" * 50 + "END", "y" * 64]
    m = StopMatcher(stops)
    text = ("x" * 49 + "a" + "y" * 63 + "b") * 2_000  # near-misses everywhere
    start = time.perf_counter()
    out = []
    for ch in text:
        piece, stopped = m.feed(ch)
        out.append(piece)
        assert not stopped
    out.append(m.flush())
    elapsed = time.perf_counter() - start
    assert "".join(out) == text
    assert elapsed < 10.0, elapsed  # ~228k feeds; a quadratic rescan would take minutes


@st.composite
def texts_stops_chunkings(draw: st.DrawFn) -> tuple[str, list[str], list[list[str]]]:
    """A text over a tiny alphabet (so matches and near-misses are common) and chunkings."""
    alphabet = st.sampled_from("abé🙂")
    text = draw(st.text(alphabet, max_size=40))
    stops = draw(st.lists(st.text(alphabet, min_size=1, max_size=5), min_size=1, max_size=4))
    if text and draw(st.booleans()):  # often plant a stop taken from the text itself
        i = draw(st.integers(0, len(text) - 1))
        stops.append(text[i : i + draw(st.integers(1, 5))])
    chunkings = [[text], list(text)]
    for _ in range(3):
        cuts = sorted(draw(st.lists(st.integers(0, len(text)), max_size=12)))
        bounds = [0, *cuts, len(text)]
        chunkings.append([text[a:b] for a, b in itertools.pairwise(bounds)])
    return text, stops, chunkings


@settings(max_examples=400, deadline=None)
@given(texts_stops_chunkings())
def test_property_output_independent_of_chunking(
    case: tuple[str, list[str], list[list[str]]],
) -> None:
    text, stops, chunkings = case
    expected = reference(text, stops)
    expected_stopped = any(s in text for s in stops)
    for chunks in chunkings:
        pieces, stopped = run(stops, chunks)
        assert "".join(pieces) == expected, (chunks, stops)
        assert stopped == expected_stopped
        # streaming never emits anything that is not part of the final answer
        emitted = ""
        for piece in pieces:
            emitted += piece
            assert expected.startswith(emitted)


def test_stopped_reported_on_the_delta_that_completes_the_stop() -> None:
    text = "one two <stop> three"
    m = StopMatcher(["<stop>"])
    for i, ch in enumerate(text):
        _, stopped = m.feed(ch)
        if stopped:
            assert i == text.index("<stop>") + len("<stop>") - 1
            break
    else:
        raise AssertionError("never stopped")


def test_held_tokens_keep_their_times() -> None:
    """A token whose text is held back (half a character, a possible stop) still counts:
    the delta that releases it carries when it was made, so inter-token metrics see
    every token, not every delta."""
    class Stream:
        def cancel(self, index: int | None = None) -> None:
            raise AssertionError("no stop string matches here")

    choice = ChoiceStream(0, ["END"], logprobs=False, tools=False, streaming=True)
    usage = UsageCount()
    pieces = [("Hi", 1.0), ("", 2.0), ("E", 3.0), ("N", 4.0), ("ce", 5.0)]
    deltas = [feed_event(Stream(), choice, TokenEvent(0, 7, text, at=at), usage)
              for text, at in pieces]
    out = [d for d in deltas if d is not None]
    assert [(d.content, d.held, d.at) for d in out] == [
        ("Hi", (), 1.0), ("ENce", (2.0, 3.0, 4.0), 5.0)]
    assert usage.completion_tokens == 5
