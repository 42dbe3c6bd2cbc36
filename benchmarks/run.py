"""`make bench`: the engine ceiling, then a real `chatd serve` under closed-loop load.

The two halves answer one question: how much of what llama.cpp can do on this
machine does the server deliver? For concurrency c the server's summed token rate
is set beside the ceiling's rate for a batch of c sequences (one decode step holding
c tokens, nothing else), and beside the best batched ceiling.

    python -m benchmarks.run [--json out.json] [--skip-ceiling] [--skip-server]
                             [--url http://host:port] [--requests-per-client N]
                             [--rss-requests N]

Beside those rows: a repetitive workload at c=1 (greedy "repeat this text",
speculative decoding's case) against the same B=1 ceiling, with chatd's tokens per
engine step; the CPU the server's engine thread, its llama.cpp workers and its event
loop spend per generated token at each concurrency (benchmarks.probes); and the
server's resident memory over --rss-requests short requests after a warm-up.

The ceiling runs first and frees its model before the server starts, so the two
never compete for the CPU; it runs again after the load, beside the idle server, and
the ratios use the higher of the two per batch size (a shared machine only ever
makes a measurement slower, so a slow moment cannot flatter a ratio).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx

from benchmarks.ceiling import (
    DEFAULT_BATCH_SIZES,
    CeilingResult,
    SingleStreamCeiling,
    format_ceiling,
    measure_ceiling,
    special_token_ids,
)
from benchmarks.constrained import SCHEMA as CONSTRAINED_SCHEMA
from benchmarks.probes import (
    CpuSample,
    cpu_per_token,
    format_speculation,
    health,
    rss_bytes,
    speculation,
    thread_cpu_s,
)
from benchmarks.workloads import REPEAT_PROMPT
from chatd.bench.loadgen import (
    DEFAULT_CONCURRENCY,
    DEFAULT_MAX_TOKENS,
    LoadResult,
    default_requests_per_client,
    detect_model,
    parse_int_list,
    run_client,
    run_load,
)
from chatd.cli import build_parser as build_chatd_parser
from chatd.engine.llama import default_threads, gpu_offload_supported, weights_interleaved
from chatd.engine.prompts import SLOW_PROMPT_FILE_TYPES, dense_file_type
from chatd.models.registry import load_model_info
from chatd.models.requantize import dense_copy


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_healthy(name: str, base: str, proc: subprocess.Popen[bytes], timeout: float) -> None:
    """Poll GET /health until 200; fail early if the server process dies."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with code {proc.returncode} during start-up")
        try:
            resp = httpx.get(f"{base}/health", timeout=2.0)
            if resp.status_code == 200:
                return
            last = f"HTTP {resp.status_code}"
        except httpx.HTTPError as exc:
            last = type(exc).__name__
        time.sleep(0.5)
    raise RuntimeError(f"{name} not healthy after {timeout:.0f}s ({last})")


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


@contextlib.contextmanager
def server_process(name: str, cmd: list[str], port: int,
                   timeout: float) -> Iterator[tuple[str, int]]:
    """Run a server command that listens on 127.0.0.1:`port`; yield its base URL and
    pid once GET /health answers; SIGTERM (then kill) it. Its output goes to a log
    file whose tail is printed if it fails to start."""
    log_path = Path(tempfile.mkstemp(prefix=f"{name.split()[0]}-bench-", suffix=".log")[1])
    print(f"starting: {' '.join(cmd)}  (log: {log_path})", flush=True)
    with log_path.open("wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        started = time.monotonic()
        try:
            _wait_healthy(name, base, proc, timeout)
        except RuntimeError:
            print(_tail(log_path), file=sys.stderr)
            raise
        print(f"{name} healthy after {time.monotonic() - started:.1f}s", flush=True)
        yield base, proc.pid
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@contextlib.contextmanager
def chatd_server(args: argparse.Namespace) -> Iterator[tuple[str, int]]:
    """Start `chatd serve` on a free port; yield its base URL and pid. It runs through
    benchmarks.named_threads, so /proc shows which thread is its engine."""
    port = _free_port()
    cmd = [sys.executable, "-m", "benchmarks.named_threads", "serve", "--port", str(port),
           "--store", "off",
           "--host", "127.0.0.1", "--max-sequences", str(args.max_sequences)]
    if args.model:
        cmd += ["--model", str(args.model)]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    for extra in args.serve_arg:
        cmd += shlex.split(extra)  # as a shell would: a quoted argument survives
    with server_process("chatd serve", cmd, port, args.startup_timeout) as served:
        yield served


async def _drive(url: str, args: argparse.Namespace, ban: list[int],
                 server_pid: int | None = None) -> tuple[list[LoadResult], list[dict[str, Any]]]:
    """The closed-loop load at each concurrency; with the server's pid, also the CPU
    its threads spent per generated token over each (see benchmarks.probes)."""
    results, cpu = [], []
    for conc in args.concurrency:
        before = CpuSample.take(server_pid, url) if server_pid else None
        res = await run_load(
            url, args.model_name, conc,
            requests_per_client=args.requests_per_client or default_requests_per_client(conc),
            max_tokens=args.max_tokens, api_key=args.api_key, ban_tokens=ban,
        )
        print(f"  c={conc:<3d} {res.tokens_per_s:8.1f} tok/s  {len(res.requests)} requests, "
              f"{res.errors} errors", flush=True)
        results.append(res)
        if server_pid and before is not None:
            cpu.append({"concurrency": conc,
                        **cpu_per_token(before, CpuSample.take(server_pid, url))})
    return results, cpu


def _format_cpu(rows: list[dict[str, Any]]) -> str:
    def num(v: float | None) -> str:
        return "-" if v is None else f"{v:.3f}"
    lines = [f"{'conc':>4} {'engine':>8} {'outside decode':>15} {'llama.cpp workers':>18} "
             f"{'event loop':>11} {'process':>8} {'tokens':>7}"]
    lines += [f"{r['concurrency']:>4} {num(r['engine_ms']):>8} "
              f"{num(r.get('engine_host_ms')):>15} {num(r['llama_workers_ms']):>18} "
              f"{num(r['event_loop_ms']):>11} {num(r['process_ms']):>8} {r['tokens']:>7}"
              for r in rows]
    return "\n".join(lines)


def _repeat_row(base: str, args: argparse.Namespace,
                ban: list[int]) -> tuple[LoadResult, dict[str, Any]]:
    """Speculative decoding's case at c=1: greedy "repeat this text", with chatd's
    speculation counters over the run (GET /health before and after)."""
    before = health(base)
    res = run_client(run_load(
        base, args.model_name, 1,
        requests_per_client=args.requests_per_client or default_requests_per_client(1),
        max_tokens=args.max_tokens, api_key=args.api_key, ban_tokens=ban,
        prompt=REPEAT_PROMPT, temperature=0.0))
    print(f"  c=1 repeat {res.tokens_per_s:8.1f} tok/s  {len(res.requests)} requests, "
          f"{res.errors} errors", flush=True)
    return res, speculation(before, health(base))


# Issue: server memory must grow < 5% after warm-up. Short requests, so the count is
# high and the run short (about two minutes for 1,000 on two cores).
RSS_CONCURRENCY = 8
RSS_MAX_TOKENS = 16
RSS_PARTS = 4


def _rss_run(base: str, pid: int, args: argparse.Namespace, ban: list[int]) -> dict[str, Any]:
    """The server's resident memory after a warm-up (a fifth as many requests) and
    after each quarter of `args.rss_requests` requests (a steady climb shows apart
    from a one-off step); beside it, the event loop's CPU per request over them (HTTP,
    validation, template, tokenizing and 16 tokens streamed: the front-end's share of
    a short request, which two cores take from llama.cpp's threads)."""
    def load(requests: int, seed: int) -> LoadResult:
        return run_client(run_load(
            base, args.model_name, RSS_CONCURRENCY,
            requests_per_client=-(-requests // RSS_CONCURRENCY), max_tokens=RSS_MAX_TOKENS,
            api_key=args.api_key, ban_tokens=ban, seed=seed, warmup=False))

    warmup = max(RSS_CONCURRENCY, args.rss_requests // 5)
    load(warmup, seed=1)
    samples, requests, errors = [rss_bytes(pid)], 0, 0
    loop_before = thread_cpu_s(pid)
    for part in range(RSS_PARTS):
        res = load(args.rss_requests // RSS_PARTS, seed=100_000 * (part + 1))
        requests, errors = requests + len(res.requests), errors + res.errors
        samples.append(rss_bytes(pid))
    loop_after = thread_cpu_s(pid)
    mib = [round(x / 2**20, 1) if x else None for x in samples]
    growth = (samples[-1] - samples[0]) / samples[0] if samples[0] and samples[-1] else None
    loop_ms = (round(1000 * (loop_after - loop_before) / requests, 3)
               if loop_before is not None and loop_after is not None and requests else None)
    row = {"requests": requests, "errors": errors, "concurrency": RSS_CONCURRENCY,
           "max_tokens": RSS_MAX_TOKENS, "warmup_requests": warmup,
           "rss_mib": mib, "growth": round(growth, 4) if growth is not None else None,
           "event_loop_ms_per_request": loop_ms}
    print(f"  RSS after warm-up and each quarter: {mib} MiB; event loop CPU "
          f"{loop_ms} ms a request", flush=True)
    return row


# Issue: constrained decoding must cost <= 10% of tokens/s. The same schema as the
# in-process measurement (see benchmarks.constrained.SCHEMA for why it looks so).
CONSTRAINED_FORMAT = {"type": "json_schema",
                      "json_schema": {"name": "story", "schema": CONSTRAINED_SCHEMA}}
CONSTRAINED_CONCURRENCY = (1, 8)
CONSTRAINED_ROUNDS = 4


PAIRED_ROUNDS = 4


async def _paired_c1(url: str, args: argparse.Namespace, ban: list[int],
                     server_pid: int | None = None) -> dict[str, Any]:
    """Server c=1 in rounds, each between two B=1 ceiling measurements.

    On a shared machine one stream's speed drifts by a third within a minute, so a
    c=1 ratio taken against a ceiling measured minutes earlier says more about the
    neighbours than about the server. Each round's ratio is the server's rate over the
    mean of the ceilings measured just before and just after it; the geometric mean
    over rounds is reported.

    Each round also runs the same requests without streaming (in alternating order):
    the engine's work and its per-token hand-off to the event loop are the same, but
    no SSE chunk is formatted, sent or read, so the two ratios split the gap into the
    engine's share and the share of streaming.

    Also the CPU that streaming costs per token: the server's event loop and this
    load generator. llama.cpp keeps both cores busy at B=1, so this CPU is taken
    from decoding.
    """
    ceiling = SingleStreamCeiling(args.model, args.threads or None,
                                  args.ceiling_prompt_tokens, args.ceiling_steps or args.max_tokens)
    try:
        model = args.model_name or await detect_model(url, args.api_key)
        before = ceiling.measure()
        ratios, json_ratios, servers, ceilings = [], [], [], [before]
        tokens, loop_cpu, client_cpu = 0, 0.0, 0.0
        for r in range(PAIRED_ROUNDS):
            rates: dict[bool, float] = {}
            for stream in ((True, False) if r % 2 == 0 else (False, True)):
                loop0 = thread_cpu_s(server_pid) if server_pid else None
                res = await run_load(url, model, 1, requests_per_client=2,
                                     max_tokens=args.max_tokens, api_key=args.api_key,
                                     ban_tokens=ban, warmup=False, stream=stream)
                rates[stream] = res.tokens_per_s
                if not stream:
                    continue
                client_cpu += res.client_cpu_s or 0.0
                loop1 = thread_cpu_s(server_pid) if server_pid else None
                if loop0 is not None and loop1 is not None:
                    loop_cpu += loop1 - loop0
                tokens += res.completion_tokens
            after = ceiling.measure()
            ceilings.append(after)
            servers.append(rates[True])
            ratios.append(rates[True] / ((before + after) / 2))
            json_ratios.append(rates[False] / ((before + after) / 2))
            before = after
    finally:
        ceiling.close()

    def geomean(values: list[float]) -> float:
        return round(math.exp(sum(map(math.log, values)) / len(values)), 3)
    row = {"rounds": len(ratios), "server_tokens_per_s": [round(x, 1) for x in servers],
           "ceiling_tokens_per_s": [round(x, 1) for x in ceilings],
           "round_ratios": [round(r, 3) for r in ratios],
           "ratio": geomean(ratios),
           "json_round_ratios": [round(r, 3) for r in json_ratios],
           "json_ratio": geomean(json_ratios),
           "client_cpu_ms_per_token": round(1000 * client_cpu / max(1, tokens), 3),
           "server_event_loop_cpu_ms_per_token": (round(1000 * loop_cpu / max(1, tokens), 3)
                                                  if server_pid else None)}
    print(f"  c=1 / B=1 ceiling per round: {row['round_ratios']} "
          f"(without streaming: {row['json_round_ratios']})", flush=True)
    return row


async def _drive_constrained(url: str, args: argparse.Namespace,
                             ban: list[int]) -> list[dict[str, Any]]:
    """Plain and schema-constrained load in alternating rounds at each concurrency.

    Alternating matters on a shared machine: both sides see the same moment's CPU
    and nearly the same KV cache span (which moves decode speed by tens of
    percent). The ratio is taken per round; the geometric mean is reported.
    """
    rows = []
    for conc in CONSTRAINED_CONCURRENCY:
        ratios, plain_rates, constrained_rates, errors = [], [], [], 0
        for round_no in range(CONSTRAINED_ROUNDS):
            # ABBA order: the KV span grows as rounds go by, so whichever side always
            # ran second would always be measured on a larger cache.
            order = (False, True) if round_no % 2 == 0 else (True, False)
            pair: dict[bool, float | None] = {}
            for constrained_side in order:
                extra = {"response_format": CONSTRAINED_FORMAT} if constrained_side else None
                res = await run_load(
                    url, args.model_name, conc,
                    requests_per_client=args.requests_per_client
                    or default_requests_per_client(conc),
                    max_tokens=args.max_tokens, api_key=args.api_key, ban_tokens=ban,
                    extra_body=extra)
                errors += res.errors
                pair[constrained_side] = _decode_rate(res)
            plain, constrained = pair[False], pair[True]
            if plain and constrained:
                plain_rates.append(plain)
                constrained_rates.append(constrained)
                ratios.append(constrained / plain)
        row = {"concurrency": conc, "rounds": len(ratios),
               "plain_decode_tok_s": _median(plain_rates),
               "constrained_decode_tok_s": _median(constrained_rates),
               # geometric mean over ABBA rounds cancels a steady drift of the span
               "ratio": round(math.exp(sum(map(math.log, ratios)) / len(ratios)), 3)
               if ratios else None,
               "round_ratios": [round(r, 3) for r in ratios], "errors": errors}
        print(f"  c={conc:<3d} constrained/plain per round: {row['round_ratios']}", flush=True)
        rows.append(row)
    return rows


def _median(values: list[float]) -> float | None:
    return round(statistics.median(values), 2) if values else None


def _decode_rate(res: LoadResult) -> float | None:
    """Median over requests of each stream's own decode tokens/s."""
    rates = sorted(r for r in (q.decode_tokens_per_s for q in res.ok_requests) if r)
    return round(rates[len(rates) // 2], 2) if rates else None


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{1000 * value:.0f}"


def compare(
    runs: list[LoadResult], ceiling: CeilingResult | None, batch_cap: int | None
) -> list[dict[str, Any]]:
    """One row per concurrency: server rate, ceiling at that batch and the best, ratios."""
    best = ceiling.best_decode if ceiling else None
    rows = []
    for r in runs:
        batch = min(r.concurrency, batch_cap) if batch_cap else r.concurrency
        same = ceiling.decode_at(batch) if ceiling else None
        steady = next((f.steady_tokens_per_s for f in ceiling.decode if f.batch == batch),
                      None) if ceiling else None
        rows.append({
            "concurrency": r.concurrency,
            "server_tokens_per_s": round(r.tokens_per_s, 1),
            "ceiling_batch": batch,
            "ceiling_tokens_per_s": same,
            "ratio": round(r.tokens_per_s / same, 3) if same else None,
            "ceiling_steady_tokens_per_s": steady,
            "best_ceiling_batch": best.batch if best else None,
            "best_ceiling_tokens_per_s": best.tokens_per_s if best else None,
            "ratio_to_best": round(r.tokens_per_s / best.tokens_per_s, 3) if best else None,
            "ttft_p50_s": r.ttft(50), "ttft_p90_s": r.ttft(90),
            "itl_p50_s": r.itl(50), "itl_p90_s": r.itl(90),
            "requests": len(r.requests), "errors": r.errors, "error_sample": r.error_sample,
            "short_requests": r.short_requests,
        })
    return rows


def format_comparison(rows: list[dict[str, Any]]) -> str:
    """The `make bench` table (latencies in ms)."""
    def num(v: float | None, fmt: str) -> str:
        return "-" if v is None else format(v, fmt)

    head = (f"{'conc':>4} {'server tok/s':>12} {'ceiling (B)':>13} {'ratio':>6} "
            f"{'best (B)':>12} {'ratio':>6} {'ttft p50/p90 ms':>16} {'itl p50/p90 ms':>15} "
            f"{'reqs':>5} {'err':>4}")
    lines = [head]
    for row in rows:
        ceil = (f"{row['ceiling_tokens_per_s']:.1f} ({row['ceiling_batch']})"
                if row["ceiling_tokens_per_s"] else "-")
        best = (f"{row['best_ceiling_tokens_per_s']:.1f} ({row['best_ceiling_batch']})"
                if row["best_ceiling_tokens_per_s"] else "-")
        lines.append(
            f"{row['concurrency']:>4} {row['server_tokens_per_s']:>12.1f} {ceil:>13} "
            f"{num(row['ratio'], '.2f'):>6} {best:>12} {num(row['ratio_to_best'], '.2f'):>6} "
            f"{_ms(row['ttft_p50_s']) + '/' + _ms(row['ttft_p90_s']):>16} "
            f"{_ms(row['itl_p50_s']) + '/' + _ms(row['itl_p90_s']):>15} "
            f"{row['requests']:>5} {row['errors']:>4}"
        )
    for row in rows:
        if row["errors"]:
            lines.append(f"c={row['concurrency']}: e.g. {row['error_sample']}")
        if row["short_requests"]:
            lines.append(f"c={row['concurrency']}: {row['short_requests']} requests stopped "
                         "before max_tokens (end-of-turn not banned?)")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n")[0]
                                if __doc__ else None)
    p.add_argument("--json", dest="json_path", help="write every figure as JSON to this path")
    p.add_argument("--skip-ceiling", action="store_true", help="no in-process engine ceiling")
    p.add_argument("--skip-server", action="store_true", help="no server load test")
    p.add_argument("--url", help="measure this already running server instead of starting one")
    p.add_argument("--model", type=Path, default=None,
                   help="GGUF path for the ceiling and the server (default: bundled SmolLM2)")
    p.add_argument("--model-name", default=None,
                   help="model id to send (default: the server's first /v1/models id)")
    p.add_argument("--api-key", default=None)
    p.add_argument("--concurrency", type=parse_int_list, default=list(DEFAULT_CONCURRENCY))
    p.add_argument("--requests-per-client", type=int, default=None,
                   help="default: max(2, 8 // concurrency)")
    p.add_argument("--max-tokens", type=int, default=DEFAULT_MAX_TOKENS)
    p.add_argument("--ban-token-ids", type=parse_int_list, default=None,
                   help="logit_bias -100 ids (default: the model's end-of-generation and "
                        "control tokens, read from its vocabulary)")
    p.add_argument("--max-sequences", type=int, default=16, help="passed to chatd serve")
    p.add_argument("--threads", type=int, default=0,
                   help="CPU threads for ceiling and server (default: physical cores)")
    p.add_argument("--serve-arg", action="append", default=[],
                   help="extra `chatd serve` arguments, e.g. --serve-arg='--prefill-chunk 128'")
    p.add_argument("--startup-timeout", type=float, default=120.0)
    p.add_argument("--ceiling-steps", type=int, default=None,
                   help="timed decode steps (default: --max-tokens, the server's workload)")
    p.add_argument("--ceiling-prompt-tokens", type=int, default=64,
                   help="prompt per sequence (the bench prompt is ~61 tokens with the "
                        "SmolLM2 chat template)")
    p.add_argument("--ceiling-reps", type=int, default=3)
    p.add_argument("--rss-requests", type=int, default=1000,
                   help=f"requests ({RSS_MAX_TOKENS} tokens, c={RSS_CONCURRENCY}) over which "
                        "the server's memory growth is measured after a warm-up (0: skip)")
    return p


def batch_copy(args: argparse.Namespace) -> Path | None:
    """The dense copy that a server with these arguments decodes steps of 2+ sequences
    on (`--dense-decode auto`, engine/weights.py), else None: a batch's ceiling is
    measured on the weights the server runs it on."""
    served = build_chatd_parser().parse_args(
        ["serve", *(a for extra in args.serve_arg for a in shlex.split(extra))])
    if (served.dense_decode == "off" or served.deterministic or served.weights != "stored"
            or gpu_offload_supported()):
        return None
    info = load_model_info(args.model, None)
    if (int(info.metadata.get("general.file_type", -1)) not in SLOW_PROMPT_FILE_TYPES
            or weights_interleaved(info.path)):
        return None
    return dense_copy(info, dense_file_type(), threads=args.threads or default_threads())


def _measure_ceiling(batch_sizes: list[int], args: argparse.Namespace) -> CeilingResult:
    def measure(model: Path | None, sizes: list[int]) -> CeilingResult:
        return measure_ceiling(model, sizes, prompt_tokens=args.ceiling_prompt_tokens,
                               steps=args.ceiling_steps or args.max_tokens,
                               reps=args.ceiling_reps, n_threads=args.threads or None,
                               progress=True)

    copy = batch_copy(args)
    if copy is None or batch_sizes == [1]:
        return measure(args.model, batch_sizes)
    one = measure(args.model, [1])
    batches = measure(copy, [b for b in batch_sizes if b > 1])
    return replace(one, model=f"{one.model} (B=1); {batches.model} (B>1)",
                   decode=[*one.decode, *batches.decode])


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    started = time.monotonic()
    doc: dict[str, Any] = {
        "machine": {"platform": platform.platform(), "python": platform.python_version(),
                    "cpus": os.cpu_count(), "processor": platform.processor()},
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
    }
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    doc["machine"]["loadavg_1m_at_start"] = round(load, 2)
    if load > 0.5 * (os.cpu_count() or 1):
        print(f"warning: the machine is busy (1-minute load average {load:.1f} on "
              f"{os.cpu_count()} CPUs); every figure below will be low and noisy", flush=True)
    ceiling: CeilingResult | None = None
    batch_sizes: list[int] = []
    if not args.skip_ceiling:
        batch_sizes = sorted(set(DEFAULT_BATCH_SIZES) | set(args.concurrency))
        if not args.skip_server and not args.url:
            batch_sizes = sorted({min(b, args.max_sequences) for b in batch_sizes})
        print(f"engine ceiling, batch sizes {batch_sizes} ...", flush=True)
        ceiling = _measure_ceiling(batch_sizes, args)
        print(format_ceiling(ceiling), flush=True)
        doc["ceiling"] = ceiling.to_dict()

    rc = 0
    if not args.skip_server:
        ban = args.ban_token_ids
        if ban is None:
            ban = special_token_ids(args.model)
        doc["ban_token_ids"] = ban
        batch_cap = None if args.url else args.max_sequences
        repeat: LoadResult | None = None
        repeat_spec: dict[str, Any] = {}
        try:
            if args.url:
                print(f"load on {args.url} ...", flush=True)
                runs, _ = run_client(_drive(args.url, args, ban))
            else:
                with chatd_server(args) as (base, server_pid):
                    print("closed-loop load ...", flush=True)
                    runs, doc["server_cpu"] = run_client(_drive(base, args, ban, server_pid))
                    print("constrained (json_schema) load ...", flush=True)
                    constrained = run_client(_drive_constrained(base, args, ban))
                    if ceiling is not None and 1 in args.concurrency:
                        print("c=1 paired with the B=1 ceiling ...", flush=True)
                        doc["c1_paired"] = run_client(_paired_c1(base, args, ban, server_pid))
                    print("repetitive workload (speculation's case) ...", flush=True)
                    repeat, repeat_spec = _repeat_row(base, args, ban)
                    if args.rss_requests > 0:
                        print(f"memory over {args.rss_requests} requests ...", flush=True)
                        doc["rss"] = _rss_run(base, server_pid, args, ban)
                    if ceiling is not None:
                        # Again, beside the now idle server: ratios use the higher one.
                        print("engine ceiling again, after the load ...", flush=True)
                        after = _measure_ceiling(batch_sizes, args)
                        print(format_ceiling(after), flush=True)
                        doc["ceiling_after"] = after.to_dict()
                        ceiling = ceiling.higher_of(after)
                        doc["ceiling_used"] = ceiling.to_dict()
        except (RuntimeError, httpx.HTTPError, OSError) as exc:
            print(f"server benchmark failed: {exc}", file=sys.stderr)
            doc["server_error"] = str(exc)
            runs, rc = [], 2
        rows = compare(runs, ceiling, batch_cap)
        doc["server"] = [r.summary() for r in runs]
        if not args.url and rc == 0:
            crows = constrained
            doc["constrained"] = crows
            print("\nconstrained decoding cost (per-stream decode tok/s, medians over "
                  f"{CONSTRAINED_ROUNDS} ABBA rounds; ratio = geometric mean of the rounds' "
                  "constrained / plain, target >= 0.90)")
            for row in crows:
                print(f"  c={row['concurrency']:<3d} plain {row['plain_decode_tok_s']}  "
                      f"constrained {row['constrained_decode_tok_s']}  ratio {row['ratio']}")
        doc["comparison"] = rows
        if repeat is not None:
            doc["repeat"] = {**compare([repeat], ceiling, batch_cap)[0],
                             "chatd_speculation": repeat_spec}
        paired = doc.get("c1_paired")
        if paired:
            print(f"\nc=1 paired with the B=1 ceiling ({paired['rounds']} rounds, each "
                  "against the mean of the ceilings just before and after it): server "
                  f"{paired['server_tokens_per_s']} tok/s, ceiling "
                  f"{paired['ceiling_tokens_per_s']} tok/s, ratio {paired['ratio']} "
                  "(geometric mean; target >= 0.95)")
            print(f"  the same requests without streaming: ratio {paired['json_ratio']} "
                  "(the engine's share of the gap; the rest is the cost of streaming)")
            print(f"  CPU per token taken from decoding: server event loop "
                  f"{paired['server_event_loop_cpu_ms_per_token']} ms, load generator "
                  f"{paired['client_cpu_ms_per_token']} ms")
        if doc.get("server_cpu"):
            print("\nserver CPU per generated token, ms, over each closed-loop run (the "
                  "engine thread includes its share of llama.cpp's compute; 'outside "
                  "decode' is its wall time in steps outside llama_decode: planning, "
                  "sampling, handing tokens over)")
            print(_format_cpu(doc["server_cpu"]))
        if doc.get("rss"):
            rss = doc["rss"]
            growth = "-" if rss["growth"] is None else f"{100 * rss['growth']:+.1f}%"
            print(f"\nserver RSS over {rss['requests']} requests (c={rss['concurrency']}, "
                  f"{rss['max_tokens']} tokens each) after a {rss['warmup_requests']}-request "
                  f"warm-up: {rss['rss_mib']} MiB, growth {growth} (target < 5%), "
                  f"{rss['errors']} errors; event loop CPU "
                  f"{rss.get('event_loop_ms_per_request')} ms a request")
        if rows:
            print()
            again = " (the higher of the runs before and after the load)" \
                if "ceiling_after" in doc else ""
            print(f"server vs engine ceiling{again} ({args.max_tokens} tokens per request, "
                  "summed tok/s; ratio = server / ceiling)")
            print(format_comparison(rows))
            if "repeat" in doc:
                rep = doc["repeat"]
                print(f"repetitive workload (greedy 'repeat this text', c=1, chatd's default "
                      f"speculation): {rep['server_tokens_per_s']} tok/s, B=1 ceiling "
                      f"{rep['ceiling_tokens_per_s'] or '-'}, ratio {rep['ratio'] or '-'}; "
                      f"{format_speculation(rep['chatd_speculation'])}")
        checked = [*rows, *(doc[key] for key in ("repeat", "rss") if key in doc)]
        if rc == 0 and any(r["errors"] for r in checked):
            rc = 1
    if hasattr(os, "getloadavg"):
        doc["machine"]["loadavg_1m_at_end"] = round(os.getloadavg()[0], 2)
    doc["seconds"] = round(time.monotonic() - started, 1)
    print(f"\nbenchmark took {doc['seconds']:.0f}s")
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(doc, indent=2) + "\n")
        print(f"wrote {args.json_path}")
    return rc


if __name__ == "__main__":
    sys.exit(main())
