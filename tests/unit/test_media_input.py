"""Media checks that need no model: header sizes, formats, base64, the fetch policy."""

from __future__ import annotations

import base64
import ipaddress
import struct

import pytest

from chatd.chat.errors import ChatRequestError
from chatd.chat.media import (
    MediaPolicy,
    check_audio,
    check_image,
    decode_base64,
    image_format,
    image_size,
)


def _jpeg(width: int, height: int) -> bytes:
    app0 = b"\xff\xe0" + struct.pack(">H", 16) + b"JFIF\x00" + b"\x00" * 9
    sof0 = b"\xff\xc0" + struct.pack(">HBHHB", 11, 8, height, width, 1) + b"\x01\x11\x00"
    return b"\xff\xd8" + app0 + sof0 + b"\xff\xd9"


def _gif(width: int, height: int) -> bytes:
    return b"GIF89a" + struct.pack("<HH", width, height) + b"\x00" * 10


def _bmp(width: int, height: int) -> bytes:
    return b"BM" + b"\x00" * 16 + struct.pack("<ii", width, height) + b"\x00" * 30


def _png(width: int, height: int) -> bytes:
    return (b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR"
            + struct.pack(">II", width, height) + b"\x08\x02\x00\x00\x00" + b"\x00" * 4)


@pytest.mark.parametrize(("data", "fmt", "size"), [
    (_png(640, 480), "png", (640, 480)),
    (_jpeg(1024, 768), "jpeg", (1024, 768)),
    (_gif(32, 16), "gif", (32, 16)),
    (_bmp(20, -10), "bmp", (20, 10)),  # a top-down BMP has a negative height
])
def test_sizes_come_from_headers(data: bytes, fmt: str, size: tuple[int, int]) -> None:
    assert image_format(data) == fmt
    assert image_size(data, fmt) == size
    check_image(data, "p")


@pytest.mark.parametrize(("data", "words"), [
    (_png(30000, 30000), "30000x30000"),
    (_jpeg(9000, 10), "9000x10"),
    (_gif(0, 5), "0x5"),
    (_png(8, 8)[:20], "truncated"),
    (b"RIFF\x00\x00\x00\x00WEBPVP8 ", "WEBP"),
    (b"P6\n2 2\n255\n" + b"\x00" * 12, "not an image"),  # PNM: stb reads it, we do not
])
def test_bad_images(data: bytes, words: str) -> None:
    with pytest.raises(ChatRequestError) as info:
        check_image(data, "messages[0].content[1].image_url.url")
    assert words in info.value.message
    assert info.value.param == "messages[0].content[1].image_url.url"


def test_base64_and_audio_checks() -> None:
    assert decode_base64(base64.b64encode(b"abc").decode(), "image", "p") == b"abc"
    for bad in ("***", ""):
        with pytest.raises(ChatRequestError):
            decode_base64(bad, "audio", "p")
    check_audio(b"RIFF\x00\x00\x00\x00WAVEfmt ", "wav", "p")
    check_audio(b"ID3\x04", "mp3", "p")
    for data, fmt in ((b"ID3\x04", "wav"), (b"RIFF....WAVE", "mp3"), (b"fLaC", "flac")):
        with pytest.raises(ChatRequestError):
            check_audio(data, fmt, "p")


def test_fetch_policy_parses_hosts_and_networks() -> None:
    policy = MediaPolicy.parse(" images.example.com, 10.0.0.0/8 ,::1,")
    assert policy.enabled
    assert policy.hosts == frozenset({"images.example.com"})
    assert ipaddress.ip_address("10.1.2.3") in policy.networks[0]
    assert ipaddress.ip_address("::1") in policy.networks[1]
    assert not MediaPolicy.parse(None).enabled
