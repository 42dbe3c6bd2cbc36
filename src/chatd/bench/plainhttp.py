"""The least HTTP/1.1 a streaming benchmark needs, parsed inside an asyncio Protocol.

httpx spends ~0.4 ms of CPU on each streamed chunk (httpcore, h11, an anyio cancel
scope per read). At one stream of ~100 tokens/s on a 2-core machine the load
generator shares with the server it measures, that is 4% of the cores taken from
the server. This client parses the response where the bytes arrive, in the
protocol's `data_received`, and hands each piece of the body to a sink there and
then: no task wakes, no future and no async generator per network read; the
caller's task wakes once, when the response has ended.

It speaks plain http:// only: POST with a JSON body over one kept-alive
connection; no TLS, proxies, redirects or compression (the load generator falls
back to httpx for anything else).
"""

from __future__ import annotations

import asyncio
from typing import Protocol, cast
from urllib.parse import urlsplit

_MAX_HEAD = 65536  # a response head larger than this is not a server we measure


class PlainHTTPError(OSError):
    """The server closed the connection or answered something that is not HTTP/1.1."""


class BodySink(Protocol):
    """Where a response goes as it arrives; called from the event loop's callback."""

    def start(self, status: int) -> None:
        """The status line and headers are read; the body follows."""

    def feed(self, data: bytes) -> None:
        """The next piece of the body (any size: not aligned with chunks or events)."""


class PlainConnection:
    """One kept-alive HTTP/1.1 connection to `base_url`'s host (a simulated user).

    `timeout` bounds the wait for each network read, like httpx's read timeout: a
    stream that keeps sending may run as long as it needs.
    """

    def __init__(self, base_url: str, headers: dict[str, str], timeout: float) -> None:
        parts = urlsplit(base_url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"PlainConnection speaks http:// only, not {base_url!r}")
        self.host = parts.hostname
        self.port = parts.port or 80
        self.prefix = parts.path.rstrip("/")
        authority = f"{self.host}:{self.port}" if parts.port else self.host
        self._head = "".join(f"{k}: {v}\r\n" for k, v in
                             {"Host": authority, "Accept": "text/event-stream",
                              "Content-Type": "application/json", **headers}.items())
        self.timeout = timeout
        self._wire: _ResponseParser | None = None

    async def post(self, path: str, body: bytes, sink: BodySink) -> int:
        """Send the request, stream the response body into `sink`; return the status
        once the body has ended. Raises PlainHTTPError, OSError or TimeoutError."""
        request = (f"POST {self.prefix}{path} HTTP/1.1\r\n{self._head}"
                   f"Content-Length: {len(body)}\r\n\r\n").encode() + body
        wire = self._wire
        reused = wire is not None and not wire.closed
        if not reused:
            wire = await self._connect()
        assert wire is not None
        try:
            return await wire.exchange(request, sink)
        except (PlainHTTPError, ConnectionError):
            # A kept-alive connection the server had already closed (nothing of the
            # response arrived): once more, afresh. Anything else is the server's answer.
            if not reused or wire.answered:
                self.abort()
                raise
        except BaseException:  # timed out or cancelled: the rest of the body would follow
            self.abort()
            raise
        self.abort()
        wire = await self._connect()
        try:
            return await wire.exchange(request, sink)
        except BaseException:
            self.abort()
            raise

    def abort(self) -> None:
        """Drop the connection at once (a body not read to its end spends it)."""
        wire, self._wire = self._wire, None
        if wire is not None:
            wire.close(abort=True)

    async def aclose(self) -> None:
        wire, self._wire = self._wire, None
        if wire is not None:
            wire.close(abort=False)

    async def _connect(self) -> _ResponseParser:
        self.abort()
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(min(self.timeout, 10.0)):
            _, wire = await loop.create_connection(
                lambda: _ResponseParser(loop, self.timeout), self.host, self.port)
        self._wire = wire
        return wire


# The parser's states, in the order one response passes through them.
_IDLE, _HEAD, _CHUNK_SIZE, _CHUNK_DATA, _CHUNK_END, _TRAILER, _SIZED, _UNTIL_CLOSE = range(8)


class _ResponseParser(asyncio.Protocol):
    """HTTP/1.1 responses parsed as their bytes arrive, one request at a time."""

    def __init__(self, loop: asyncio.AbstractEventLoop, timeout: float) -> None:
        self._loop = loop
        self._timeout = timeout
        self._transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._state = _IDLE
        self._left = 0  # bytes of the current chunk, or of a sized body, still to come
        self._keep = True
        self._sink: BodySink | None = None
        self._status = 0
        self._done: asyncio.Future[int] | None = None
        self._watchdog: asyncio.TimerHandle | None = None
        self._last_read = 0.0
        self.closed = False
        self.answered = False  # some of the current response has arrived

    # ---- the caller's side ---------------------------------------------------------

    async def exchange(self, request: bytes, sink: BodySink) -> int:
        if self.closed or self._transport is None:
            raise PlainHTTPError("the server closed the connection")
        self._sink, self._state, self.answered = sink, _HEAD, False
        self._buf.clear()
        self._done = done = self._loop.create_future()
        self._last_read = self._loop.time()
        self._watchdog = self._loop.call_later(self._timeout, self._check_stalled)
        self._transport.write(request)
        try:
            return await done
        finally:
            self._sink = None
            if self._watchdog is not None:
                self._watchdog.cancel()
                self._watchdog = None

    def close(self, abort: bool) -> None:
        self.closed = True
        if self._transport is not None:
            if abort:
                self._transport.abort()
            else:
                self._transport.close()
        self._fail(PlainHTTPError("the connection was closed"))

    # ---- asyncio.Protocol ------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        if self._done is None or self._done.done():
            return  # nothing asked for: a server talking out of turn is ignored
        self._last_read = self._loop.time()
        self.answered = True
        try:
            self._parse(data)
        except Exception as exc:  # a malformed response fails its request, not the loop
            self._fail(exc)
            self.close(abort=True)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._state == _UNTIL_CLOSE:
            self._finish()
        else:
            self._fail(PlainHTTPError("the server closed the connection"
                                      + ("" if self._state == _HEAD else " inside a body")))

    # ---- parsing -------------------------------------------------------------------------

    def _parse(self, data: bytes) -> None:
        state = self._state
        if state == _CHUNK_SIZE and not self._buf:
            # A stream's common case: one read brings exactly one whole chunk.
            eol = data.find(b"\r\n")
            try:
                size = int(data[:eol], 16) if eol > 0 else 0
            except ValueError:
                size = 0  # an extension or garbage: the general path below decides
            if size and len(data) == eol + size + 4 and data.endswith(b"\r\n"):
                self._feed(data[eol + 2:-2])
                return
        if state == _SIZED:
            self._sized(data)
            return
        if state == _UNTIL_CLOSE:
            self._feed(data)
            return
        buf = self._buf
        buf += data
        while buf:
            state = self._state
            if state == _HEAD:
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    self._check_status_line(buf)
                    if len(buf) > _MAX_HEAD:
                        raise PlainHTTPError("the response head is too large")
                    return
                head = bytes(buf[:end])
                del buf[:end + 4]
                self._start(head)
                if self._state in (_SIZED, _UNTIL_CLOSE) and buf:
                    rest = bytes(buf)
                    buf.clear()
                    self._parse(rest)
                    return
            elif state == _CHUNK_SIZE:
                eol = buf.find(b"\r\n")
                if eol < 0:
                    if len(buf) > 1024:
                        raise PlainHTTPError(f"bad chunk size line {bytes(buf[:40])!r}")
                    return
                try:
                    size = int(bytes(buf[:eol]).split(b";", 1)[0].strip(), 16)
                except ValueError:
                    raise PlainHTTPError(f"bad chunk size line {bytes(buf[:40])!r}") from None
                del buf[:eol + 2]
                self._left = size
                self._state = _CHUNK_DATA if size else _TRAILER
            elif state == _CHUNK_DATA:
                n = min(self._left, len(buf))
                self._feed(bytes(buf[:n]))
                del buf[:n]
                self._left -= n
                if not self._left:
                    self._state = _CHUNK_END
            elif state == _CHUNK_END:
                if len(buf) < 2:
                    return
                if buf[:2] != b"\r\n":
                    raise PlainHTTPError("a chunk does not end in CRLF")
                del buf[:2]
                self._state = _CHUNK_SIZE
            elif state == _TRAILER:
                eol = buf.find(b"\r\n")
                if eol < 0:
                    return
                del buf[:eol + 2]
                if eol == 0:  # the empty line after the last chunk (and any trailers)
                    self._finish()
            else:  # _IDLE: bytes after the end of the response
                buf.clear()

    def _check_status_line(self, buf: bytearray) -> None:
        if len(buf) >= 7 and not buf.startswith(b"HTTP/1."):
            raise PlainHTTPError(f"not an HTTP/1.x response: {bytes(buf[:80])!r}")

    def _start(self, head: bytes) -> None:
        lines = head.decode("latin-1").split("\r\n")
        version, _, rest = lines[0].partition(" ")
        if not version.startswith("HTTP/1.") or not rest[:3].isdigit():
            raise PlainHTTPError(f"not an HTTP/1.x response: {lines[0][:80]!r}")
        status = int(rest[:3])
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        self._status = status
        self._keep = (version != "HTTP/1.0"
                      and "close" not in headers.get("connection", "").lower())
        assert self._sink is not None
        self._sink.start(status)
        if status in (204, 304) or 100 <= status < 200:
            self._finish()  # no body by definition (1xx is not expected)
        elif "chunked" in headers.get("transfer-encoding", "").lower():
            self._state = _CHUNK_SIZE
        elif "content-length" in headers:
            self._left = int(headers["content-length"])
            self._state = _SIZED
            if not self._left:
                self._finish()
        else:
            self._state = _UNTIL_CLOSE

    def _sized(self, data: bytes) -> None:
        piece = data[:self._left]
        self._left -= len(piece)
        self._feed(piece)
        if not self._left:
            self._finish()

    def _feed(self, data: bytes) -> None:
        if data and self._sink is not None:
            self._sink.feed(data)

    # ---- the end of a response -----------------------------------------------------------

    def _finish(self) -> None:
        self._state = _IDLE
        self._buf.clear()
        if not self._keep and not self.closed:
            self.closed = True
            if self._transport is not None:
                self._transport.close()
        if self._done is not None and not self._done.done():
            self._done.set_result(self._status)

    def _fail(self, exc: BaseException) -> None:
        self._state = _IDLE
        if self._done is not None and not self._done.done():
            self._done.set_exception(exc)

    def _check_stalled(self) -> None:
        """One timer per request, re-armed only when it fires: rescheduling a timer
        on every read would cost as much as parsing the chunk."""
        self._watchdog = None
        if self._done is None or self._done.done():
            return
        idle = self._loop.time() - self._last_read
        if idle >= self._timeout:
            self._fail(TimeoutError(f"no data from the server for {self._timeout:g}s"))
            self.close(abort=True)
        else:
            self._watchdog = self._loop.call_later(self._timeout - idle, self._check_stalled)

