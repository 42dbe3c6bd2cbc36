"""Tool call parsing: streamed and whole-text results agree for any output and any chunking."""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Callable, Iterable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chatd.chat.toolcalls import (
    CALL_CLOSE,
    CALL_OPEN,
    CALL_SEPARATOR,
    ToolCall,
    ToolCallDelta,
    ToolCallStreamParser,
    new_call_id,
    parse_tool_calls,
)

Calls = list[tuple[str, str, str]]  # (id, name, arguments)


def ids() -> Callable[[], str]:
    """A deterministic id factory, fresh per parser so both paths number calls alike."""
    counter = itertools.count()
    return lambda: f"call_{next(counter):024d}"


def assemble(deltas: Iterable[ToolCallDelta]) -> Calls:
    """Rebuild calls from deltas as a client would, checking OpenAI's delta shape on the way."""
    calls: list[list[str]] = []
    for d in deltas:
        if d.id is not None:
            # The first delta of a call: next index, id and name, no arguments yet.
            assert d.index == len(calls)
            assert d.name
            assert d.arguments == ""
            calls.append([d.id, d.name, ""])
        else:
            # Later deltas continue the latest call with non-empty argument text only.
            assert d.name is None
            assert d.index == len(calls) - 1
            assert d.arguments
            calls[d.index][2] += d.arguments
    return [(i, n, a) for i, n, a in calls]


def stream(chunks: Iterable[str]) -> tuple[str, Calls]:
    """Feed chunks then finish; return the concatenated content and the assembled calls."""
    parser = ToolCallStreamParser(new_id=ids())
    content: list[str] = []
    deltas: list[ToolCallDelta] = []
    for chunk in chunks:
        text, ds = parser.feed(chunk)
        content.append(text)
        deltas.extend(ds)
    text, ds = parser.finish()
    content.append(text)
    deltas.extend(ds)
    calls = assemble(deltas)
    assert parser.saw_calls == bool(calls)
    return "".join(content), calls


def whole(text: str) -> tuple[str | None, Calls]:
    """parse_tool_calls with the deterministic ids, calls as tuples."""
    content, calls = parse_tool_calls(text, new_id=ids())
    assert all(isinstance(c, ToolCall) for c in calls)
    return content, [(c.id, c.name, c.arguments) for c in calls]


def split(text: str, cuts: Iterable[int]) -> list[str]:
    """Cut ``text`` at the given offsets (any order, duplicates allowed)."""
    points = [0, *sorted(set(cuts)), len(text)]
    return [text[a:b] for a, b in itertools.pairwise(points)]


def assert_agree(text: str, chunks: list[str]) -> None:
    """The property: streamed content and calls equal the whole-text parse, exactly."""
    assert "".join(chunks) == text
    content, calls = whole(text)
    streamed_content, streamed_calls = stream(chunks)
    assert streamed_content == (content or "")
    assert streamed_calls == calls
    if calls:
        assert content is None or content.strip() == content != ""
    else:
        assert content is not None


def block(name: str, arguments: str) -> str:
    """One call in the exact format the server's grammar produces."""
    obj = json.dumps({"name": name, "arguments": json.loads(arguments)}, ensure_ascii=False)
    return CALL_OPEN + obj + CALL_CLOSE


def cid(n: int) -> str:
    return f"call_{n:024d}"


# --------------------------------------------------------------------------- unit tests


def test_constants() -> None:
    assert (CALL_OPEN, CALL_CLOSE, CALL_SEPARATOR) == ("<tool_call>\n", "\n</tool_call>", "\n")


def test_single_call() -> None:
    text = block("get_weather", '{"city": "Paris"}')
    assert whole(text) == (None, [(cid(0), "get_weather", '{"city": "Paris"}')])


def test_parallel_calls() -> None:
    text = block("get_weather", '{"city": "Paris"}') + CALL_SEPARATOR + block("get_time", "{}")
    assert whole(text) == (
        None,
        [(cid(0), "get_weather", '{"city": "Paris"}'), (cid(1), "get_time", "{}")],
    )


def test_content_then_call() -> None:
    text = "Let me check.\n" + block("f", '{"a": [1, 2]}')
    assert whole(text) == ("Let me check.", [(cid(0), "f", '{"a": [1, 2]}')])


@pytest.mark.parametrize(
    ("text", "content"),
    [
        ("Hello, world!", "Hello, world!"),
        ("<", "<"),
        ("a <tool_cal b", "a <tool_cal b"),
        ("ends with <tool_call", "ends with <tool_call"),
        ("</tool_call> stray close", "</tool_call> stray close"),
        ('{"name": "f", "arguments": {}}', '{"name": "f", "arguments": {}}'),
        ("  padded\n\n", "padded"),
        ("", ""),
        ("\n \t", ""),
    ],
)
def test_no_calls(text: str, content: str) -> None:
    assert whole(text) == (content, [])
    assert_agree(text, list(text))


def test_arguments_empty_object_and_missing() -> None:
    text = '<tool_call>{"name": "f", "arguments": {}}</tool_call>'
    assert whole(text) == (None, [(cid(0), "f", "{}")])
    # No "arguments" key at all: the call gets "{}", streamed when the object closes.
    assert whole('<tool_call>{"name": "f"}</tool_call>') == (None, [(cid(0), "f", "{}")])


def test_arguments_are_raw_text_not_reserialised() -> None:
    raw = '{ "b" :1.50,"a":"\\u00e9\\"}{" ,\n "n": [ ] }'
    text = f'<tool_call>{{"name":"f","arguments":{raw}}}</tool_call>'
    assert whole(text) == (None, [(cid(0), "f", raw)])


def test_whitespace_and_key_order_tolerated() -> None:
    text = (
        'Hi <tool_call>  \n\t{\n  "arguments" :\n  {"x": 1} ,\n  "name" : "g"\n}\n\n'
        '</tool_call> \n\n <tool_call>{"name":"h","arguments":{}}</tool_call>\n'
    )
    assert whole(text) == ("Hi", [(cid(0), "g", '{"x": 1}'), (cid(1), "h", "{}")])


@pytest.mark.parametrize("raw", ['"a \\"q\\" }"', "[1, {}]", "-1.5e+3", "true", "null", "0"])
@pytest.mark.parametrize("args_first", [False, True])
def test_non_object_arguments_pass_through(raw: str, args_first: bool) -> None:
    members = ['"name":"f"', f'"arguments":{raw}']
    if args_first:
        members.reverse()
    text = "<tool_call>{" + ",".join(members) + "}</tool_call>"
    assert whole(text) == (None, [(cid(0), "f", raw)])
    assert_agree(text, list(text))


def test_escaped_name_is_decoded() -> None:
    text = '<tool_call>{"name": "get\\u005fweather", "arguments": {}}</tool_call>'
    assert whole(text) == (None, [(cid(0), "get_weather", "{}")])


def test_text_between_and_after_calls_keeps_its_inner_whitespace() -> None:
    text = "A " + block("f", "{}") + " B " + block("g", "{}") + "\n C\n"
    # Content is everything outside the blocks, stripped as a whole.
    assert whole(text) == ("A  B \n C", [(cid(0), "f", "{}"), (cid(1), "g", "{}")])
    only_ws_between = block("f", "{}") + "\n\n  " + block("g", "{}") + "\n"
    assert whole(only_ws_between)[0] is None


@pytest.mark.parametrize(
    "text",
    [
        "<tool_call>\nnot json\n</tool_call>",
        "<tool_call>\n{}\n</tool_call>",
        '<tool_call>\n{"arguments": {"a": 1}}\n</tool_call>',
        '<tool_call>\n{"name": ""}\n</tool_call>',
        '<tool_call>\n{"name": 3, "arguments": {}}\n</tool_call>',
        '<tool_call>\n{"name": "f\nx", "arguments": {}}\n</tool_call>',
        '<tool_call>\n{"nome": "f", "arguments": {}}\n</tool_call>',
        '<tool_call>\n{"arguments": @, "name": "f"}\n</tool_call>',
        '<tool_call>\n{"arguments": {}, "arguments": {}, "name": "f"}\n</tool_call>',
        '<tool_call>\n{"arguments": {"a": "unterminated',
        '<tool_call>\n{"name": "f',
        "<tool_call>",
    ],
)
def test_malformed_block_before_the_name_is_plain_content(text: str) -> None:
    assert whole(text) == (text.strip(), [])
    assert_agree(text, list(text))


def test_valid_block_inside_a_malformed_one_is_still_found() -> None:
    text = 'x <tool_call> oops <tool_call>{"name": "f", "arguments": {}}</tool_call> y'
    assert whole(text) == ("x <tool_call> oops  y", [(cid(0), "f", "{}")])


def test_truncated_inside_arguments_keeps_the_started_call() -> None:
    text = '<tool_call>\n{"name": "f", "arguments": {"city": "Par'
    assert whole(text) == (None, [(cid(0), "f", '{"city": "Par')])
    # Cut right after the name: nothing of the arguments arrived, so "{}".
    assert whole('<tool_call>{"name": "f", "argu') == (None, [(cid(0), "f", "{}")])


def test_garbage_after_the_call_started_becomes_content() -> None:
    text = '<tool_call>{"name": "f", "arguments": {"a": 1}, "extra": 2}</tool_call>'
    assert whole(text) == ('"extra": 2}</tool_call>', [(cid(0), "f", '{"a": 1}')])


def test_closing_tag_is_optional_after_a_complete_object() -> None:
    one = '<tool_call>{"name": "f", "arguments": {}}'
    assert whole(one + "\n") == (None, [(cid(0), "f", "{}")])
    assert whole(one + "\n</tool_ca") == (None, [(cid(0), "f", "{}")])
    assert whole(one + "\nDone.") == ("Done.", [(cid(0), "f", "{}")])
    assert whole(one + "\n</tool_cal!") == ("</tool_cal!", [(cid(0), "f", "{}")])
    two = one + '\n<tool_call>{"name": "g", "arguments": {"b": 2}}</tool_call>'
    assert whole(two) == (None, [(cid(0), "f", "{}"), (cid(1), "g", '{"b": 2}')])


def test_default_ids() -> None:
    _, calls = parse_tool_calls(block("f", "{}") + block("g", "{}"))
    assert all(re.fullmatch(r"call_[A-Za-z0-9]{24}", c.id) for c in calls)
    assert calls[0].id != calls[1].id
    assert re.fullmatch(r"call_[A-Za-z0-9]{24}", new_call_id())


def test_content_streams_promptly_holding_only_a_partial_tag_and_trailing_space() -> None:
    p = ToolCallStreamParser(new_id=ids())
    assert p.feed("  Hello") == ("Hello", [])
    assert p.feed(" wor") == (" wor", [])
    assert p.feed("ld <tool") == ("ld", [])  # " " and "<tool" held
    assert p.feed("box") == (" <toolbox", [])
    assert p.feed(" <") == ("", [])
    assert p.feed("tool_call>\n") == ("", [])  # the held " " is dropped before a call
    assert not p.saw_calls
    assert p.feed('{"name": "f"') == ("", [ToolCallDelta(0, cid(0), "f")])
    assert p.saw_calls
    assert p.feed(', "arguments": {"a"') == ("", [ToolCallDelta(0, arguments='{"a"')])
    assert p.feed(": 1}}\n</tool_call>\n") == ("", [ToolCallDelta(0, arguments=": 1}")])
    assert p.finish() == ("", [])
    assert p.finish() == ("", [])
    with pytest.raises(RuntimeError):
        p.feed("x")


def test_arguments_first_are_buffered_until_the_name() -> None:
    p = ToolCallStreamParser(new_id=ids())
    assert p.feed('<tool_call>{"arguments": {"a": [1, "}"]}') == ("", [])
    content, deltas = p.feed(', "name": "f"}</tool_call>')
    assert content == ""
    assert deltas == [ToolCallDelta(0, cid(0), "f"), ToolCallDelta(0, arguments='{"a": [1, "}"]}')]


def test_arguments_stream_character_by_character() -> None:
    raw = '{"q": "a \\"b\\" {c}", "n": [1, {"d": null}], "e": "\\\\"}'
    text = f'Hi<tool_call>\n{{"name": "search", "arguments": {raw}}}\n</tool_call>'
    start = text.index(raw)
    p = ToolCallStreamParser(new_id=ids())
    deltas: list[ToolCallDelta] = []
    for pos, ch in enumerate(text, 1):
        deltas.extend(p.feed(ch)[1])
        name_done = pos >= text.index('"search"') + len('"search"')
        assert bool(deltas) == name_done
        # Every argument character is released as soon as it arrives.
        streamed = "".join(d.arguments for d in deltas)
        assert streamed == raw[: max(0, min(len(raw), pos - start))]
    assert p.finish() == ("", [])


# ------------------------------------------------------------------ chunking invariance

FIXED = [
    "Sure.\n" + block("get_weather", '{"city": "Paris"}') + CALL_SEPARATOR + block("t", "{}"),
    '<tool_call>{"arguments":{"s":"}{\\"\\\\","n":[{}]},"name":"x-1"}</tool_call>',
    "a <tool <tool_call> bad </tool_call> <tool_call>\n"
    '{"name": "f", "arguments": {"k": "<tool_call>"}}\n</tool_call>tail',
    '<tool_call>{"name": "f", "arguments": {"a": 1}} junk <tool_call>{"name": "g"}',
    'no calls here, only < and <tool_cal and {"quotes"} \u00e9\U0001f600 ',
]


@pytest.mark.parametrize("text", FIXED)
def test_every_split_position(text: str) -> None:
    assert_agree(text, [text])
    assert_agree(text, list(text))
    for i in range(len(text) + 1):
        assert_agree(text, split(text, [i]))


def test_every_pair_of_split_positions() -> None:
    text = 'x <tool_call>{"arguments": {"a": "}"}, "name": "f"}</tool_call> y'
    for i, j in itertools.combinations(range(len(text) + 1), 2):
        assert_agree(text, split(text, [i, j]))


# ----------------------------------------------------------------------- generators

WS = st.sampled_from(["", " ", "\n", "\n\n", "\t", " \n  ", "\r\n"])
TAG_WS = st.one_of(WS, st.just("\u2003\n"))  # any str.isspace() is fine around the object
FRAGMENTS = [
    "<", "<tool", "<tool_call", "tool_call>", "</tool_call>", "</", ">", "{", "}", "[", '"',
    "\\", '\\"', ":", ",", "\n", " ", "\t", "\u00e9", "\u65e5\u672c", "\U0001f600", "Hello",
    '"name"', '"arguments"', '{"name": "x", "arguments": {}}',
]  # fmt: skip
CONTENT = (
    st.lists(st.one_of(st.sampled_from(FRAGMENTS), st.text(max_size=3)), max_size=8)
    .map("".join)
    .filter(lambda s: "<tool_call>" not in s)
)
JSON_TEXT = st.text(
    st.one_of(st.sampled_from('"\\{}[]<>/:,\n\t\u00e9\U0001f600'), st.characters(codec="utf-8")),
    max_size=10,
)
JSON_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**20), 10**20),
    st.floats(allow_nan=False, allow_infinity=False),
    JSON_TEXT,
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(JSON_TEXT, inner, max_size=4),
    max_leaves=12,
)
NAMES = st.from_regex(r"[a-zA-Z0-9_-]{1,20}", fullmatch=True)


@st.composite
def call_blocks(draw: st.DrawFn) -> tuple[str, str, str]:
    """A well-formed block in a random layout; returns (block text, name, raw arguments)."""
    name = draw(NAMES)
    args = draw(st.dictionaries(JSON_TEXT, JSON_VALUES, max_size=4) | JSON_VALUES)
    raw = json.dumps(
        args,
        indent=draw(st.sampled_from([None, 0, 2, "\t"])),
        ensure_ascii=draw(st.booleans()),
        separators=draw(st.sampled_from([None, (",", ":"), (", ", ": ")])),
    )
    if draw(st.booleans()):  # exactly what the server's grammar emits
        obj = json.dumps({"name": name, "arguments": args}, ensure_ascii=False)
        raw = json.dumps(args, ensure_ascii=False)
        return CALL_OPEN + obj + CALL_CLOSE, name, raw

    def member(key: str, value: str) -> str:
        return json.dumps(key) + draw(WS) + ":" + draw(WS) + value

    members = [member("name", json.dumps(name)), member("arguments", raw)]
    if draw(st.booleans()):
        members.reverse()
    obj = "{" + draw(WS) + members[0] + draw(WS) + "," + draw(WS) + members[1] + draw(WS) + "}"
    return "<tool_call>" + draw(TAG_WS) + obj + draw(TAG_WS) + "</tool_call>", name, raw


@st.composite
def outputs(draw: st.DrawFn) -> tuple[str, str | None, list[tuple[str, str]]]:
    """A model output and its expected (content, [(name, arguments)])."""
    segments = [draw(st.one_of(WS, CONTENT))]
    parts = [segments[0]]
    calls: list[tuple[str, str]] = []
    for _ in range(draw(st.integers(0, 4))):
        text, name, raw = draw(call_blocks())
        after = draw(st.one_of(WS, st.just(CALL_SEPARATOR), CONTENT))
        parts += [text, after]
        segments.append(after)
        calls.append((name, raw))
    if calls and not parts[-1].strip() and draw(st.booleans()):
        # Generation may end before the closing tag (e.g. a stop token right after "}").
        parts[-2] = parts[-2][: parts[-2].rindex("</tool_call>")]
    content = "".join(segments).strip()
    return "".join(parts), (content or None) if calls else content, calls


@st.composite
def chunkings(draw: st.DrawFn, text: str) -> list[str]:
    """Random cut points, sometimes one character per chunk."""
    if draw(st.integers(0, 4)) == 0:
        return list(text)
    return split(text, draw(st.lists(st.integers(0, len(text)), max_size=24)))


# Pieces of calls, so random text often holds valid, broken and truncated blocks.
CALL_PIECES = [
    "<tool_call>", "<tool_call>\n", '{"name": "f"', '{"name":"\\u0066"', '"name": "g"',
    '{"arguments": {"a": "}\\""}', '"arguments": ', "{}", '{"x": [1, {"y": "{"}]}', ", ",
    "}", "}\n", "\n</tool_call>", "</tool_call>\n",
]  # fmt: skip
GARBAGE = st.lists(
    st.one_of(st.sampled_from(CALL_PIECES), st.sampled_from(FRAGMENTS), st.text(max_size=2)),
    max_size=30,
).map("".join)


@st.composite
def damaged_outputs(draw: st.DrawFn) -> str:
    """A well-formed output with a few random cuts and insertions: broken, truncated blocks."""
    text = draw(outputs())[0]
    for _ in range(draw(st.integers(1, 3))):
        i = draw(st.integers(0, len(text)))
        j = draw(st.integers(i, min(len(text), i + 6)))
        text = text[:i] + draw(st.sampled_from(["", *CALL_PIECES, *FRAGMENTS])) + text[j:]
    if draw(st.booleans()):
        text = text[: draw(st.integers(0, len(text)))]
    return text


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=outputs(), data=st.data())
def test_generated_outputs_parse_to_their_calls_under_any_chunking(
    case: tuple[str, str | None, list[tuple[str, str]]], data: st.DataObject
) -> None:
    text, content, calls = case
    expected = [(cid(k), name, raw) for k, (name, raw) in enumerate(calls)]
    assert whole(text) == (content, expected)
    for _, _, raw in expected:
        json.loads(raw)
    assert_agree(text, data.draw(chunkings(text)))
    assert_agree(text, list(text))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=st.one_of(GARBAGE, damaged_outputs()), data=st.data())
def test_any_text_never_raises_and_agrees_under_any_chunking(
    text: str, data: st.DataObject
) -> None:
    assert_agree(text, data.draw(chunkings(text)))
    assert_agree(text, list(text))
