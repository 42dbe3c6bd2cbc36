"""`make bench-cluster`: chatd on Ray Serve, scale-out and per-request overhead.

1. Scale: 1 engine replica on one 1-CPU worker node against 2 replicas on two, on a
   local multi-node Ray cluster (ray.cluster_utils.Cluster), the same closed-loop load
   (c=8 and c=16, every request its own chat so routing may spread them). Aggregate
   tokens/s and the ratio. On a machine with as many cores as worker nodes, Ray's own
   processes (GCS, raylets, controller, proxy, ingress) share those cores with the
   engines, so the ratio there understates what separate machines give.
   Beside each run: how many cores the engine replicas' processes used, and how many
   everything else on the machine did (Ray's processes, the load generator).
2. Overhead at c=1: a plain `chatd serve --threads 1` against the 1-replica
   deployment, TTFT and ITL (the extra hops: Serve's proxy, chatd's ingress, a
   streaming handle to the engine replica).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from chatd.bench.loadgen import DEFAULT_PROMPT, LoadResult, format_table, run_load
from chatd.cluster.localcluster import free_port, local_cluster
from chatd.config import Settings


def _prompt(client: int, index: int) -> str:
    """A new chat per request: no two share an opening (nor a routing key)."""
    return f"[chat {client}.{index}] {DEFAULT_PROMPT}"


def _load(url: str, conc: int, args: argparse.Namespace) -> LoadResult:
    return asyncio.run(run_load(url + "/v1", None, conc, requests_per_client=args.requests,
                                max_tokens=args.max_tokens, prompt=_prompt))


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _cpu_seconds(pids: list[int]) -> tuple[float, float]:
    """(CPU seconds this machine has spent busy, CPU seconds of the processes `pids`)."""
    with open("/proc/stat") as f:
        ticks = [int(x) for x in f.readline().split()[1:9]]
    busy = sum(ticks) - ticks[3] - ticks[4]  # all but idle and iowait
    own = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            own += int(fields[11]) + int(fields[12])  # utime, stime
        except (OSError, IndexError, ValueError):
            pass
    return busy / CLOCK_TICKS, own / CLOCK_TICKS


def _engine_pids() -> list[int]:
    from ray.util.state import list_actors

    return [a.pid for a in list_actors(filters=[("state", "=", "ALIVE")], detail=True)
            if a.class_name.endswith(":ChatdEngine") and a.pid]


def _measured_load(url: str, conc: int, args: argparse.Namespace
                   ) -> tuple[LoadResult, float, float]:
    """A load run, with the cores the engine replicas and everything else used."""
    pids = _engine_pids()
    busy0, own0 = _cpu_seconds(pids)
    start = time.monotonic()
    result = _load(url, conc, args)
    wall = time.monotonic() - start
    busy1, own1 = _cpu_seconds(pids)
    engines, total = (own1 - own0) / wall, (busy1 - busy0) / wall
    print(f"  c={conc}: engine replicas used {engines:.2f} cores, everything else "
          f"{total - engines:.2f} (of {os.cpu_count()})", flush=True)
    return result, engines, total - engines


def _row(label: str, res: LoadResult) -> dict[str, Any]:
    return {"setup": label, "concurrency": res.concurrency,
            "tokens_per_s": round(res.tokens_per_s, 1), "errors": res.errors,
            "ttft_p50_ms": _ms(res.ttft(50)), "itl_p50_ms": _ms(res.itl(50))}


def _ms(value: float | None) -> float | None:
    return None if value is None else round(1000 * value, 1)


def _plain_chatd(args: argparse.Namespace) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "chatd", "serve", "--port", str(port), "--threads", "1",
         "--store", "off", "--max-sequences", str(args.max_sequences), "--ctx-size", "2048"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    proc.kill()
    raise RuntimeError("plain chatd did not start")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[8, 16])
    parser.add_argument("--requests", type=int, default=3, help="requests per client")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--max-sequences", type=int, default=16)
    parser.add_argument("--c1-requests", type=int, default=8)
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = parser.parse_args(argv)
    settings = Settings(threads=1, max_sequences=args.max_sequences, ctx_size=2048,
                        store="off", webui=False)
    rows: list[dict[str, Any]] = []
    results: dict[int, list[LoadResult]] = {}
    for nodes in (1, 2):
        label = f"{nodes} replica(s) on {nodes} 1-CPU node(s)"
        print(f"== {label}", flush=True)
        with local_cluster(settings, nodes=nodes, replicas=nodes) as (url, _):
            _load(url, 1, argparse.Namespace(**{**vars(args), "requests": 1}))  # warm
            if nodes == 1:
                c1 = asyncio.run(run_load(url + "/v1", None, 1,
                                          requests_per_client=args.c1_requests,
                                          max_tokens=args.max_tokens, prompt=_prompt))
                rows.append(_row("ray serve, 1 replica", c1))
            measured = [_measured_load(url, conc, args) for conc in args.concurrency]
        runs = [r for r, _, _ in measured]
        print(format_table(runs), flush=True)
        results[nodes] = runs
        rows += [{**_row(label, r), "engine_cores": round(e, 2), "other_cores": round(o, 2)}
                 for r, e, o in measured]
    for one, two in zip(results[1], results[2], strict=True):
        ratio = two.tokens_per_s / one.tokens_per_s if one.tokens_per_s else float("nan")
        print(f"c={one.concurrency}: 2 replicas / 1 replica = {ratio:.2f}x aggregate tokens/s")
    print("== plain chatd --threads 1, c=1", flush=True)
    proc, url = _plain_chatd(args)
    try:
        _load(url, 1, argparse.Namespace(**{**vars(args), "requests": 1}))  # warm
        plain = asyncio.run(run_load(url + "/v1", None, 1, requests_per_client=args.c1_requests,
                                     max_tokens=args.max_tokens, prompt=_prompt))
    finally:
        proc.terminate()
        proc.wait(30)
    rows.append(_row("plain chatd", plain))
    ray_c1 = next(r for r in rows if r["setup"] == "ray serve, 1 replica")
    print(f"c=1 TTFT p50: plain {rows[-1]['ttft_p50_ms']} ms, ray serve "
          f"{ray_c1['ttft_p50_ms']} ms; ITL p50: plain {rows[-1]['itl_p50_ms']} ms, "
          f"ray serve {ray_c1['itl_p50_ms']} ms")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
