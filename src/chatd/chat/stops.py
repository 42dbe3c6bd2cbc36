"""Stop strings over a stream of text deltas, with OpenAI semantics.

Generation ends at the first match of any stop string; the stop text and
everything after it is never returned. While streaming, text that could be the
start of a stop string is held back until the next deltas decide it, so a stop
string spread over several tokens never leaks, not even partially.

Which match is "first": the one that is *completed* first when the text is read
left to right, i.e. the smallest end offset. That is the moment a streaming
generator can notice it, so :meth:`StopMatcher.feed` reports ``stopped`` on the
very delta that completes a stop string and the engine never has to generate
further tokens just to see whether a longer, earlier-starting stop would also
have matched. Among stops completed at the same character, the one that starts
earliest (the longest) wins, so no text of a completed stop string is returned.
The output is then ``text[:start_of_winner]``, whatever the chunking.

Example with stops ``["abcd", "bc"]``: ``"xabcd"`` gives ``"xa"`` (``"bc"`` is
complete at offset 4, before ``"abcd"`` at 5); with ``["abcd", "bcd"]`` both end
at offset 5 and ``"abcd"`` wins, giving ``"x"``.

Cost: each delta is searched together with the held-back text only (which is
shorter than the longest stop string), so the work per delta is bounded by the
delta's length plus the longest stop, never by the length of the generation.
"""

from __future__ import annotations

__all__ = ["StopMatcher"]


class StopMatcher:
    """Cut a streamed generation at the first stop string, holding back possible partial matches."""

    def __init__(self, stops: list[str]) -> None:
        """Keep the distinct non-empty stops (an empty stop string would match nothing useful)."""
        self.stops: tuple[str, ...] = tuple(dict.fromkeys(s for s in stops if s))
        self._max_hold = max((len(s) for s in self.stops), default=1) - 1
        self._first_chars = frozenset(s[0] for s in self.stops)
        self._held = ""
        self._stopped = False
        self._matched: str | None = None

    @property
    def stopped(self) -> bool:
        """True once a stop string has been seen; later feeds return nothing."""
        return self._stopped

    @property
    def matched(self) -> str | None:
        """The stop string that ended generation, if any (useful for logs and tests)."""
        return self._matched

    @property
    def pending(self) -> str:
        """Text currently held back because it may begin a stop string."""
        return self._held

    def feed(self, text: str) -> tuple[str, bool]:
        """Take the next delta; return ``(text safe to emit now, stopped)``."""
        if self._stopped:
            return "", True
        if not self.stops:
            return text, False
        buf = self._held + text
        match = self._first_match(buf)
        if match is not None:
            start, stop = match
            self._held = ""
            self._stopped = True
            self._matched = stop
            return buf[:start], True
        hold = self._partial_suffix_len(buf)
        self._held = buf[len(buf) - hold :]
        return buf[: len(buf) - hold], False

    def flush(self) -> str:
        """End of generation without a stop: release whatever was held back."""
        held, self._held = self._held, ""
        return "" if self._stopped else held

    def _first_match(self, buf: str) -> tuple[int, str] | None:
        """Earliest-ending stop in ``buf`` (ties: earliest start), as ``(start, stop)``.

        ``buf`` is the held-back suffix plus the new delta; no stop can start
        before it, because the held suffix is the longest one that could still
        grow into a stop string.
        """
        best: tuple[int, int, str] | None = None  # (end, start, stop)
        held = len(self._held)
        for stop in self.stops:
            # A match must end inside the new delta: the held text alone holds none.
            start = buf.find(stop, max(0, held - len(stop) + 1))
            if start >= 0:
                cand = (start + len(stop), start, stop)
                if best is None or cand < best:
                    best = cand
        return None if best is None else (best[1], best[2])

    def _partial_suffix_len(self, buf: str) -> int:
        """Length of the longest suffix of ``buf`` that is a proper prefix of some stop."""
        limit = min(len(buf), self._max_hold)
        base = len(buf)
        for size in range(limit, 0, -1):
            if buf[base - size] not in self._first_chars:
                continue
            tail = buf[base - size :]
            for stop in self.stops:
                if len(stop) > size and stop.startswith(tail):
                    return size
        return 0
