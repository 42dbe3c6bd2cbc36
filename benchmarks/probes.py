"""What a benchmark reads from a running chatd beside its answers: the engine's
counters (GET /health), and on Linux the CPU time of its threads and its resident
memory (/proc).

CPU is read per thread from /proc/PID/task/TID/stat: the event loop is the main
thread (TID = PID); the engine is the thread named "chatd-engine" (the server must
be started through `benchmarks.named_threads` on Pythons before 3.14). llama.cpp's
OpenMP workers are started by the engine thread and inherit its name: the engine
thread is the first of them, the rest are reported as the llama.cpp workers. The
engine thread also does its share of llama.cpp's compute (OpenMP runs one part of
every parallel loop on the calling thread).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

ENGINE_THREAD = "chatd-engine"  # chatd.engine.engine names its thread so
SPEC_COUNTERS = ("steps", "tokens_generated", "spec_drafted_tokens", "spec_accepted_tokens")


def health(base: str) -> dict[str, Any]:
    """GET /health of a server whose base URL has no /v1."""
    return httpx.get(f"{base.removesuffix('/v1')}/health", timeout=10.0).json()


def _cpu_s(stat_path: Path) -> float | None:
    """utime + stime of a /proc stat file, in seconds."""
    try:
        fields = stat_path.read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def thread_cpu_s(pid: int, tid: int | None = None) -> float | None:
    """CPU seconds of one thread of `pid` (default its main thread: chatd's event loop)."""
    return _cpu_s(Path(f"/proc/{pid}/task/{tid or pid}/stat"))


def threads_named(pid: int, name: str) -> list[int]:
    """Thread ids of `pid` whose OS name is `name`, oldest (lowest id) first."""
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            if (task / "comm").read_text().strip() == name:
                found.append(int(task.name))
        except OSError:
            continue  # the thread ended meanwhile
    return sorted(found)


def rss_bytes(pid: int) -> int | None:
    """Resident set size of `pid` (VmRSS), or None where /proc lacks it."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


@dataclass(frozen=True)
class CpuSample:
    """CPU seconds so far of a chatd process and of its threads, with its counters."""

    process: float | None
    event_loop: float | None
    engine: float | None
    llama_workers: float | None
    tokens_generated: int
    engine_host: float | None = None  # engine thread seconds in steps, outside llama_decode

    @classmethod
    def take(cls, pid: int, base: str) -> CpuSample:
        engine, *workers = threads_named(pid, ENGINE_THREAD) or [None]
        counters = health(base)
        host = counters.get("engine_host_seconds")
        return cls(process=_cpu_s(Path(f"/proc/{pid}/stat")),
                   event_loop=thread_cpu_s(pid),
                   engine=thread_cpu_s(pid, engine) if engine else None,
                   llama_workers=sum(thread_cpu_s(pid, t) or 0.0 for t in workers)
                   if workers else None,
                   tokens_generated=int(counters["tokens_generated"]),
                   engine_host=float(host) if host is not None else None)


def cpu_per_token(before: CpuSample, after: CpuSample) -> dict[str, Any]:
    """Milliseconds of CPU per generated token between two samples, per thread kind."""
    tokens = after.tokens_generated - before.tokens_generated

    def ms(key: str) -> float | None:
        a, b = getattr(after, key), getattr(before, key)
        return round(1000 * (a - b) / tokens, 3) if a is not None and b is not None \
            and tokens > 0 else None
    return {"tokens": tokens, "engine_ms": ms("engine"), "event_loop_ms": ms("event_loop"),
            "llama_workers_ms": ms("llama_workers"), "process_ms": ms("process"),
            "engine_host_ms": ms("engine_host")}


def speculation(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """Speculative decoding between two GET /health answers: tokens per engine step
    (1.0 without speculation at one sequence) and the accepted draft tokens."""
    d = {k: int(after.get(k, 0)) - int(before.get(k, 0)) for k in SPEC_COUNTERS}
    steps, drafted = d["steps"], d["spec_drafted_tokens"]
    return {**d,
            "tokens_per_step": round(d["tokens_generated"] / steps, 3) if steps else None,
            "accepted_per_step": round(d["spec_accepted_tokens"] / steps, 3) if steps else None,
            "acceptance": round(d["spec_accepted_tokens"] / drafted, 3) if drafted else None}


def format_speculation(spec: dict[str, Any]) -> str:
    acceptance = "-" if spec["acceptance"] is None else f"{100 * spec['acceptance']:.0f}%"
    return (f"{spec['tokens_per_step']} tokens per engine step ({spec['accepted_per_step']} "
            f"accepted draft tokens per step; {acceptance} of {spec['spec_drafted_tokens']} "
            "drafted accepted)")
