"""Soak test: minutes of mixed load with random client disconnects against `chatd serve`.

Not part of `make test` (it runs for 10 minutes by default). Run it as

    .venv/bin/python scripts/soak.py                      # starts its own server
    .venv/bin/python scripts/soak.py --duration 60        # a shorter run
    .venv/bin/python scripts/soak.py --url http://127.0.0.1:8000 --pid 1234

It passes (exit 0) when, over the whole run, the server sent no 5xx, its resident
memory grew by less than 10% from the end of the warm-up to the end of the run, and
once the load stops the KV cells held by running sequences return to zero (cells kept
as the prefix cache are reported separately: they are kept on purpose).

The load: `--concurrency` clients, each sending back to back a random mix of plain and
streamed completions (some with n=2, stop strings, logprobs), requests that must be
refused (400), model listings and health checks. A share of the completions is
abandoned on purpose: streams closed after a few chunks, plain requests cancelled
before the answer. Traffic goes only to a loopback address, and the run stops by
itself after `--duration` seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import json
import random
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import httpx

PROMPTS = [
    "Say hello.", "Write a haiku about autumn.", "What is 17 times 3?",
    "List three colours.", "Explain what a CPU does in two sentences.",
    "Tell me a short story about a robot who learns to paint.",
    "Translate 'good morning' into French and Spanish.",
]
SYSTEM = "You are a helpful, concise assistant. Answer in plain text."


@dataclass
class Tally:
    statuses: Counter = field(default_factory=Counter)
    kinds: Counter = field(default_factory=Counter)
    disconnects: int = 0
    transport_errors: int = 0
    bad_streams: int = 0
    error_samples: list[str] = field(default_factory=list)

    def note_error(self, text: str) -> None:
        if len(self.error_samples) < 10:
            self.error_samples.append(text[:300])


def rss_bytes(pid: int) -> int:
    """Resident set size of a process, from /proc (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def check_loopback(url: str) -> None:
    host = urlparse(url).hostname or ""
    if host != "localhost" and not ipaddress.ip_address(host).is_loopback:
        raise SystemExit(f"soak: refusing to load {host}: only loopback targets are allowed")


class Load:
    def __init__(self, http: httpx.AsyncClient, model: str, tally: Tally, rng: random.Random,
                 disconnect_rate: float, max_tokens: int) -> None:
        self.http = http
        self.model = model
        self.tally = tally
        self.rng = rng
        self.disconnect_rate = disconnect_rate
        self.max_tokens = max_tokens

    def body(self, **extra: object) -> dict[str, object]:
        rng = self.rng
        messages: list[dict[str, str]] = [{"role": "user", "content": rng.choice(PROMPTS)}]
        if rng.random() < 0.5:  # a shared system prompt exercises the prefix cache
            messages.insert(0, {"role": "system", "content": SYSTEM})
        body: dict[str, object] = {"model": self.model, "messages": messages,
                                   "max_tokens": rng.randint(4, self.max_tokens),
                                   "temperature": rng.choice([0, 0.7, 1.0])}
        if rng.random() < 0.15:
            body["stop"] = [".", "\n\n"]
        if rng.random() < 0.1:
            body["logprobs"] = True
            body["top_logprobs"] = 2
        body.update(extra)
        return body

    async def one(self) -> None:
        roll = self.rng.random()
        if roll < 0.40:
            await self.stream(self.body(stream=True, n=2 if self.rng.random() < 0.15 else 1))
        elif roll < 0.75:
            await self.plain(self.body())
        elif roll < 0.85:
            await self.refused()
        elif roll < 0.93:
            await self.get("/v1/models", "models")
        else:
            await self.get("/health", "health")

    async def get(self, path: str, kind: str) -> None:
        r = await self.http.get(path)
        self.tally.kinds[kind] += 1
        self.tally.statuses[r.status_code] += 1

    async def refused(self) -> None:
        bad = self.rng.choice([
            {"model": self.model, "messages": []},
            {"model": self.model, "messages": [{"role": "robot", "content": "x"}]},
            {"model": self.model, "messages": [{"role": "user", "content": "x"}], "n": 99},
            {"model": self.model, "messages": "hello"},
        ])
        r = await self.http.post("/v1/chat/completions", json=bad)
        self.tally.kinds["refused"] += 1
        self.tally.statuses[r.status_code] += 1
        if r.status_code != 400:
            self.tally.note_error(f"expected 400, got {r.status_code}: {r.text}")

    async def plain(self, body: dict[str, object]) -> None:
        self.tally.kinds["plain"] += 1
        request = self.http.post("/v1/chat/completions", json=body)
        if self.rng.random() < self.disconnect_rate:
            try:  # give up after a moment: the server must notice and cancel
                r = await asyncio.wait_for(request, timeout=self.rng.uniform(0.05, 0.5))
            except TimeoutError:
                self.tally.disconnects += 1
                return
        else:
            r = await request
        self.tally.statuses[r.status_code] += 1
        if r.status_code >= 500:
            self.tally.note_error(f"{r.status_code}: {r.text}")

    async def stream(self, body: dict[str, object]) -> None:
        self.tally.kinds["stream"] += 1
        cut_after = (self.rng.randint(1, 6) if self.rng.random() < self.disconnect_rate
                     else None)
        async with self.http.stream("POST", "/v1/chat/completions", json=body) as r:
            self.tally.statuses[r.status_code] += 1
            if r.status_code != 200:
                self.tally.note_error(f"{r.status_code}: {(await r.aread())[:300]!r}")
                return
            events = 0
            last = ""
            async for line in r.aiter_lines():
                if not line.startswith("data: "):
                    continue
                events += 1
                last = line
                if '"error"' in line:
                    self.tally.note_error(f"error event: {line}")
                if cut_after is not None and events >= cut_after:
                    self.tally.disconnects += 1
                    return  # leaving the block closes the connection mid-stream
            if last != "data: [DONE]":
                self.tally.bad_streams += 1
                self.tally.note_error(f"stream ended without [DONE]: {last}")


async def client_loop(load: Load, deadline: float) -> None:
    while time.monotonic() < deadline:
        try:
            await load.one()
        except httpx.HTTPError as exc:
            load.tally.transport_errors += 1
            load.tally.note_error(f"transport: {exc!r}")
            await asyncio.sleep(0.2)


async def wait_at_rest(http: httpx.AsyncClient, timeout: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout
    stats: dict = {}
    while time.monotonic() < deadline:
        stats = (await http.get("/health")).json()
        if stats.get("running_sequences") == 0 and stats.get("kv_cells_running") == 0:
            break
        await asyncio.sleep(0.5)
    return stats


async def soak(args: argparse.Namespace, url: str, pid: int | None) -> dict:
    timeout = httpx.Timeout(120.0, connect=10.0)
    limits = httpx.Limits(max_connections=args.concurrency * 2)
    async with httpx.AsyncClient(base_url=url, timeout=timeout, limits=limits,
                                 headers=({"Authorization": f"Bearer {args.api_key}"}
                                          if args.api_key else None)) as http:
        model = (await http.get("/v1/models")).json()["data"][0]["id"]
        rng = random.Random(args.seed)

        def loads(tally: Tally) -> list[Load]:
            return [Load(http, model, tally, random.Random(rng.random()),
                         args.disconnect_rate, args.max_tokens)
                    for _ in range(args.concurrency)]

        print(f"warm-up: {args.warmup:.0f}s at concurrency {args.concurrency}", flush=True)
        warm = Tally()
        end = time.monotonic() + args.warmup
        await asyncio.gather(*(client_loop(load, end) for load in loads(warm)))
        await wait_at_rest(http)
        rss_start = rss_bytes(pid) if pid else None

        print(f"soak: {args.duration:.0f}s", flush=True)
        tally = Tally()
        started = time.monotonic()
        end = started + args.duration
        samples: list[int] = []

        async def sample_rss() -> None:
            while pid and time.monotonic() < end:
                samples.append(rss_bytes(pid))
                await asyncio.sleep(5)

        sampler = asyncio.create_task(sample_rss())
        await asyncio.gather(*(client_loop(load, end) for load in loads(tally)))
        await sampler
        elapsed = time.monotonic() - started
        rest = await wait_at_rest(http)
        rss_end = rss_bytes(pid) if pid else None

    requests = sum(tally.statuses.values()) + tally.disconnects
    five_xx = sum(n for status, n in tally.statuses.items() if status >= 500)
    growth = (rss_end - rss_start) / rss_start if rss_start and rss_end else None
    return {
        "url": url, "duration_s": round(elapsed, 1), "concurrency": args.concurrency,
        "requests": requests, "by_kind": dict(tally.kinds),
        "statuses": {str(k): v for k, v in sorted(tally.statuses.items())},
        "client_disconnects": tally.disconnects, "five_xx": five_xx,
        "transport_errors": tally.transport_errors, "streams_without_done": tally.bad_streams,
        "rss_start_mb": round(rss_start / 2**20, 1) if rss_start else None,
        "rss_end_mb": round(rss_end / 2**20, 1) if rss_end else None,
        "rss_peak_mb": round(max(samples) / 2**20, 1) if samples else None,
        "rss_growth_pct": round(100 * growth, 2) if growth is not None else None,
        "kv_cells_running_at_rest": rest.get("kv_cells_running"),
        "kv_cells_cached_at_rest": rest.get("kv_cells_cached"),
        "kv_cells_parked_at_rest": rest.get("kv_cells_parked"),
        "kv_parks": rest.get("kv_parks"), "kv_unparks": rest.get("kv_unparks"),
        "running_sequences_at_rest": rest.get("running_sequences"),
        "kv_repacks": rest.get("kv_repacks"), "kv_compactions": rest.get("kv_compactions"),
        "kv_epochs": rest.get("kv_epochs"),
        "error_samples": tally.error_samples,
    }


def start_server(args: argparse.Namespace) -> tuple[subprocess.Popen, str, Path]:
    port = free_port()
    log = Path(args.server_log)
    cmd = [sys.executable, "-m", "chatd", "serve", "--host", "127.0.0.1", "--port", str(port),
           "--store", "off", *args.serve_arg]
    print("starting:", " ".join(cmd), flush=True)
    proc = subprocess.Popen(cmd, stdout=log.open("wb"), stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"soak: server exited with {proc.returncode}; see {log}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return proc, url, log
        time.sleep(0.5)
    proc.kill()
    raise SystemExit("soak: server not healthy within 120 s")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", default=None, help="a running server (default: start one)")
    p.add_argument("--pid", type=int, default=None, help="its process id, to read its RSS")
    p.add_argument("--api-key", default=None)
    p.add_argument("--duration", type=float, default=600.0, help="seconds of load (600)")
    p.add_argument("--warmup", type=float, default=30.0,
                   help="seconds of load before the RSS baseline is taken (30)")
    p.add_argument("--concurrency", type=int, default=6)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--disconnect-rate", type=float, default=0.2,
                   help="share of completions the client abandons (0.2)")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--serve-arg", action="append",
                   default=None, help="extra `chatd serve` argument for the started server "
                   "(repeatable; default: --ctx-size 1024 --max-sequences 4)")
    p.add_argument("--server-log", default="soak-server.log")
    p.add_argument("--json", default=None, help="also write the result here")
    args = p.parse_args(argv)
    if args.serve_arg is None:
        args.serve_arg = ["--ctx-size", "1024", "--max-sequences", "4"]

    proc = None
    server_rc: int | None = None
    if args.url:
        check_loopback(args.url)
        url, pid = args.url.rstrip("/").removesuffix("/v1"), args.pid
    else:
        proc, url, _ = start_server(args)
        pid = proc.pid
    try:
        result = asyncio.run(soak(args, url, pid))
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGTERM)
            try:
                server_rc = proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
    if proc is not None:
        result["server_exit_code"] = server_rc
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    growth = result["rss_growth_pct"]
    ok = (result["five_xx"] == 0 and result["streams_without_done"] == 0
          and result["kv_cells_running_at_rest"] == 0
          and (growth is None or growth < 10.0)
          and result.get("server_exit_code", 0) == 0)
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
