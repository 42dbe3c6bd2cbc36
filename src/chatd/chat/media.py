"""Image and audio parts of a request -> checked bytes (`MediaInput`), or a 400.

Everything a client can get wrong is refused here, before libmtmd sees the bytes:
base64 that does not decode, empty data, a format its decoders do not read, and an
image whose header claims more pixels than we will decode (the header is read; the
pixels never are). `http(s)` URLs are fetched only for hosts the operator listed
(`MediaPolicy`), never `file://`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import ipaddress
import socket
import struct
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import httpx

from chatd.chat.errors import ChatRequestError
from chatd.engine.multimodal import MediaInput

MAX_SIDE = 8192              # pixels on either side of an image
MAX_PIXELS = 40_000_000      # ~120 MB of RGB once decoded
IMAGE_FORMATS = ("png", "jpeg", "gif", "bmp")


@dataclass(frozen=True)
class MediaPolicy:
    """Which image URLs the server may fetch (`--media-fetch`) and how far."""

    hosts: frozenset[str] = frozenset()   # empty: no fetching at all
    max_bytes: int = 10 * 1024 * 1024
    timeout_s: float = 10.0
    networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = field(default=())

    @classmethod
    def parse(cls, spec: str | None, *, max_bytes: int = 10 * 1024 * 1024,
              timeout_s: float = 10.0) -> MediaPolicy:
        """`host1,host2,10.0.0.0/8`: host names, or addresses/networks that may be
        private (a private address is reached only when it is listed itself)."""
        hosts: set[str] = set()
        nets = []
        for item in (spec or "").split(","):
            item = item.strip().lower()
            if not item:
                continue
            try:
                nets.append(ipaddress.ip_network(item, strict=False))
            except ValueError:
                hosts.add(item)
        return cls(frozenset(hosts), max_bytes, timeout_s, tuple(nets))

    @property
    def enabled(self) -> bool:
        return bool(self.hosts or self.networks)


def _bad(kind: str, param: str, why: str) -> ChatRequestError:
    return ChatRequestError(f"{param}: {why}", param=param, code=f"invalid_{kind}")


def decode_base64(data: str, kind: str, param: str) -> bytes:
    try:
        raw = base64.b64decode(data.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise _bad(kind, param, f"the {kind} data is not valid base64") from None
    if not raw:
        raise _bad(kind, param, f"the {kind} is empty (0 bytes)")
    return raw


def image_format(data: bytes) -> str | None:
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if data.startswith(b"BM"):
        return "bmp"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return None


def image_size(data: bytes, fmt: str) -> tuple[int, int] | None:
    """(width, height) from the header alone; None when the header is cut short."""
    try:
        if fmt == "png":
            return struct.unpack(">II", data[16:24]) if data[12:16] == b"IHDR" else None
        if fmt == "gif":
            return struct.unpack("<HH", data[6:10])
        if fmt == "bmp":
            w, h = struct.unpack("<ii", data[18:26])
            return abs(w), abs(h)
        if fmt == "jpeg":
            return _jpeg_size(data)
    except struct.error:
        return None
    return None


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    i = 2
    while i + 9 < len(data):
        if data[i] != 0xFF:
            i += 1
            continue
        marker = data[i + 1]
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7 or marker == 0xFF:
            i += 1 if marker == 0xFF else 2
            continue
        length = struct.unpack(">H", data[i + 2:i + 4])[0]
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            h, w = struct.unpack(">HH", data[i + 5:i + 9])
            return w, h
        i += 2 + length
    return None


def check_image(data: bytes, param: str) -> None:
    fmt = image_format(data)
    if fmt is None:
        raise _bad("image", param, "the bytes are not an image chatd can read "
                   f"(send {', '.join(f.upper() for f in IMAGE_FORMATS)})")
    if fmt not in IMAGE_FORMATS:
        raise _bad("image", param, f"{fmt.upper()} images are not supported "
                   f"(send {', '.join(f.upper() for f in IMAGE_FORMATS)})")
    size = image_size(data, fmt)
    if size is None:
        raise _bad("image", param, f"the {fmt.upper()} header is truncated or corrupt")
    w, h = size
    if w <= 0 or h <= 0:
        raise _bad("image", param, f"the image claims a size of {w}x{h} pixels")
    if w > MAX_SIDE or h > MAX_SIDE or w * h > MAX_PIXELS:
        raise _bad("image", param, f"the image is {w}x{h} pixels; chatd decodes at most "
                   f"{MAX_SIDE} pixels a side and {MAX_PIXELS:,} in all")


def check_audio(data: bytes, fmt: str, param: str) -> None:
    if fmt == "wav":
        if not (data[:4] == b"RIFF" and data[8:12] == b"WAVE"):
            raise _bad("audio", param, "format is 'wav' but the bytes are not a WAV file")
    elif fmt == "mp3":
        if not (data[:3] == b"ID3" or (len(data) > 1 and data[0] == 0xFF
                                       and data[1] & 0xE0 == 0xE0)):
            raise _bad("audio", param, "format is 'mp3' but the bytes are not MP3")
    else:
        raise _bad("audio", param, f"audio format '{fmt}' is not supported (wav, mp3)")


async def image_from_url(url: str, param: str, policy: MediaPolicy) -> bytes:
    """The bytes of a data: URL, or of an http(s) URL the policy allows."""
    if url.startswith("data:"):
        header, sep, payload = url.partition(",")
        if not sep or ";base64" not in header:
            raise _bad("image", param, "a data URL must be base64: "
                       "data:image/png;base64,<data>")
        data = decode_base64(payload, "image", param)
    else:
        data = await _fetch(url, param, policy)
    check_image(data, param)
    return data


async def _fetch(url: str, param: str, policy: MediaPolicy) -> bytes:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise _bad("image", param, "image_url.url must be a data: URL (base64) or, where "
                   "the server allows it, an http(s) URL")
    if not policy.enabled:
        raise ChatRequestError(
            f"{param}: this server does not fetch image URLs; send the image inline as "
            "data:image/png;base64,... (an operator can allow hosts with --media-fetch)",
            param=param, code="invalid_image_url")
    host = (parts.hostname or "").lower()
    await _check_host(host, parts.port or (443 if parts.scheme == "https" else 80),
                      param, policy)
    try:
        async with httpx.AsyncClient(timeout=policy.timeout_s, follow_redirects=False) as http:
            for _ in range(4):
                async with http.stream("GET", url) as resp:
                    if resp.is_redirect:
                        url = str(resp.url.join(resp.headers.get("location", "")))
                        nxt = urlsplit(url)
                        if (nxt.hostname or "").lower() != host or nxt.scheme not in (
                                "http", "https"):
                            raise _bad("image_url", param, "the image URL redirects to "
                                       "another host, which is not followed")
                        continue
                    if resp.status_code != 200:
                        raise _bad("image_url", param, f"fetching the image returned HTTP "
                                   f"{resp.status_code}")
                    body = bytearray()
                    async for piece in resp.aiter_bytes():
                        body += piece
                        if len(body) > policy.max_bytes:
                            raise _bad("image_url", param, "the image is larger than "
                                       f"{policy.max_bytes:,} bytes")
                    if not body:
                        raise _bad("image", param, "the image is empty (0 bytes)")
                    return bytes(body)
            raise _bad("image_url", param, "too many redirects")
    except httpx.HTTPError as exc:
        raise _bad("image_url", param, f"the image could not be fetched ({exc})") from None


async def _check_host(host: str, port: int, param: str, policy: MediaPolicy) -> None:
    """The host must be listed by name or address; an address that is private,
    loopback or link-local must itself be listed (a listed name that resolves there
    is refused: DNS cannot grant access to the internal network)."""
    try:
        literal = ipaddress.ip_address(host)
    except ValueError:
        literal = None
    if literal is None and host not in policy.hosts:
        raise _bad("image_url", param, f"fetching from '{host}' is not allowed "
                   "(not in --media-fetch)")
    try:
        infos = await asyncio.to_thread(socket.getaddrinfo, host, port,
                                        type=socket.SOCK_STREAM)
    except OSError:
        raise _bad("image_url", param, f"'{host}' could not be resolved") from None
    for info in infos:
        addr = ipaddress.ip_address(info[4][0])
        listed = any(addr in net for net in policy.networks)
        if literal is not None and not listed:
            raise _bad("image_url", param, f"fetching from {host} is not allowed "
                       "(not in --media-fetch)")
        if (addr.is_private or addr.is_loopback or addr.is_link_local
                or addr.is_reserved or addr.is_multicast) and not listed:
            raise _bad("image_url", param, f"'{host}' resolves to a private address "
                       f"({addr}); list that address in --media-fetch to allow it")


async def load_part(part: dict, param: str, policy: MediaPolicy) -> MediaInput:
    """One image_url or input_audio part as checked bytes."""
    if part.get("type") == "image_url":
        url = (part.get("image_url") or {}).get("url", "")
        return MediaInput("image", await image_from_url(url, f"{param}.image_url.url", policy),
                          param)
    audio = part.get("input_audio") or {}
    data = decode_base64(audio.get("data", ""), "audio", f"{param}.input_audio.data")
    check_audio(data, audio.get("format", ""), f"{param}.input_audio")
    return MediaInput("audio", data, param)
