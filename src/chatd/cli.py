"""`chatd serve`, `chatd chat` and `chatd bench`: argument parsing and start-up wiring."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from chatd.config import API_KEY_ENV, KeyFileError, Settings


def _serve_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="serve the OpenAI Chat Completions API")
    p.add_argument("--model", type=Path, default=None,
                   help="path to a GGUF model file (default: the bundled SmolLM2-135M-Instruct)")
    p.add_argument("--model-name", default=None,
                   help="model id clients send and /v1/models lists (default: from the file name)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--ctx-size", type=int, default=None,
                   help="most tokens (prompt + completion) one sequence may use "
                        "(default: the model's training context, at most 8192)")
    p.add_argument("--kv-cells", type=int, default=None,
                   help="size of the KV cache in tokens (default: 4 x ctx-size)")
    p.add_argument("--kv-layout", choices=["auto", "unified", "split"], default="auto",
                   help="unified: one cell pool all sequences share (prefixes shared for "
                        "free). split: a stream of kv-cells / streams cells per sequence, "
                        "so each reads only its own cells (faster with many sequences; "
                        "prefixes are copied). auto (default): split when --kv-cells holds "
                        "--ctx-size for each of --max-sequences, outside --deterministic")
    p.add_argument("--parked-cells", type=int, default=None,
                   help="prefix-cache cells that may wait in host memory, out of the KV cache "
                        "(default: kv-cells / 4; 0 drops idle entries instead)")
    p.add_argument("--max-sequences", type=int, default=16,
                   help="sequences decoded together in one step (default 16: what a CPU "
                        "still batches profitably); more requests queue")
    p.add_argument("--batch-tokens", type=int, default=512, help="tokens per llama_decode call")
    p.add_argument("--prefill-chunk", type=int, default=64,
                   help="prompt tokens processed per step while other sequences decode")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (default: all cores)")
    add_kv_cache_arguments(p)
    add_weights_arguments(p)
    p.add_argument("--speculate", choices=["ngram", "always", "off"], default="ngram",
                   help="ngram (default): while few sequences decode, guess the next tokens "
                        "from earlier text (prompt lookup) and check them in the same step, "
                        "as many as the measured cost of a step's rows makes worth it. "
                        "always: every guess, whatever it costs. off: one token per step. "
                        "Outputs are exactly those without speculation")
    p.add_argument("--max-n", type=int, default=8, help="largest `n` a request may ask for")
    media = p.add_argument_group("image and audio input")
    media.add_argument("--mmproj", type=Path, default=None, metavar="PATH",
                       help="multimodal projector GGUF for --model (llama.cpp/libmtmd): "
                       "requests may then carry image_url / input_audio parts")
    media.add_argument("--media-fetch", default=None, metavar="HOSTS",
                       help="comma-separated hosts (or addresses/networks, which may be "
                       "private) whose http(s) image URLs the server may fetch; default: "
                       "none, only data: URLs")
    media.add_argument("--media-max-bytes", type=_positive_int, default=10 * 1024 * 1024,
                       help="largest image fetched from a URL (default 10 MB)")
    media.add_argument("--media-timeout", type=_non_negative_float, default=10.0,
                       help="seconds to fetch an image URL (default 10)")
    p.add_argument("--max-body-bytes", type=_positive_int, default=4 * 1024 * 1024,
                   help="largest request body accepted; larger ones get 413 (default 4 MiB)")

    access = p.add_argument_group("access")
    access.add_argument("--api-key", action="append", default=[],
                        help=f"accept this Bearer key (repeatable; also ${API_KEY_ENV}, "
                             "comma-separated). Without keys the API is open.")
    access.add_argument("--api-key-file", type=Path, default=None,
                        help="file with one API key per line ('#' starts a comment)")
    access.add_argument("--metrics-require-key", action="store_true",
                        help="/metrics asks for an API key too (default: open, like /health)")

    limits = p.add_argument_group("rate limits and backpressure")
    limits.add_argument("--rpm", "--requests-per-minute", dest="rpm", type=_positive_int,
                        default=None, help="requests per minute per API key (default: no limit)")
    limits.add_argument("--tpm", "--tokens-per-minute", dest="tpm", type=_positive_int,
                        default=None,
                        help="tokens per minute per API key, prompt + max completion reserved "
                             "at admission and settled at the end (default: no limit)")
    limits.add_argument("--max-queue", type=_non_negative_int, default=64,
                        help="requests that may wait for a free sequence; beyond that: 503 "
                             "(default 64)")
    limits.add_argument("--max-queue-wait", type=_non_negative_float, default=120.0,
                        help="seconds a request may wait for a free sequence before a 503 "
                             "(default 120)")

    stored = p.add_argument_group("stored completions (`store: true`)")
    stored.add_argument("--store", default=None, metavar="PATH|postgresql://...|off",
                        help="where completions created with `store: true` are kept: a SQLite "
                             "file (default: $XDG_DATA_HOME/chatd/store.sqlite3, else "
                             "~/.local/share/chatd/store.sqlite3), a PostgreSQL URL shared "
                             "by several replicas, or 'off' (then `store: true` gets a 400)")
    stored.add_argument("--store-max-age", type=_duration, default=None, metavar="AGE",
                        help="delete stored completions older than this, in the background "
                             "(e.g. 30d, 12h, 90m; default: keep them)")

    ops = p.add_argument_group("operations")
    ops.add_argument("--no-webui", action="store_true",
                     help="do not serve the chat page at / (the API is unchanged)")
    ops.add_argument("--shutdown-grace", type=_non_negative_float, default=30.0,
                     help="on SIGTERM/SIGINT, seconds in-flight requests get to finish before "
                          "they are ended (streams with a final chunk and [DONE]; default 30)")
    ops.add_argument("--access-log", nargs="?", const="-", default=None, metavar="PATH",
                     help="one JSON line per request, to PATH or stdout (bare flag); "
                          "default off")
    p.add_argument("--log-level", default="info",
                   choices=["debug", "info", "warning", "error"],
                   help="debug also shows llama.cpp's own log")

    cluster = p.add_argument_group("cluster (Ray Serve; needs `pip install 'chatd[ray]'`)")
    cluster.add_argument("--replicas", type=_positive_int, default=None,
                         help="serve with N engine replicas on Ray Serve, each one model "
                              "and KV cache, a chat's turns routed to the same replica; "
                              "--threads is then each replica's CPUs and llama.cpp threads "
                              "(default: this machine's cores / N, or 1 on a cluster)")
    cluster.add_argument("--ray-address", default=None, metavar="ADDR",
                         help="deploy on an existing Ray cluster ('auto': the one this "
                              "machine joined) instead of starting Ray here")
    cluster.add_argument("--gpus-per-replica", type=_non_negative_float, default=0.0,
                         metavar="G",
                         help="GPUs Ray reserves for each replica (num_gpus: 1 places one "
                              "replica per GPU); llama.cpp puts every layer on it when "
                              "llama-cpp-python was built with GPU support (default 0)")


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0.0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative, got {value}")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:  # also rejects nan
        raise argparse.ArgumentTypeError(f"must not be negative, got {text}")
    return value


def _duration(text: str) -> float:
    from chatd.store.retention import parse_duration

    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _bench_parser(sub: argparse._SubParsersAction) -> None:
    from chatd.bench import loadgen

    p = sub.add_parser("bench", help="drive an OpenAI-compatible server with a load generator")
    loadgen.add_arguments(p)


def _chat_parser(sub: argparse._SubParsersAction) -> None:
    from chatd.terminal import main as chat

    p = sub.add_parser("chat", help="chat with a model in the terminal (in-process, or "
                                    "--base-url for a server)")
    chat.add_arguments(p)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="chatd", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _serve_parser(sub)
    _bench_parser(sub)
    _chat_parser(sub)
    return parser


def add_kv_cache_arguments(p: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """`--kv-cache` and `--deterministic`, shared by `serve` and `chat`."""
    p.add_argument("--kv-cache", choices=["f16", "q8_0"], default=None,
                   help="KV cache type. f16 (default): fastest, but a seeded request's text "
                        "may change with what runs beside it. q8_0: what --deterministic uses")
    p.add_argument("--deterministic", action="store_true",
                   help="batch-invariant mode: a seeded request gives the same text alone, "
                        "under any load and from a cached prefix (q8_0 KV cache: long "
                        "prompts ~1.45x slower to process on 2 cores)")


def add_weights_arguments(p: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """`--weights` and `--weights-cache`, shared by `serve` and `chat`."""
    p.add_argument("--weights", choices=["stored", "q8_0"], default="stored",
                   help="stored (default): the weights as the model file has them. q8_0: "
                        "re-encode them once as Q8_0 (cached in --weights-cache): on CPUs "
                        "where llama.cpp has no batched kernel for the file's type (Q4_1 "
                        "on AVX2) prompts and many sequences run much faster, at the cost "
                        "of a second rounding of the weights and ~1.5x their memory")
    p.add_argument("--dense-prefill", choices=["auto", "on", "off"], default="auto",
                   help="run prompts through a BF16 (or F16) copy of the weights, written "
                        "once into --weights-cache, and decode on the file's own. auto "
                        "(default): for Q4_1/Q5_1 files, which llama.cpp's CPU backend has "
                        "no batched kernel for, on a CPU-only build, outside --deterministic, "
                        "when the copy fits in a quarter of free memory")
    p.add_argument("--dense-decode", choices=["auto", "on", "off"], default="auto",
                   help="decode steps of two or more sequences through that copy too (a "
                        "second KV cache of --kv-cells beside it), and a lone sequence on "
                        "the file's weights. auto (default): where --dense-prefill auto "
                        "would go on, when the copy and both caches fit in a quarter of "
                        "free memory")
    p.add_argument("--weights-cache", type=Path, default=None, metavar="DIR",
                   help="where --weights q8_0 keeps re-encoded files (default: "
                        "$XDG_CACHE_HOME/chatd/weights, else ~/.cache/chatd/weights)")


def kv_cache_from_args(args: argparse.Namespace) -> str:
    if args.deterministic and args.kv_cache == "f16":
        raise SystemExit("chatd: --deterministic needs the q8_0 KV cache, not --kv-cache f16")
    return "q8_0" if args.deterministic else (args.kv_cache or "f16")


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Build the settings; a keys file that cannot be used raises KeyFileError."""
    keys = tuple(args.api_key) + Settings.keys_from_env()
    if args.api_key_file is not None:
        keys += Settings.keys_from_file(args.api_key_file)
    return Settings(
        model=args.model, model_name=args.model_name, host=args.host, port=args.port,
        ctx_size=args.ctx_size, kv_cells=args.kv_cells, parked_cells=args.parked_cells,
        max_sequences=args.max_sequences,
        batch_tokens=args.batch_tokens, prefill_chunk=args.prefill_chunk,
        threads=args.threads, kv_cache=kv_cache_from_args(args), kv_layout=args.kv_layout,
        speculate=args.speculate, weights=args.weights, weights_cache=args.weights_cache,
        dense_prefill=args.dense_prefill, dense_decode=args.dense_decode,
        mmproj=args.mmproj, media_fetch=args.media_fetch,
        media_max_bytes=args.media_max_bytes, media_timeout=args.media_timeout,
        max_n=args.max_n,
        max_body_bytes=args.max_body_bytes,
        api_keys=keys, log_level=args.log_level,
        requests_per_minute=args.rpm, tokens_per_minute=args.tpm,
        max_queue=args.max_queue, max_queue_wait=args.max_queue_wait,
        shutdown_grace=args.shutdown_grace, access_log=args.access_log,
        metrics_require_key=args.metrics_require_key,
        store=args.store, store_max_age=args.store_max_age,
        webui=not args.no_webui,
    )


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.command == "chat":
        from chatd.terminal import main as chat

        sys.exit(chat.run(args))
    if args.command == "bench":
        from chatd.bench import loadgen

        sys.exit(loadgen.run_from_args(args))
    try:
        settings = settings_from_args(args)
    except KeyFileError as exc:
        print(f"chatd: {exc}", file=sys.stderr)
        sys.exit(2)
    logging.basicConfig(
        level=getattr(logging, settings.log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if settings.log_level != "debug":
        logging.getLogger("chatd.llama.cpp").setLevel(logging.WARNING)
    from chatd.server import ConfigError, serve

    if args.replicas is not None or args.ray_address is not None:
        sys.exit(_serve_cluster(settings, args.replicas or 1, args.ray_address,
                                args.gpus_per_replica))
    if args.gpus_per_replica:
        print("chatd: --gpus-per-replica is for Ray Serve replicas: add --replicas N "
              "(one process uses the GPU its llama-cpp-python build supports by itself)",
              file=sys.stderr)
        sys.exit(2)
    try:
        serve(settings)
    except ConfigError as exc:
        print(f"chatd: {exc}", file=sys.stderr)
        sys.exit(2)


def _serve_cluster(settings: Settings, replicas: int, ray_address: str | None,
                   gpus: float = 0.0) -> int:
    """`--replicas` / `--ray-address`: the same server, on Ray Serve (chatd.cluster)."""
    try:
        from chatd.cluster import launcher
    except ImportError:  # pragma: no cover - depends on the install
        print("chatd: --replicas and --ray-address need Ray Serve: "
              "pip install 'chatd[ray]'", file=sys.stderr)
        return 2
    launcher.run(settings, replicas, ray_address, gpus)
    return 0
