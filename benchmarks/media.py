"""`make bench`, media row: image encode time, and what images cost the text streams.

Eight streaming text requests run alone, then again while a ninth client sends
images back to back; the row prints the text streams' inter-token latency (p50/p90)
both ways, their ratio, and the server's own encode/decode seconds per image (GET
/health: media_encoded, media_encode_seconds, media_decode_seconds).

Without `--mmproj` it serves the bundled SmolLM2 with the tests' tiny random-weight
"mlp" projector (tests/fixtures/mmproj.py): its encoder is ~1 ms, so the row then
measures what chatd adds around any encoder (the embedding batches between the
text steps). With a real pair (`--model X.gguf --mmproj mmproj-X.gguf`) it measures
that model.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import openai

from benchmarks.probes import health
from benchmarks.run import _free_port, server_process
from chatd.bench.loadgen import percentile


def _png_url(seed: int, size: int) -> str:
    from tests.fixtures.mmproj import png_bytes

    return "data:image/png;base64," + base64.b64encode(png_bytes(size, size, seed)).decode()


async def _text_stream(client: openai.AsyncOpenAI, model: str, seed: int,
                       tokens: int, gaps: list[float]) -> None:
    last = None
    stream = await client.chat.completions.create(
        model=model, stream=True, max_tokens=tokens, temperature=1.0, seed=seed,
        messages=[{"role": "user", "content": f"Tell story number {seed} about a harbour."}])
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            now = time.perf_counter()
            if last is not None:
                gaps.append(now - last)
            last = now


async def _images(client: openai.AsyncOpenAI, model: str, size: int, stop: asyncio.Event,
                  sent: list[int]) -> None:
    seed = 1000
    while not stop.is_set():
        seed += 1
        await client.chat.completions.create(
            model=model, max_tokens=1, temperature=0,
            messages=[{"role": "user", "content": [
                {"type": "text", "text": "Describe this."},
                {"type": "image_url", "image_url": {"url": _png_url(seed, size)}}]}])
        sent[0] += 1


async def _round(base: str, streams: int, tokens: int, with_images: bool, size: int,
                 seed: int) -> tuple[list[float], int]:
    async with openai.AsyncOpenAI(base_url=base + "/v1", api_key="unused",
                                  max_retries=0, timeout=600) as client:
        model = (await client.models.list()).data[0].id
        gaps: list[float] = []
        stop, sent = asyncio.Event(), [0]
        images = (asyncio.create_task(_images(client, model, size, stop, sent))
                  if with_images else None)
        await asyncio.gather(*(_text_stream(client, model, seed + i, tokens, gaps)
                               for i in range(streams)))
        stop.set()
        if images is not None:
            await images
        return gaps, sent[0]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--mmproj", type=Path, default=None,
                        help="default: the tests' tiny image projector beside SmolLM2")
    parser.add_argument("--streams", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=96)
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as folder:
        mmproj = args.mmproj
        if mmproj is None:
            from tests.fixtures.mmproj import write_image_projector

            mmproj = write_image_projector(Path(folder) / "image.gguf")
        port = _free_port()
        cmd = [sys.executable, "-m", "chatd", "serve", "--port", str(port), "--store", "off",
               "--mmproj", str(mmproj)]
        if args.model:
            cmd += ["--model", str(args.model)]
        with server_process("chatd serve", cmd, port, 180.0) as (base, _pid):
            rows: dict[bool, list[float]] = {False: [], True: []}
            sent_total = 0
            before = health(base)
            for r in range(args.rounds):  # alternating: alone, with images
                for with_images in (False, True):
                    gaps, sent = asyncio.run(_round(base, args.streams, args.tokens,
                                                    with_images, args.image_size, 100 * r))
                    rows[with_images] += gaps
                    sent_total += sent
            after = health(base)
    _report(rows, sent_total, before, after, args)


def _report(rows: dict[bool, list[float]], sent: int, before: dict[str, Any],
            after: dict[str, Any], args: argparse.Namespace) -> None:
    def ms(values: list[float], q: float) -> float:
        return 1000 * (percentile(values, q) or 0.0)

    encoded = int(after.get("media_encoded", 0)) - int(before.get("media_encoded", 0))
    enc = float(after.get("media_encode_seconds", 0)) - float(before.get("media_encode_seconds", 0))
    dec = float(after.get("media_decode_seconds", 0)) - float(before.get("media_decode_seconds", 0))
    alone, mixed = rows[False], rows[True]
    print(f"\nmedia: {args.streams} text streams, ITL alone vs while {sent} images "
          f"({args.image_size}x{args.image_size} PNG) were sent back to back")
    print(f"  ITL p50/p90 ms alone        {ms(alone, 50):7.1f} / {ms(alone, 90):7.1f}")
    print(f"  ITL p50/p90 ms with images  {ms(mixed, 50):7.1f} / {ms(mixed, 90):7.1f}   "
          f"ratio p50 {ms(mixed, 50) / max(ms(alone, 50), 1e-9):.2f}, "
          f"p90 {ms(mixed, 90) / max(ms(alone, 90), 1e-9):.2f}, "
          f"max gap {1000 * max(mixed, default=0):.0f} ms")
    if encoded:
        print(f"  per image: encode {1000 * enc / encoded:.1f} ms, embedding decode "
              f"{1000 * dec / encoded:.1f} ms (server-side, {encoded} images)")
    print(f"  (mean ITL alone {1000 * statistics.fmean(alone or [0]):.1f} ms)")


if __name__ == "__main__":
    main()
