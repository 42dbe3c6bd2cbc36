"""Tool calls in the Hermes / Qwen format, parsed whole or streamed with identical results.

The model writes calls after optional plain text::

    Some text<tool_call>
    {"name": "get_weather", "arguments": {"city": "Paris"}}
    </tool_call>
    <tool_call>
    {"name": "get_time", "arguments": {}}
    </tool_call>

There is one grammar and one implementation: :class:`ToolCallStreamParser` is a
character-driven state machine, and :func:`parse_tool_calls` runs it over the
whole text. Every decision depends only on the characters seen so far, never on
where chunks begin or end, so for *any* text and *any* chunking the streamed
content equals the non-streamed content **exactly** (``None`` read as ``""``) and
the streamed deltas assemble to exactly the non-streamed calls, ids included
when the id factories agree. Streaming therefore cannot drift from the
non-streamed answer, and the non-streamed answer keeps the streaming rules below.

Grammar (tolerant of whitespace; "ws" is any ``str.isspace`` character)::

    block  := "<tool_call>" ws* object ws* "</tool_call>"
    object := "{" ws* member (ws* "," ws* member)? ws* "}"
    member := "name" ws* ":" ws* string | "arguments" ws* ":" ws* value

Keys come in either order, each at most once; ``name`` is required and must be a
non-empty JSON string (decoded, so escapes are honoured). ``arguments`` is
normally an object, but any JSON value is taken (the grammar follows the
tool's ``parameters`` schema, and ``{}`` allows anything). The value is
delimited structurally (string, escape and bracket depth tracking; a number or
literal ends at the first character that cannot continue it) and passed on
**verbatim and unvalidated**: with grammar-constrained generation it is valid
JSON, and as with OpenAI a client must validate arguments anyway. A call
without ``arguments`` gets ``"{}"``.

Content: the text outside complete call blocks, concatenated in order and then
stripped as a whole (``str.strip``). So leading text is stripped, whitespace
between or after calls vanishes, non-whitespace text between or after calls is
kept with the whitespace around it (``"A <call> B"`` gives ``"A  B"``), and an
output without calls is stripped too. Streaming gets the same string by
dropping leading whitespace and holding trailing whitespace until a
non-whitespace content character follows (released) or the output ends
(dropped). Besides that only a possible prefix of ``<tool_call>`` is held back.

Malformed input never raises. What happens depends on whether the call had
*started*, i.e. its name was complete and its first delta could be streamed:

* before the start (bad JSON, unknown or duplicate key, missing or empty name,
  output ending inside the block): the ``<tool_call>`` tag
  is plain content and the text after it is scanned again as ordinary output,
  so the whole block ends up as content (or a later valid block inside it is
  still found). While a block has not started, it is held back, not streamed;
* after the start nothing can be taken back: the call stands with the argument
  text streamed so far (possibly cut short, e.g. when ``max_tokens`` ends the
  output inside the arguments, like OpenAI's ``finish_reason="length"``), and
  the text from the offending character (or from the opening quote of a
  rejected key) on is scanned again as ordinary output;
* once the object is closed, the closing tag is optional: output may end
  without it or inside it (a truncated ``</tool_ca`` is dropped), and anything
  else (text, or the next ``<tool_call>``) is scanned as ordinary output.
"""

from __future__ import annotations

import json
import re
import secrets
import string
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum, auto

__all__ = [
    "CALL_CLOSE",
    "CALL_OPEN",
    "CALL_SEPARATOR",
    "ToolCall",
    "ToolCallDelta",
    "ToolCallStreamParser",
    "new_call_id",
    "parse_tool_calls",
]

CALL_OPEN = "<tool_call>\n"
CALL_CLOSE = "\n</tool_call>"
CALL_SEPARATOR = "\n"

_OPEN_TAG = CALL_OPEN.strip()
_CLOSE_TAG = CALL_CLOSE.strip()
_ID_ALPHABET = string.ascii_letters + string.digits
# Runs of characters that cannot change the structural state of the arguments.
_ARGS_PLAIN = re.compile(r'[^"{}\[\]]+')
_STRING_PLAIN = re.compile(r'[^"\\]+')
# A number, true, false or null: it ends at the first character outside this set.
_LITERAL_RUN = re.compile(r"[-+.0-9A-Za-z]+")
_KEYS = ("name", "arguments")


def new_call_id() -> str:
    """A fresh OpenAI-style call id: ``call_`` and 24 random letters or digits."""
    return "call_" + "".join(secrets.choice(_ID_ALPHABET) for _ in range(24))


@dataclass(frozen=True)
class ToolCall:
    """One complete call; ``arguments`` is the model's raw JSON text, not re-serialised."""

    id: str
    name: str
    arguments: str


@dataclass
class ToolCallDelta:
    """One streamed fragment of call ``index`` (OpenAI's ChatCompletionMessageToolCallChunk).

    The first fragment of a call carries ``id`` and ``name`` and empty
    ``arguments``; later ones carry only argument text, to be concatenated.
    """

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""


class _S(Enum):
    """Where the machine is in the output."""

    CONTENT = auto()  # plain text, looking for <tool_call>
    OPEN = auto()  # after <tool_call>, expecting "{"
    FIRST_KEY = auto()  # after "{", expecting a key (or "}")
    NEXT_KEY = auto()  # after ",", expecting a key
    KEY = auto()  # inside a key string
    COLON = auto()
    VALUE = auto()  # expecting the value of the current key
    NAME = auto()  # inside the name string
    ARGS = auto()  # inside the arguments value
    AFTER_VALUE = auto()  # expecting "," or "}"
    AFTER_OBJECT = auto()  # expecting </tool_call>


class ToolCallStreamParser:
    """Split streamed model text into content and tool call deltas, independent of chunking.

    Single use: :meth:`feed` each piece of generated text, then :meth:`finish`.
    """

    def __init__(self, *, new_id: Callable[[], str] = new_call_id) -> None:
        """``new_id`` makes call ids, called once per call in order (tests pass a counter)."""
        self._new_id = new_id
        self._state = _S.CONTENT
        self._held = ""  # CONTENT: a suffix that may be the start of <tool_call>
        self._content_started = False
        self._content_ws = ""  # trailing content whitespace, held until text follows
        self._out: list[str] = []
        self._deltas: list[ToolCallDelta] = []
        self._calls = 0
        self._finished = False
        self._tail = ""  # AFTER_OBJECT: whitespace and matched part of </tool_call>
        self._close_matched = 0
        self._new_call()

    @property
    def saw_calls(self) -> bool:
        """True once a call has started (its first delta was produced)."""
        return self._calls > 0

    def feed(self, text: str) -> tuple[str, list[ToolCallDelta]]:
        """Take the next piece of output; return ``(content released now, call deltas)``."""
        if self._finished:
            raise RuntimeError("ToolCallStreamParser.feed() after finish()")
        self._run(text)
        return self._take()

    def finish(self) -> tuple[str, list[ToolCallDelta]]:
        """End of output: settle an unfinished block and release held-back content."""
        if self._finished:
            return "", []
        while self._state is not _S.CONTENT:
            if self._state is _S.AFTER_OBJECT:  # closing tag missing or cut short
                self._tail, self._close_matched = "", 0
                self._state = _S.CONTENT
            elif self._committed:
                self._end_call()
                self._state = _S.CONTENT
            else:
                self._run(self._fail(""))
        held, self._held = self._held, ""
        self._content(held)
        self._finished = True
        return self._take()

    # ------------------------------------------------------------------ machinery

    def _new_call(self) -> None:
        """Forget the previous call attempt."""
        self._block: list[str] = []  # text consumed since <tool_call>, until the call starts
        self._committed = False
        self._index = -1
        self._seen: set[str] = set()
        self._key = ""  # the key whose value comes next
        self._raw: list[str] = []  # the key or name string being read, quotes included
        self._escape = False
        self._args: list[str] = []  # arguments read before the name, not yet streamable
        self._args_started = False
        self._depth = 0
        self._in_string = False
        self._literal = False

    def _take(self) -> tuple[str, list[ToolCallDelta]]:
        """Hand over what was produced since the last call."""
        out, deltas = "".join(self._out), self._deltas
        self._out, self._deltas = [], []
        return out, deltas

    def _run(self, s: str) -> None:
        """Consume ``s``; each scanner returns what it left for the next state."""
        while s:
            state = self._state
            if state is _S.CONTENT:
                s = self._scan_content(s)
            elif state is _S.ARGS:
                s = self._scan_args(s)
            elif state is _S.AFTER_OBJECT:
                s = self._scan_close(s)
            else:
                s = self._scan_object(s)

    def _content(self, text: str) -> None:
        """Emit content so that the total is the stripped concatenation, whatever the chunks."""
        if not text:
            return
        if not self._content_started:
            text = text.lstrip()
            if not text:
                return
            self._content_started = True
        body = text.rstrip()
        if body:
            self._out.append(self._content_ws + body)
            self._content_ws = text[len(body) :]
        else:
            self._content_ws += text

    def _scan_content(self, s: str) -> str:
        """Release plain text up to <tool_call>, holding back a possible partial tag."""
        buf, self._held = self._held + s, ""
        i = buf.find(_OPEN_TAG)
        if i >= 0:
            self._content(buf[:i])
            self._new_call()
            self._state = _S.OPEN
            return buf[i + len(_OPEN_TAG) :]
        # The tag has a single "<", so only the last "<" can start a partial tag.
        j = buf.rfind("<", max(0, len(buf) - len(_OPEN_TAG) + 1))
        if j >= 0 and _OPEN_TAG.startswith(buf[j:]):
            buf, self._held = buf[:j], buf[j:]
        self._content(buf)
        return ""

    def _scan_args(self, s: str) -> str:
        """Pass arguments text through as it arrives, tracking strings and depth to find its end."""
        if self._literal:
            m = _LITERAL_RUN.match(s)
            i = m.end() if m else 0
            return self._args_consumed(s, i, done=i < len(s))
        i, n = 0, len(s)
        depth, in_string, escape = self._depth, self._in_string, self._escape
        done = False
        while i < n:
            if in_string:
                if escape:
                    escape = False
                    i += 1
                    continue
                m = _STRING_PLAIN.match(s, i)
                if m:
                    i = m.end()
                    continue
                c = s[i]
                i += 1
                if c == "\\":
                    escape = True
                else:  # the closing quote
                    in_string = False
                    if depth == 0:  # the value was a string
                        done = True
                        break
            else:
                m = _ARGS_PLAIN.match(s, i)
                if m:
                    i = m.end()
                    continue
                c = s[i]
                i += 1
                if c == '"':
                    in_string = True
                elif c in "{[":
                    depth += 1
                else:
                    depth -= 1
                    if depth == 0:
                        done = True
                        break
        self._depth, self._in_string, self._escape = depth, in_string, escape
        return self._args_consumed(s, i, done=done)

    def _args_consumed(self, s: str, i: int, *, done: bool) -> str:
        """``s[:i]`` belongs to the arguments; ``done`` when the value ended there."""
        self._arg_text(s[:i])
        if not self._committed:
            self._block.append(s[:i])
        if done:
            self._literal = False
            self._state = _S.AFTER_VALUE
        return s[i:]

    def _scan_object(self, s: str) -> str:
        """Read the object's structure one character at a time, outside the arguments value."""
        for i, c in enumerate(s):
            if self._state in (_S.CONTENT, _S.ARGS, _S.AFTER_OBJECT):
                return s[i:]
            if not self._step(c):
                return self._fail(s[i:])
            if not self._committed:
                self._block.append(c)
        return ""

    def _step(self, c: str) -> bool:
        """Advance by one character; False when it cannot continue the grammar."""
        state = self._state
        if state is _S.KEY or state is _S.NAME:
            self._raw.append(c)
            if self._escape:
                self._escape = False
                return True
            if c == "\\":
                self._escape = True
                return True
            if c != '"':
                return True
            try:
                value = json.loads("".join(self._raw))
            except ValueError:
                return False
            if state is _S.KEY:
                if value not in _KEYS or value in self._seen:
                    return False
                self._seen.add(value)
                self._key = value
                self._state = _S.COLON
                return True
            if not value:
                return False
            self._start_call(value)
            self._state = _S.AFTER_VALUE
            return True
        if c.isspace():
            return True
        if state is _S.OPEN:
            if c != "{":
                return False
            self._state = _S.FIRST_KEY
        elif state is _S.FIRST_KEY or state is _S.NEXT_KEY:
            if c == "}" and state is _S.FIRST_KEY:
                return self._end_object()
            if c != '"':
                return False
            self._raw, self._escape = [c], False
            self._state = _S.KEY
        elif state is _S.COLON:
            if c != ":":
                return False
            self._state = _S.VALUE
        elif state is _S.VALUE:
            if self._key == "name":
                if c != '"':
                    return False
                self._raw, self._escape = [c], False
                self._state = _S.NAME
            else:
                if c in "{[":
                    self._depth, self._in_string = 1, False
                elif c == '"':
                    self._depth, self._in_string = 0, True
                elif _LITERAL_RUN.match(c):
                    self._literal = True
                else:
                    return False
                self._args_started = True
                self._escape = False
                self._arg_text(c)
                self._state = _S.ARGS
        elif state is _S.AFTER_VALUE:
            if c == ",":
                self._state = _S.NEXT_KEY
            elif c == "}":
                return self._end_object()
            else:
                return False
        return True

    def _scan_close(self, s: str) -> str:
        """Match optional whitespace and </tool_call>; anything else is ordinary output again."""
        for i, c in enumerate(s):
            if self._close_matched == 0 and c.isspace():
                self._tail += c
                continue
            if c != _CLOSE_TAG[self._close_matched]:
                rest = self._tail + s[i:]
                self._tail, self._close_matched = "", 0
                self._state = _S.CONTENT
                return rest
            self._tail += c
            self._close_matched += 1
            if self._close_matched == len(_CLOSE_TAG):
                self._tail, self._close_matched = "", 0
                self._state = _S.CONTENT
                return s[i + 1 :]
        return ""

    def _start_call(self, name: str) -> None:
        """The name is complete: emit the call's first delta, then any arguments read before it."""
        self._committed = True
        self._block = []
        self._index = self._calls
        self._calls += 1
        self._deltas.append(ToolCallDelta(index=self._index, id=self._new_id(), name=name))
        if self._args:
            args, self._args = "".join(self._args), []
            self._arg_text(args)

    def _arg_text(self, text: str) -> None:
        """Stream arguments text once the call has started, else keep it for later."""
        if not text:
            return
        if not self._committed:
            self._args.append(text)
            return
        last = self._deltas[-1] if self._deltas else None
        if last is not None and last.index == self._index and last.id is None:
            last.arguments += text
        else:
            self._deltas.append(ToolCallDelta(index=self._index, arguments=text))

    def _end_object(self) -> bool:
        """The object closed: a started call is complete, an unstarted one is malformed."""
        if not self._committed:
            return False
        self._end_call()
        self._state = _S.AFTER_OBJECT
        return True

    def _end_call(self) -> None:
        """Finish the started call (``{}`` if it never had arguments) and reset."""
        if not self._args_started:
            self._arg_text("{}")
        self._new_call()

    def _fail(self, rest: str) -> str:
        """Give up on the current block; return the text to scan again as ordinary output."""
        if self._committed and self._state is _S.KEY:  # rescan a rejected key whole
            rest = "".join(self._raw[:-1]) + rest
        self._state = _S.CONTENT
        if self._committed:
            self._end_call()
            return rest
        block = "".join(self._block)
        self._new_call()
        self._content(_OPEN_TAG)
        return block + rest


def parse_tool_calls(
    text: str, *, new_id: Callable[[], str] = new_call_id
) -> tuple[str | None, list[ToolCall]]:
    """Whole output to ``(content, calls)``; content is ``None`` when empty and calls exist.

    Runs :class:`ToolCallStreamParser` over the text, so both paths share one grammar.
    """
    parser = ToolCallStreamParser(new_id=new_id)
    content, deltas = parser.feed(text)
    more, last = parser.finish()
    content += more
    calls: list[list[str]] = []
    for d in (*deltas, *last):
        if d.id is not None:
            calls.append([d.id, d.name or "", d.arguments])
        else:
            calls[d.index][2] += d.arguments
    result = [ToolCall(id=i, name=n, arguments=a) for i, n, a in calls]
    return (content or None) if result else content, result
