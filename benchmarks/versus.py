"""chatd against llama.cpp's llama-server: same model, cores, slots and context, same load.

chatd's claim is to serve more than llama-server on the same machine. This measures
it with each server as its users run it: llama-server started with only
`-m MODEL -t THREADS -c CTX*SLOTS -np SLOTS` and its own default sampling, chatd
with its own defaults and `--threads THREADS --max-sequences SLOTS --ctx-size CTX
--kv-cells CTX*SLOTS`: only the threads, the slots and the context are matched
(llama-server's `-c` is the total that its slots split, chatd's `--ctx-size` is per
sequence and `--kv-cells` the shared pool, so each side holds the same context per
sequence and the same cells in all). Requests carry only what an OpenAI client sends:
the messages, `max_tokens`, `temperature` (0 for greedy), a seed, and a `logit_bias`
that bans the end-of-turn tokens so that every request runs to `max_tokens` on both.

Rows (`--rows`, all by default):

- greedy, t1: `temperature` 0 and 1.0 at each concurrency (1, 4, 8, 16);
- ttft: time to first token for fresh prompts of ~1,000 and ~4,000 tokens at
  concurrency 1 (random words, different per request, the same on both servers);
- repeat: "repeat this text" greedy at concurrency 1, speculative decoding's case
  (on by default in chatd, behind flags in llama-server), with chatd's tokens per
  engine step from its GET /health counters;
- same: an extra, labelled as such: llama-server configured as chatd's engine (its
  KV type and layout, flash attention, 512-token batches) sampling the whole
  distribution as chatd does (`--llama-server-sampling own` keeps its truncating
  defaults), temperature 0.7, streaming and at concurrency 1 also not.

The same closed-loop load generator drives both servers in alternating rounds (AB,
BA, AB, ...), so a neighbour's burst on a shared machine hits both. First each server
gets one short request per slot, untimed (llama-server caches prompts per slot). Each round's
chatd / llama-server ratio is taken (tokens/s, and TTFT p50 and p90), and the
geometric mean over rounds is reported, beside the issue's targets.

    python -m benchmarks.versus --llama-server /path/to/llama-server
                                [--concurrency 1,4,8,16] [--rounds 4] [--rows greedy,ttft]
                                [--json out.json]

llama-server is not a dependency of chatd: build it from the llama.cpp that
llama-cpp-python's source release vendors, so both run the same kernels (the README
gives the commands).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import operator
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import llama_cpp as lc

from benchmarks.ceiling import special_token_ids
from benchmarks.probes import format_speculation, health, speculation
from benchmarks.run import _free_port, chatd_server, server_process
from benchmarks.workloads import REPEAT_PROMPT, fresh_prompt
from chatd.bench.loadgen import (
    DEFAULT_CONCURRENCY,
    DEFAULT_MAX_TOKENS,
    DEFAULT_PROMPT,
    LoadResult,
    default_requests_per_client,
    parse_int_list,
    run_client,
    run_load,
)
from chatd.config import Settings
from chatd.engine.llama import KV_CACHE_TYPE, default_threads
from chatd.models.registry import bundled_model_path, default_model_name

# llama-server's names for the KV cache types chatd may use.
_KV_TYPE_NAMES = {lc.GGML_TYPE_F16: "f16", lc.GGML_TYPE_Q8_0: "q8_0"}
N_BATCH = Settings.batch_tokens  # chatd serve's default tokens per llama_decode

# Per sequence: a ~4,000-token prompt, the chat template and a few answer tokens.
DEFAULT_CTX_PER_SEQUENCE = 4608
TTFT_PROMPT_TOKENS = (1000, 4000)
TTFT_MAX_TOKENS = 8
ROW_KINDS = ("greedy", "t1", "ttft", "repeat", "same")
AS_USERS_RUN = "as users run them"
SAME_SAMPLING = "extra: same sampling"

# OpenAI's sampling: the whole distribution at the request's temperature. llama-server's
# own defaults truncate it (top_k 40, top_p 0.95, min_p 0.05), which is less work per
# token (measured after a decode: ~110 us against ~475 us for its full-distribution
# chain) and a different distribution from the one an OpenAI request asks for.
OPENAI_SAMPLING = ["--top-k", "0", "--top-p", "1.0", "--min-p", "0.0"]


def llama_server_default_command(binary: Path, model: Path, alias: str, port: int,
                                 threads: int, ctx_per_sequence: int,
                                 slots: int) -> list[str]:
    """llama-server as its users run it: the model, threads, and the slots and context
    matched to chatd's (`-c` is the total, split across the `-np` slots); nothing else
    but where to listen and the model id to list."""
    return [str(binary), "-m", str(model), "-t", str(threads),
            "-c", str(ctx_per_sequence * slots), "-np", str(slots),
            "--host", "127.0.0.1", "--port", str(port), "--alias", alias]


def llama_server_command(binary: Path, model: Path, alias: str, port: int, threads: int,
                         kv_cells: int, parallel: int, own_sampling: bool = False,
                         unified: bool = True) -> list[str]:
    """llama-server's flags for what chatd's engine does (see chatd.engine.llama), for
    the same-sampling extra: `kv_cells` in chatd's KV type and layout (one unified
    pool, or a stream per slot), flash attention, 512-token batches, the same threads
    for decode and prompt processing, and unless `own_sampling`, OpenAI's sampling
    defaults."""
    kv_type = _KV_TYPE_NAMES[KV_CACHE_TYPE]
    return [str(binary), "-m", str(model), "--host", "127.0.0.1", "--port", str(port),
            "-t", str(threads), "-tb", str(threads), "-c", str(kv_cells), "-np", str(parallel),
            *(["--kv-unified"] if unified else []), "-fa", "on", "-ctk", kv_type, "-ctv", kv_type,
            "-b", str(N_BATCH), "-ub", str(N_BATCH), "--no-webui", "--alias", alias,
            *([] if own_sampling else OPENAI_SAMPLING)]


@contextlib.contextmanager
def llama_server(command: Callable[[int], list[str]], timeout: float) -> Iterator[str]:
    """Start llama-server with `command(port)`; yield its base URL."""
    port = _free_port()
    with server_process("llama-server", command(port), port, timeout) as (base, _pid):
        yield base


def _version(binary: Path) -> str:
    try:
        out = subprocess.run([str(binary), "--version"], capture_output=True, text=True,
                             timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unknown ({exc})"
    lines = (out.stdout + out.stderr).strip().splitlines()
    return next((ln for ln in lines if ln.startswith("version")), lines[-1] if lines else "?")


def _geomean(values: list[float]) -> float | None:
    return math.exp(sum(map(math.log, values)) / len(values)) if values else None


# ---- rows ---------------------------------------------------------------------------------

# (figure, comparison, bound): the targets for one run of `make versus`.
Target = tuple[str, str, float]
_OPS = {">=": operator.ge, "<=": operator.le}


@dataclass(frozen=True)
class Row:
    """One line of a table: the same load on both servers, in alternating rounds."""

    label: str
    concurrency: int
    temperature: float
    section: str = AS_USERS_RUN
    stream: bool = True
    prompt: str = DEFAULT_PROMPT
    fresh_prompt_tokens: int | None = None  # fresh random prompts of about this size
    max_tokens: int | None = None           # None: --max-tokens
    requests_per_client: int | None = None  # None: --requests-per-client or the default
    targets: tuple[Target, ...] = ()


def plan(args: argparse.Namespace) -> list[Row]:
    """The rows `--rows` asks for, in the order they run."""
    rows: list[Row] = []
    for kind, label, temp in (("greedy", "greedy", 0.0), ("t1", "T=1", 1.0)):
        if kind in args.rows:
            for conc in args.concurrency:
                targets: tuple[Target, ...] = {
                    1: (("ratio", ">=", 1.0),),
                    16: (("ratio", ">=", 1.05), ("ttft_p90_ratio", "<=", 1.0))}.get(conc, ())
                rows.append(Row(label, conc, temp, targets=targets))
    if "ttft" in args.rows:
        rows += [Row(f"TTFT ~{n}-token prompt", 1, 0.0, fresh_prompt_tokens=n,
                     max_tokens=TTFT_MAX_TOKENS, requests_per_client=args.ttft_requests,
                     targets=(("ttft_p50_ratio", "<=", 1.0),)) for n in args.ttft_prompts]
    if "repeat" in args.rows:
        rows.append(Row("repeat (speculation's case)", 1, 0.0, prompt=REPEAT_PROMPT,
                        targets=(("ratio", ">=", 1.5),)))
    if "same" in args.rows:
        for conc in args.same_sampling_concurrency:
            rows += [Row("same sampling, T=0.7", conc, 0.7, section=SAME_SAMPLING,
                         stream=stream) for stream in ((True, False) if conc == 1 else (True,))]
    return rows


def _prompt(row: Row, round_no: int) -> str | Callable[[int, int], str]:
    """The row's prompt; fresh ones differ per round, client and request, and each
    server gets the same ones in the same round."""
    n = row.fresh_prompt_tokens
    if n is None:
        return row.prompt
    return lambda client, index: fresh_prompt(n, ((n * 1000 + round_no) * 1000 + client) * 1000
                                              + index)


def _summary(runs: list[LoadResult]) -> dict[str, Any]:
    def mean(key: str) -> float | None:
        vals = [v for r in runs if (v := r.summary()[key]) is not None]
        return round(sum(vals) / len(vals), 4) if vals else None
    return {"tokens_per_s": [round(r.tokens_per_s, 1) for r in runs],
            "mean_tokens_per_s": mean("tokens_per_s"),
            "ttft_p50_s": mean("ttft_p50_s"), "ttft_p90_s": mean("ttft_p90_s"),
            "itl_p50_s": mean("itl_p50_s"), "prompt_tokens": mean("prompt_tokens_mean"),
            "errors": sum(r.errors for r in runs),
            "short_requests": sum(r.short_requests for r in runs)}


def _ratio(pairs: list[tuple[float | None, float | None]]) -> tuple[list[float], float | None]:
    """Per-round chatd / llama-server ratios and their geometric mean."""
    ratios = [a / b for a, b in pairs if a and b]
    gm = _geomean(ratios)
    return [round(x, 3) for x in ratios], (round(gm, 3) if gm is not None else None)


def check_targets(row: dict[str, Any], targets: tuple[Target, ...]) -> list[dict[str, Any]]:
    return [{"figure": figure, "op": op, "bound": bound,
             "met": row[figure] is not None and _OPS[op](row[figure], bound)}
            for figure, op, bound in targets]


async def _rounds(urls: dict[str, str], model: str, row: Row, args: argparse.Namespace,
                  ban: list[int]) -> dict[str, Any]:
    runs: dict[str, list[LoadResult]] = {name: [] for name in urls}
    names = list(urls)
    for r in range(args.rounds):
        for name in (names if r % 2 == 0 else names[::-1]):
            runs[name].append(await run_load(
                urls[name], model, row.concurrency, stream=row.stream, ban_tokens=ban,
                requests_per_client=row.requests_per_client or args.requests_per_client
                or default_requests_per_client(row.concurrency),
                max_tokens=row.max_tokens or args.max_tokens, prompt=_prompt(row, r),
                temperature=row.temperature,
                warmup=r == 0 and row.fresh_prompt_tokens is None))
        print(f"  {row.label} c={row.concurrency} {'stream' if row.stream else 'json'} "
              f"round {r + 1}: "
              + "  ".join(f"{n} {runs[n][-1].tokens_per_s:6.1f} tok/s "
                          f"TTFT p50 {1000 * (runs[n][-1].ttft(50) or 0):.0f} ms"
                          for n in names), flush=True)
    chatd, other = runs["chatd"], runs["llama-server"]
    out: dict[str, Any] = {"row": row.label, "section": row.section,
                           "concurrency": row.concurrency, "stream": row.stream,
                           "temperature": row.temperature,
                           "max_tokens": row.max_tokens or args.max_tokens,
                           "fresh_prompt_tokens": row.fresh_prompt_tokens,
                           **{name: _summary(res) for name, res in runs.items()}}
    out["round_ratios"], out["ratio"] = _ratio(
        [(a.tokens_per_s, b.tokens_per_s) for a, b in zip(chatd, other, strict=True)])
    for q in (50, 90):
        out[f"ttft_p{q}_round_ratios"], out[f"ttft_p{q}_ratio"] = _ratio(
            [(a.ttft(q), b.ttft(q)) for a, b in zip(chatd, other, strict=True)])
    out["targets"] = check_targets(out, row.targets)
    return out


async def _warm_every_slot(urls: dict[str, str], model: str, slots: int,
                           ban: list[int]) -> None:
    """One short request per slot on each server, untimed: llama-server caches the
    prompt per slot, so a slot's first request would otherwise pay for the shared
    chat-template prefix once, in whichever row first reaches that many clients."""
    for url in urls.values():
        await run_load(url, model, slots, requests_per_client=1, max_tokens=4,
                       ban_tokens=ban, warmup=False)


def _measure(urls: dict[str, str], model: str, row: Row, args: argparse.Namespace,
             ban: list[int]) -> dict[str, Any]:
    """One row, with chatd's speculation counters over it (GET /health before and after)."""
    before = health(urls["chatd"])
    result = run_client(_rounds(urls, model, row, args, ban))
    result["chatd_speculation"] = speculation(before, health(urls["chatd"]))
    return result


# ---- output -------------------------------------------------------------------------------

_FIGURE_NAMES = {"ratio": "tok/s", "ttft_p50_ratio": "TTFT p50", "ttft_p90_ratio": "TTFT p90"}
# Where each figure's per-round ratios are: the table shows their range beside the mean,
# and how many rounds alone would meet a target, since one round's ratio moves by up to
# ~0.2 on a shared machine.
_ROUND_KEYS = {"ratio": "round_ratios", "ttft_p50_ratio": "ttft_p50_round_ratios",
               "ttft_p90_ratio": "ttft_p90_round_ratios"}


def _format(rows: list[dict[str, Any]]) -> str:
    def ms(v: float | None) -> str:
        return f"{1000 * v:.0f}" if v is not None else "-"

    def ttft(row: dict[str, Any], q: int) -> str:
        a, b = row["chatd"][f"ttft_p{q}_s"], row["llama-server"][f"ttft_p{q}_s"]
        return f"{ms(a)} / {ms(b)}: {spread(row, f'ttft_p{q}_ratio')}"

    def targets(row: dict[str, Any]) -> str:
        return ", ".join(f"{_FIGURE_NAMES[t['figure']]} {t['op']} {t['bound']}: "
                         f"{'met' if t['met'] else 'NOT met'}{rounds_met(row, t)}"
                         for t in row.get("targets", []))

    def rounds_met(row: dict[str, Any], target: dict[str, Any]) -> str:
        per_round = row.get(_ROUND_KEYS[target["figure"]]) or []
        if len(per_round) < 2:
            return ""
        met = sum(_OPS[target["op"]](r, target["bound"]) for r in per_round)
        return f" (by {met} of {len(per_round)} rounds)"

    def spread(row: dict[str, Any], figure: str) -> str:
        per_round = row.get(_ROUND_KEYS[figure]) or []
        value = row.get(figure) or "-"
        if len(per_round) < 2:
            return f"{value}"
        return f"{value} ({min(per_round):.2f}-{max(per_round):.2f})"

    lines = ["| row | conc | mode | chatd tok/s | llama-server tok/s | chatd / llama-server "
             "| TTFT p50 ms chatd / l-s: ratio | TTFT p90 ms chatd / l-s: ratio "
             "| ITL p50 ms (chatd / l-s) | errors | targets |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        a, b = row["chatd"], row["llama-server"]
        lines.append(
            f"| {row.get('row', '')} | {row['concurrency']} "
            f"| {'stream' if row['stream'] else 'json'} "
            f"| {a['mean_tokens_per_s']:.1f} | {b['mean_tokens_per_s']:.1f} "
            f"| {spread(row, 'ratio')} "
            f"| {ttft(row, 50)} | {ttft(row, 90)} "
            f"| {ms(a['itl_p50_s'])} / {ms(b['itl_p50_s'])} "
            f"| {a['errors']} / {b['errors']} | {targets(row)} |")
    return "\n".join(lines)


def _print_section(title: str, rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    print(f"\n{title}")
    print(_format(rows))
    for row in rows:
        spec = row.get("chatd_speculation")
        if row.get("fresh_prompt_tokens"):
            print(f"  {row['row']}: prompt tokens as each server counts them: chatd "
                  f"{row['chatd']['prompt_tokens'] or 0:.0f}, llama-server "
                  f"{row['llama-server']['prompt_tokens'] or 0:.0f}")
        elif spec and row["concurrency"] == 1 and row["stream"]:
            print(f"  chatd, {row['row']} c=1: {format_speculation(spec)}")


# ---- command line -------------------------------------------------------------------------


def _row_kinds(text: str) -> list[str]:
    kinds = [k for k in text.replace(" ", "").split(",") if k]
    if bad := [k for k in kinds if k not in ROW_KINDS]:
        raise argparse.ArgumentTypeError(f"unknown rows {bad}; choose from {ROW_KINDS}")
    return kinds


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.versus",
                                description=__doc__.split("\n")[0] if __doc__ else None)
    p.add_argument("--llama-server", type=Path, required=True, help="llama-server binary")
    p.add_argument("--model", type=Path, default=None, help="GGUF (default: bundled SmolLM2)")
    p.add_argument("--rows", type=_row_kinds, default=list(ROW_KINDS),
                   help=f"which rows, comma-separated (default: all of {','.join(ROW_KINDS)})")
    p.add_argument("--concurrency", type=parse_int_list, default=list(DEFAULT_CONCURRENCY),
                   help="for the greedy and T=1 rows")
    p.add_argument("--rounds", type=int, default=4, help="alternating rounds per row")
    p.add_argument("--requests-per-client", type=int, default=None,
                   help="per round (default: max(2, 8 // concurrency))")
    p.add_argument("--max-tokens", type=int, default=DEFAULT_MAX_TOKENS)
    p.add_argument("--max-sequences", type=int, default=16,
                   help="slots: chatd --max-sequences and llama-server -np")
    p.add_argument("--ctx-size", type=int, default=DEFAULT_CTX_PER_SEQUENCE,
                   help="context per sequence: chatd --ctx-size, and llama-server -c this "
                        "times the slots (chatd --kv-cells the same total)")
    p.add_argument("--threads", type=int, default=0, help="default: physical cores")
    p.add_argument("--serve-arg", action="append", default=[],
                   help="extra `chatd serve` arguments, for experiments only (the rows are "
                        "meant for chatd's defaults), e.g. --serve-arg='--kv-cache f16'")
    p.add_argument("--ttft-prompts", type=parse_int_list, default=list(TTFT_PROMPT_TOKENS),
                   help="prompt sizes in tokens of the TTFT rows")
    p.add_argument("--ttft-requests", type=int, default=2,
                   help="requests per round in each TTFT row")
    p.add_argument("--same-sampling-concurrency", type=parse_int_list, default=[1, 16],
                   help="concurrencies of the same-sampling extra")
    p.add_argument("--llama-server-sampling", choices=("openai", "own"), default="openai",
                   help="in the same-sampling extra: openai: the whole distribution, as "
                        "chatd and OpenAI sample (default); own: llama-server's truncating "
                        "defaults")
    p.add_argument("--startup-timeout", type=float, default=120.0)
    p.add_argument("--json", dest="json_path", help="write every figure as JSON to this path")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not args.llama_server.is_file():
        print(f"no llama-server binary at {args.llama_server}", file=sys.stderr)
        return 2
    model = args.model or bundled_model_path()
    alias = default_model_name(model)
    threads = args.threads or default_threads()
    slots, ctx = args.max_sequences, args.ctx_size
    ban = special_token_ids(model)
    # chatd keeps its defaults; only threads, slots and context are set.
    serve = argparse.Namespace(max_sequences=slots, model=args.model, threads=threads,
                               serve_arg=[f"--ctx-size {ctx}", f"--kv-cells {ctx * slots}",
                                          *args.serve_arg],
                               startup_timeout=args.startup_timeout)
    rows = plan(args)
    doc: dict[str, Any] = {"llama_server_version": _version(args.llama_server),
                           "threads": threads, "slots": slots, "ctx_per_sequence": ctx,
                           "chatd_serve_args": serve.serve_arg,
                           "llama_server_sampling": args.llama_server_sampling, "rows": []}
    as_users = [r for r in rows if r.section == AS_USERS_RUN]
    extra = [r for r in rows if r.section == SAME_SAMPLING]
    with chatd_server(serve) as (chatd_base, _pid):
        state = health(chatd_base)
        kv_cells, layout = int(state["kv_cells_total"]), str(state.get("kv_layout", "unified"))
        doc["kv_cells"], doc["kv_layout"] = kv_cells, layout
        for section, section_rows, command in (
            (AS_USERS_RUN, as_users, lambda port: llama_server_default_command(
                args.llama_server, model, alias, port, threads, ctx, slots)),
            (SAME_SAMPLING, extra, lambda port: llama_server_command(
                args.llama_server, model, alias, port, threads, kv_cells, slots,
                own_sampling=args.llama_server_sampling == "own", unified=layout == "unified")),
        ):
            if not section_rows:
                continue
            print(f"{section} ...", flush=True)
            with llama_server(command, args.startup_timeout) as ls_base:
                urls = {"chatd": f"{chatd_base}/v1", "llama-server": f"{ls_base}/v1"}
                run_client(_warm_every_slot(urls, alias, slots, ban))
                for row in section_rows:
                    doc["rows"].append(_measure(urls, alias, row, args, ban))
    if args.serve_arg:
        print(f"\nnote: chatd ran with {' '.join(args.serve_arg)}, not its defaults")
    print(f"\nchatd vs {doc['llama_server_version']}, {threads} threads, {slots} slots, "
          f"{ctx} tokens of context per sequence ({ctx * slots} in all; chatd's KV cache "
          f"{kv_cells} cells, {layout} layout), {args.max_tokens} tokens per request "
          "unless the row says; "
          f"ratio = geometric mean over {args.rounds} alternating rounds of chatd / "
          "llama-server, the lowest and highest round in brackets (TTFT: lower is better)")
    _print_section("Each server as its users run it (llama-server: -m -t -c -np only, "
                   "its default sampling; chatd: its defaults)",
                   [r for r in doc["rows"] if r["section"] == AS_USERS_RUN])
    _print_section("Extra, same sampling (not how either is run by default): llama-server "
                   f"configured as chatd's engine ({layout} {_KV_TYPE_NAMES[KV_CACHE_TYPE]} "
                   f"KV, flash attention, {N_BATCH}-token batches), sampling: "
                   f"{args.llama_server_sampling}",
                   [r for r in doc["rows"] if r["section"] == SAME_SAMPLING])
    if any(row[n]["short_requests"] for row in doc["rows"] for n in ("chatd", "llama-server")):
        print("note: some requests ended before max_tokens (a server ignored logit_bias?)")
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(doc, indent=2) + "\n")
        print(f"wrote {args.json_path}")
    return 1 if any(row[n]["errors"] for row in doc["rows"]
                    for n in ("chatd", "llama-server")) else 0


if __name__ == "__main__":
    sys.exit(main())
