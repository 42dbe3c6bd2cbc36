"""The load generator's own HTTP/1.1 client, against small scripted servers."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from chatd.bench.loadgen import RequestResult, _send_stream_plain
from chatd.bench.plainhttp import PlainConnection, PlainHTTPError

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
OK_REPLY = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


async def read_request(reader: asyncio.StreamReader) -> tuple[str, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    length = next(int(line.split(":")[1]) for line in lines
                  if line.lower().startswith("content-length"))
    return lines[0], await reader.readexactly(length)


def replying(*replies: bytes) -> Handler:
    """A connection handler that answers each request with the next reply, then closes."""
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for reply in replies:
            await read_request(reader)
            writer.write(reply)
            await writer.drain()
        writer.close()
    return handler


async def serve(handler: Handler) -> tuple[asyncio.Server, str]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"http://127.0.0.1:{port}/v1"


class Collect:
    """A sink that keeps what it is given, as the connection gives it."""

    def __init__(self) -> None:
        self.statuses: list[int] = []
        self.pieces: list[bytes] = []

    def start(self, status: int) -> None:
        self.statuses.append(status)

    def feed(self, data: bytes) -> None:
        self.pieces.append(data)

    @property
    def body(self) -> bytes:
        return b"".join(self.pieces)


async def body_of(conn: PlainConnection, path: str = "/x") -> tuple[int, bytes]:
    sink = Collect()
    status = await conn.post(path, b"{}", sink)
    assert sink.statuses == [status]
    return status, sink.body


def chunked(*pieces: bytes) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"


async def test_chunked_body_split_at_every_awkward_boundary() -> None:
    payload = chunked(b"data: a\n\n", b"data: bb\n\n", b"x" * 70000)
    seen = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                line, body = await read_request(reader)
            except asyncio.IncompleteReadError:
                break
            seen.append((line, body))
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            for i in range(0, len(payload), 3):  # size lines and CRLFs torn apart
                writer.write(payload[i:i + 3])
                if i < 60:
                    await writer.drain()
                    await asyncio.sleep(0)
        writer.close()

    server, url = await serve(handler)
    async with server:
        conn = PlainConnection(url, {"Authorization": "Bearer k"}, timeout=5)
        for _ in range(2):  # the same kept-alive connection twice
            sink = Collect()
            assert await conn.post("/chat/completions", b'{"a": 1}', sink) == 200
            assert sink.body == b"data: a\n\ndata: bb\n\n" + b"x" * 70000
        await conn.aclose()
    assert [s[0] for s in seen] == ["POST /v1/chat/completions HTTP/1.1"] * 2
    assert seen[0][1] == b'{"a": 1}'


async def test_sized_and_close_delimited_bodies_and_error_status() -> None:
    replies = [b"HTTP/1.1 400 Bad Request\r\nContent-Length: 5\r\n\r\nnope!",
               b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end"]

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for reply in replies:
            try:
                await read_request(reader)
            except asyncio.IncompleteReadError:
                break
            writer.write(reply)
            await writer.drain()
            if b"close" in reply:
                break
        writer.close()

    server, url = await serve(handler)
    async with server:
        conn = PlainConnection(url, {}, timeout=5)
        assert await body_of(conn) == (400, b"nope!")
        assert await body_of(conn) == (200, b"until the end")
        await conn.aclose()


async def test_reconnects_once_when_the_server_dropped_a_kept_alive_connection() -> None:
    connections = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        await read_request(reader)
        writer.write(OK_REPLY)
        await writer.drain()
        writer.close()  # keep-alive promised, then dropped

    server, url = await serve(handler)
    async with server:
        conn = PlainConnection(url, {}, timeout=5)
        assert await body_of(conn) == (200, b"ok")
        await asyncio.sleep(0.05)
        assert await body_of(conn) == (200, b"ok")
        await conn.aclose()
    assert connections == 2


async def test_a_stalled_stream_times_out() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
        await writer.drain()
        await asyncio.sleep(5)
        writer.close()

    server, url = await serve(handler)
    async with server:
        conn = PlainConnection(url, {}, timeout=0.3)
        sink = Collect()
        with pytest.raises(TimeoutError):
            await conn.post("/x", b"{}", sink)
        assert sink.statuses == [200] and sink.body == b"hello"
        await conn.aclose()


async def test_garbage_is_an_error_not_a_hang() -> None:
    server, url = await serve(replying(b"SSH-2.0-OpenSSH\r\n\r\n"))
    async with server:
        conn = PlainConnection(url, {}, timeout=5)
        with pytest.raises(PlainHTTPError):
            await conn.post("/x", b"{}", Collect())
        await conn.aclose()


def test_only_plain_http() -> None:
    with pytest.raises(ValueError):
        PlainConnection("https://example.com/v1", {}, timeout=1)


async def test_stream_result_from_a_scripted_sse_reply() -> None:
    """The load generator's stream path over this client: TTFT, tokens, usage, DONE."""
    events = [b'data: {"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}\n\n',
              b'data: {"choices":[{"index":0,"delta":{"content":"h\xc3'
              b'\xa9"}}]}\n\n',
              b'data: {"choices":[{"index":0,"delta":{"content":"y"},'
              b'"finish_reason":"length"}]}\n\n',
              b'data: {"choices":[],"usage":{"completion_tokens":2}}\n\n',
              b"data: [DONE]\n\n"]
    # Split inside the two-byte UTF-8 character: the decoder must hold the half back.
    raw = b"".join(events)
    cut = raw.index(b"\xc3") + 1

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        writer.write(chunked(raw[:cut], raw[cut:]))
        await writer.drain()
        writer.close()

    server, url = await serve(handler)
    async with server:
        conn = PlainConnection(url, {}, timeout=5)
        result = RequestResult(client=0, index=0, start=0.0)
        await _send_stream_plain(conn, "/chat/completions", {"stream": True}, result)
        await conn.aclose()
    assert result.error is None
    assert result.completion_tokens == 2 and result.usage_reported
    assert result.content_chunks == 2 and result.finish_reason == "length"


async def test_no_content_has_no_body_to_wait_for() -> None:
    server, url = await serve(replying(*[b"HTTP/1.1 204 No Content\r\n\r\n"] * 2))
    async with server:
        conn = PlainConnection(url, {}, timeout=5)
        assert await body_of(conn) == (204, b"")
        assert await body_of(conn) == (204, b"")  # and the connection is still usable
        await conn.aclose()


async def test_one_chunk_per_read_and_chunks_that_contain_crlf() -> None:
    """A stream's usual shape: each read is one whole chunk (size line, data, CRLF)."""
    pieces = [b"data: 1\r\n\r\n", b"\r\n0\r\n\r\n", b"x" * 300, b"last"]

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for piece in pieces:
            writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            await writer.drain()
            await asyncio.sleep(0.01)
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        await read_request(reader)  # the connection was kept for a second request
        writer.write(OK_REPLY)
        await writer.drain()
        writer.close()

    server, url = await serve(handler)
    async with server:
        conn = PlainConnection(url, {}, timeout=5)
        sink = Collect()
        assert await conn.post("/x", b"{}", sink) == 200
        assert sink.pieces == pieces
        assert await body_of(conn) == (200, b"ok")
        await conn.aclose()


async def test_a_stream_refused_with_an_error_status_reports_its_body() -> None:
    reply = (b'HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\n'
             b'Content-Length: 35\r\n\r\n{"error": {"message": "bad things"}}')
    server, url = await serve(replying(reply[:-1]))
    async with server:
        conn = PlainConnection(url, {}, timeout=5)
        result = RequestResult(client=0, index=0, start=0.0)
        await _send_stream_plain(conn, "/chat/completions", {"stream": True}, result)
        await conn.aclose()
    assert result.error == 'HTTP 400: {"error": {"message": "bad things"}'
    assert result.ttft is None and result.content_chunks == 0


async def test_a_request_cancelled_mid_body_spends_its_connection() -> None:
    connections = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        await read_request(reader)
        if connections == 1:
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
            await writer.drain()
            await asyncio.sleep(5)  # the rest never comes in time
        else:
            writer.write(OK_REPLY)
            await writer.drain()
        writer.close()

    server, url = await serve(handler)
    async with server:
        conn = PlainConnection(url, {}, timeout=5)
        sink = Collect()
        task = asyncio.create_task(conn.post("/x", b"{}", sink))
        while not sink.pieces:
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await body_of(conn) == (200, b"ok")  # not the rest of the first body
        await conn.aclose()
    assert connections == 2
