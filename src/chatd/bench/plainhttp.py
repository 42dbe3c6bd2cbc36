"""The least HTTP/1.1 a streaming benchmark needs, on asyncio streams.

httpx spends ~0.4 ms of CPU on each streamed chunk (httpcore, h11, an anyio cancel
scope per read). At one stream of ~100 tokens/s on a 2-core machine the load
generator shares with the server it measures, that is 4% of the cores taken from
the server. This client reads a chunk for a fraction of that: POST with a JSON
body over one kept-alive connection, the response body yielded as it arrives.
It speaks plain http:// only: no TLS, proxies, redirects or compression (the load
generator falls back to httpx for anything else).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable
from urllib.parse import urlsplit


class PlainHTTPError(OSError):
    """The server closed the connection or answered something that is not HTTP/1.1."""


class PlainConnection:
    """One kept-alive HTTP/1.1 connection to `base_url`'s host (a simulated user).

    `timeout` bounds the wait for each read, like httpx's read timeout: a stream
    that keeps sending may run as long as it needs.
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
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._watchdog: asyncio.TimerHandle | None = None
        self._last_read = 0.0
        self._stalled = False

    async def post(self, path: str, body: bytes) -> tuple[int, AsyncIterator[bytes]]:
        """Send the request; return the status and an iterator over the body.

        The body must be read to its end (or the connection closed) before the next
        request: HTTP/1.1 without pipelining.
        """
        request = (f"POST {self.prefix}{path} HTTP/1.1\r\n{self._head}"
                   f"Content-Length: {len(body)}\r\n\r\n").encode() + body
        reused = self._writer is not None
        if not reused:
            await self._connect()
        try:
            return await self._exchange(request)
        except (PlainHTTPError, ConnectionError):
            if not reused:
                raise
        # A kept-alive connection the server had already closed: once more, afresh.
        await self.aclose()
        await self._connect()
        return await self._exchange(request)

    async def aclose(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        writer, self._reader, self._writer = self._writer, None, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    # ---- internals -----------------------------------------------------------------

    async def _connect(self) -> None:
        async with asyncio.timeout(min(self.timeout, 10.0)):
            self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
        self._stalled = False

    async def _exchange(self, request: bytes) -> tuple[int, AsyncIterator[bytes]]:
        assert self._reader is not None and self._writer is not None
        self._writer.write(request)
        async with asyncio.timeout(self.timeout):
            status_line = await self._reader.readline()
            if not status_line:
                raise PlainHTTPError("the server closed the connection")
            version, _, rest = status_line.decode("latin-1").partition(" ")
            if not version.startswith("HTTP/1.") or not rest[:3].isdigit():
                raise PlainHTTPError(f"not an HTTP/1.x response: {status_line[:80]!r}")
            status = int(rest[:3])
            headers: dict[str, str] = {}
            while (line := await self._reader.readline()) not in (b"\r\n", b"\n", b""):
                name, _, value = line.decode("latin-1").partition(":")
                headers[name.strip().lower()] = value.strip()
        keep = (version != "HTTP/1.0"
                and "close" not in headers.get("connection", "").lower())
        if status in (204, 304) or 100 <= status < 200:
            body = self._empty(keep)  # no body by definition (1xx is not expected)
        elif "chunked" in headers.get("transfer-encoding", "").lower():
            body = self._chunked(keep)
        elif "content-length" in headers:
            body = self._sized(int(headers["content-length"]), keep)
        else:
            body = self._until_close()
        return status, body

    async def _read(self, pending: Awaitable[bytes]) -> bytes:
        """Await a read, bounded by `timeout` through the watchdog (no timer per read:
        rescheduling one costs as much as parsing the chunk)."""
        loop = asyncio.get_running_loop()
        self._last_read = loop.time()
        if self._watchdog is None:
            self._watchdog = loop.call_later(self.timeout, self._check_stalled)
        try:
            data = await pending
        except ConnectionError:
            if not self._stalled:
                raise
            data = b""
        if self._stalled:  # the watchdog aborted the connection under this read
            raise TimeoutError(f"no data from the server for {self.timeout:g}s")
        return data

    def _check_stalled(self) -> None:
        self._watchdog = None
        if self._writer is None:
            return
        loop = asyncio.get_running_loop()
        idle = loop.time() - self._last_read
        if idle >= self.timeout:
            self._stalled = True
            self._writer.transport.abort()  # the pending read fails at once
        else:
            self._watchdog = loop.call_later(self.timeout - idle, self._check_stalled)

    async def _chunked(self, keep: bool) -> AsyncIterator[bytes]:
        """Chunked transfer coding, parsed from whatever each network read brought
        (one await per read, however many chunks it holds)."""
        reader = self._reader
        assert reader is not None
        buf = b""
        while True:
            eol = buf.find(b"\r\n")
            if eol < 0:
                buf += await self._more(reader)
                continue
            try:
                size = int(buf[:eol].split(b";", 1)[0].strip(), 16)
            except ValueError:
                await self.aclose()
                raise PlainHTTPError(f"bad chunk size line {buf[:40]!r}") from None
            if size == 0:
                # The size line's CRLF, any trailer lines, then an empty line.
                while buf.find(b"\r\n\r\n", eol) < 0:
                    buf += await self._more(reader)
                break
            start, stop = eol + 2, eol + 2 + size
            while len(buf) < stop + 2:
                buf += await self._more(reader)
            yield buf[start:stop]
            buf = buf[stop + 2:]
        await self._finished(keep)

    async def _finished(self, keep: bool) -> None:
        """The body is read: stand the watchdog down, or close if the server will."""
        if not keep:
            await self.aclose()
        elif self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None

    async def _more(self, reader: asyncio.StreamReader) -> bytes:
        data = await self._read(reader.read(65536))
        if not data:
            await self.aclose()
            raise PlainHTTPError("the connection closed inside a chunked body")
        return data

    async def _sized(self, length: int, keep: bool) -> AsyncIterator[bytes]:
        reader = self._reader
        assert reader is not None
        while length > 0:
            data = await self._read(reader.read(min(length, 65536)))
            if not data:
                await self.aclose()
                raise PlainHTTPError("the body ended before its Content-Length")
            length -= len(data)
            yield data
        await self._finished(keep)

    async def _empty(self, keep: bool) -> AsyncIterator[bytes]:
        await self._finished(keep)
        return
        yield  # an async generator that yields nothing

    async def _until_close(self) -> AsyncIterator[bytes]:
        reader = self._reader
        assert reader is not None
        while data := await self._read(reader.read(65536)):
            yield data
        await self.aclose()
