"""PieceTokenizer's cuts at special tokens and its cache, with a stand-in for llama.cpp's
tokenizer of plain text (tests/e2e/test_prompt_pieces.py checks the bundled model's
real tokenizer against llama_tokenize)."""

from __future__ import annotations

from chatd.engine.pieces import PieceTokenizer, Special

START, END, PAD = Special(b"<|im_start|>", 1), Special(b"<|im_end|>", 2), Special(b"<pad>", 3)


def chars(piece: bytes) -> list[int]:
    """A tokenizer of plain text: one token per byte, offset past the special ids."""
    return [100 + b for b in piece]


def test_cuts_at_every_special_token_and_keeps_the_text_between() -> None:
    pieces = PieceTokenizer([START, END], chars)
    assert pieces.split(b"<|im_start|>user\nhi<|im_end|>\n") == [1, b"user\nhi", 2, b"\n"]
    assert pieces.split(b"") == []
    assert pieces.split(b"no specials") == [b"no specials"]
    assert pieces.split(b"<|im_end|><|im_end|>") == [2, 2]


def test_longer_special_tokens_are_cut_first() -> None:
    long, short = Special(b"<|a|b|>", 7), Special(b"<|a", 8)
    pieces = PieceTokenizer([short, long], chars)
    assert pieces.split(b"x<|a|b|>y<|az") == [b"x", 7, b"y", 8, b"z"]


def test_lstrip_and_rstrip_swallow_whitespace_as_llama_cpp_does() -> None:
    mask = Special(b"<mask>", 9, lstrip=True, rstrip=True)
    pieces = PieceTokenizer([mask], chars)
    assert pieces.split(b"a \t<mask> \n b") == [b"a", 9, b"b"]
    assert pieces.split(b"  <mask>  ") == [9]


def test_pieces_are_tokenized_once_and_joined_in_order() -> None:
    calls: list[bytes] = []

    def counting(piece: bytes) -> list[int]:
        calls.append(piece)
        return chars(piece)

    pieces = PieceTokenizer([START, END], counting)
    system = b"<|im_start|>system\nBe brief.<|im_end|>\n"
    first = pieces.tokenize(system + b"<|im_start|>user\nhi<|im_end|>\n")
    second = pieces.tokenize(system + b"<|im_start|>user\nho<|im_end|>\n")
    assert first == [1, *chars(b"system\nBe brief."), 2, *chars(b"\n"), 1, *chars(b"user\nhi"),
                     2, *chars(b"\n")]
    assert second == [*first[:-len(chars(b"user\nhi")) - 2], *chars(b"user\nho"), 2,
                      *chars(b"\n")]
    assert calls.count(b"system\nBe brief.") == 1 and calls.count(b"\n") == 1
    assert pieces.hits > 0


def test_cache_holds_at_most_its_bytes_of_text() -> None:
    pieces = PieceTokenizer([END], chars, max_bytes=8)
    for word in (b"aaa", b"bbb", b"ccc", b"a piece too long to keep"):
        assert pieces.tokenize(word + b"<|im_end|>") == [*chars(word), 2]
    assert list(pieces._cache) == [b"bbb", b"ccc"]


def test_matches_refuses_a_vocabulary_whose_cuts_differ() -> None:
    pieces = PieceTokenizer([START, END, PAD], chars)

    def same(text: bytes) -> list[int]:
        return PieceTokenizer([START, END, PAD], chars).tokenize(text)

    def merges_across(text: bytes) -> list[int]:  # a tokenizer whose pieces interact
        return chars(text)

    assert pieces.matches(same)
    assert not pieces.matches(merges_across)
