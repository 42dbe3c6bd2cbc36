"""`chatd serve` and `chatd bench`: argument parsing and start-up wiring."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from chatd.config import API_KEY_ENV, Settings


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
                   help="size of the shared KV cache in tokens (default: 4 x ctx-size)")
    p.add_argument("--max-sequences", type=int, default=8,
                   help="sequences decoded together in one step; more requests queue")
    p.add_argument("--batch-tokens", type=int, default=512, help="tokens per llama_decode call")
    p.add_argument("--prefill-chunk", type=int, default=64,
                   help="prompt tokens processed per step while other sequences decode")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (default: all cores)")
    p.add_argument("--max-n", type=int, default=8, help="largest `n` a request may ask for")
    p.add_argument("--api-key", action="append", default=[],
                   help=f"accept this Bearer key (repeatable; also ${API_KEY_ENV}, "
                        "comma-separated). Without keys the API is open.")
    p.add_argument("--log-level", default="info",
                   choices=["debug", "info", "warning", "error"],
                   help="debug also shows llama.cpp's own log")


def _bench_parser(sub: argparse._SubParsersAction) -> None:
    from chatd.bench import loadgen

    p = sub.add_parser("bench", help="drive an OpenAI-compatible server with a load generator")
    loadgen.add_arguments(p)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="chatd", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _serve_parser(sub)
    _bench_parser(sub)
    return parser


def settings_from_args(args: argparse.Namespace) -> Settings:
    keys = tuple(args.api_key) + Settings.keys_from_env()
    return Settings(
        model=args.model, model_name=args.model_name, host=args.host, port=args.port,
        ctx_size=args.ctx_size, kv_cells=args.kv_cells, max_sequences=args.max_sequences,
        batch_tokens=args.batch_tokens, prefill_chunk=args.prefill_chunk,
        threads=args.threads, max_n=args.max_n, api_keys=keys, log_level=args.log_level,
    )


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.command == "bench":
        from chatd.bench import loadgen

        sys.exit(loadgen.run_from_args(args))
    settings = settings_from_args(args)
    logging.basicConfig(
        level=getattr(logging, settings.log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if settings.log_level != "debug":
        logging.getLogger("chatd.llama.cpp").setLevel(logging.WARNING)
    from chatd.server import ConfigError, serve

    try:
        serve(settings)
    except ConfigError as exc:
        print(f"chatd: {exc}", file=sys.stderr)
        sys.exit(2)
