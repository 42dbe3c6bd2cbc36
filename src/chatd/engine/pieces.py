"""Prompt tokenization that remembers the text between special tokens.

Every turn of a chat is rendered and tokenized whole, and llama.cpp's BPE tokenizer
takes ~0.9 us a character here (a 300-character request: ~0.27 ms; a 16,000-character
conversation: ~14 ms on every turn), on the event loop or a thread that shares the
cores with the decode. With `parse_special`, llama.cpp first cuts the text at every
special token (`<|im_start|>`...), then tokenizes each piece of plain text on its
own and joins the results. `PieceTokenizer` makes the same cuts and tokenizes each
distinct piece once: a system prompt, the template's fixed parts and a chat's
earlier turns come from a cache, and only new text goes to llama.cpp.

Only for BPE vocabularies, where a piece's tokens do not depend on its neighbours
(SentencePiece adds a space before a piece that follows a special token), and only
after `matches` has checked the cuts against llama.cpp on text built from every
special token, so a vocabulary whose special tokens overlap in some unforeseen way
keeps llama.cpp's own path.
"""

from __future__ import annotations

import threading
from array import array
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

_C_SPACE = b" \t\n\v\f\r"  # C's isspace, which llama.cpp strips with


@dataclass(frozen=True)
class Special:
    """A token llama.cpp cuts the text at, with the whitespace it swallows."""

    text: bytes
    id: int
    lstrip: bool = False  # drops the whitespace before it
    rstrip: bool = False  # ... and after it


class PieceTokenizer:
    """`tokenize(text)` = llama_tokenize(text, add_special=False, parse_special=True),
    one cached piece of plain text at a time. Safe to call from several threads (the
    cache is locked; llama.cpp tokenizes outside the lock)."""

    def __init__(self, specials: Sequence[Special], tokenize_piece: Callable[[bytes], list[int]],
                 max_bytes: int = 8 << 20) -> None:
        # llama.cpp tries the longest special tokens first.
        self._specials = sorted(specials, key=lambda s: -len(s.text))
        self._tokenize_piece = tokenize_piece
        # Text bytes held, least recently used out first (token ids take 4 bytes each,
        # about one per 4 bytes of text: ~2x this in all).
        self._max_bytes = max_bytes
        self._bytes = 0
        self._cache: OrderedDict[bytes, array[int]] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def split(self, text: bytes) -> list[bytes | int]:
        """The text as llama.cpp's `tokenizer_st_partition` cuts it: pieces of plain text
        and special token ids, in order."""
        parts: list[bytes | int] = [text] if text else []
        for special in self._specials:
            cut: list[bytes | int] = []
            for part in parts:
                if isinstance(part, int) or special.text not in part:
                    cut.append(part)
                    continue
                start = 0
                while (at := part.find(special.text, start)) >= 0:
                    left = part[start:at]
                    if special.lstrip:
                        left = left.rstrip(_C_SPACE)
                    if left:
                        cut.append(left)
                    cut.append(special.id)
                    start = at + len(special.text)
                    if special.rstrip:
                        while start < len(part) and part[start] in _C_SPACE:
                            start += 1
                if start < len(part):
                    cut.append(part[start:])
            parts = cut
        return parts

    def tokenize(self, text: bytes) -> list[int]:
        out: list[int] = []
        for part in self.split(text):
            if isinstance(part, int):
                out.append(part)
            else:
                out.extend(self._piece(part))
        return out

    def _piece(self, part: bytes) -> array[int]:
        cache = self._cache
        with self._lock:
            tokens = cache.get(part)
            if tokens is not None:
                self.hits += 1
                cache.move_to_end(part)
                return tokens
            self.misses += 1
        tokens = array("i", self._tokenize_piece(part))
        if len(part) > self._max_bytes:
            return tokens
        with self._lock:
            if part not in cache:
                cache[part] = tokens
                self._bytes += len(part)
                while self._bytes > self._max_bytes:
                    self._bytes -= len(cache.popitem(last=False)[0])
        return tokens

    def matches(self, reference: Callable[[bytes], list[int]]) -> bool:
        """Whether this gives llama.cpp's tokens on probes made of every special token,
        alone, side by side, and between words and whitespace."""
        words = b" Hello\n", b"world ", b"\n\n", b" ", b"a"
        specials = [s.text for s in self._specials]
        probes = [b"".join(specials), b" ".join(specials), b"\n".join(specials)]
        for i, special in enumerate(specials):
            word = words[i % len(words)]
            probes.append(word + special + word + specials[(i + 1) % len(specials)] + word)
        probes.append(b"plain text, no special token at all.\n")
        return all(self.tokenize(p) == reference(p) for p in probes)
