"""`chatd chat` options and start-up: pick the backend, then the interactive loop or
pipe mode depending on whether stdin is a terminal."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from pathlib import Path

from chatd.cli import add_kv_cache_arguments, add_weights_arguments, kv_cache_from_args
from chatd.terminal import pipe, repl
from chatd.terminal.backends import BackendError, ChatBackend, HTTPBackend, LocalBackend
from chatd.terminal.paths import history_file
from chatd.terminal.session import Options, Session

API_KEY_ENVS = ("CHATD_API_KEY", "OPENAI_API_KEY")  # for --base-url, when --api-key is absent


def add_arguments(p: argparse.ArgumentParser) -> None:
    where = p.add_argument_group("which model")
    where.add_argument("--model", type=Path, default=None,
                       help="GGUF file to run in this process (default: the bundled "
                            "SmolLM2-135M-Instruct)")
    where.add_argument("--base-url", default=None, metavar="URL",
                       help="talk to this OpenAI-compatible server instead, e.g. "
                            "http://127.0.0.1:8000/v1 (no model is loaded here)")
    where.add_argument("--api-key", default=None,
                       help="Bearer key for --base-url (default: $CHATD_API_KEY, "
                            "then $OPENAI_API_KEY)")
    where.add_argument("--model-name", default=None,
                       help="model id to ask for (default: the server's first model; "
                            "in-process: from the file name)")
    local = p.add_argument_group("in-process engine")
    local.add_argument("--ctx-size", type=int, default=None,
                       help="most tokens per conversation (default: the model's, at most 8192)")
    local.add_argument("--threads", type=int, default=0, help="CPU threads (default: all cores)")
    add_kv_cache_arguments(local)
    add_weights_arguments(local)
    ask = p.add_argument_group("answers")
    ask.add_argument("--system", default=None, help="system prompt")
    ask.add_argument("--temperature", type=float, default=None, help="0 = greedy")
    ask.add_argument("--seed", type=int, default=None)
    ask.add_argument("--max-tokens", type=int, default=None)
    ask.add_argument("--render", choices=["plain", "markdown"], default="plain",
                     help="markdown: render answers (headings, lists, code) as they stream")
    ask.add_argument("--no-history", action="store_true",
                     help="do not read or write the input history file")


def _open_local(args: argparse.Namespace) -> ChatBackend:
    from chatd.config import Settings
    from chatd.server import ConfigError, build_runtime

    # One person asks one thing at a time: batches never form, so `auto` leaves the
    # dense copy's second KV cache (~750 MB at the default context) unallocated.
    dense_decode = "off" if args.dense_decode == "auto" else args.dense_decode
    settings = Settings(model=args.model, model_name=args.model_name, ctx_size=args.ctx_size,
                        threads=args.threads, kv_cache=kv_cache_from_args(args), max_sequences=4,
                        weights=args.weights, weights_cache=args.weights_cache,
                        dense_prefill=args.dense_prefill, dense_decode=dense_decode)
    try:
        return LocalBackend(build_runtime(settings))
    except ConfigError as exc:
        raise BackendError(str(exc)) from exc


async def _open(args: argparse.Namespace) -> ChatBackend:
    if args.base_url is None:
        return _open_local(args)
    key = args.api_key or next((os.environ[e] for e in API_KEY_ENVS if os.environ.get(e)), None)
    backend = HTTPBackend(args.base_url, key, args.model_name)
    try:
        await backend.connect()
    except BaseException:
        await backend.aclose()
        raise
    return backend


def run(args: argparse.Namespace) -> int:
    try:
        return _run(args)
    except KeyboardInterrupt:  # while the model loads, or in pipe mode: just leave
        print(file=sys.stderr)
        return 130


def _run(args: argparse.Namespace) -> int:
    if args.base_url is not None and args.model is not None:
        print("chatd chat: --model is a local GGUF file; with --base-url name the server's "
              "model with --model-name", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("chatd.llama.cpp").setLevel(logging.ERROR)
    session = Session(Options(system=args.system, temperature=args.temperature,
                              seed=args.seed, max_tokens=args.max_tokens))
    interactive = sys.stdin.isatty()
    # The trailing newline of `echo ... |` is not part of the message.
    text = "" if interactive else sys.stdin.read().strip()
    if not interactive and not text:
        print("chatd chat: no input on stdin", file=sys.stderr)
        return 2
    # A loop of our own rather than asyncio.run: asyncio.run turns Ctrl+C into
    # cancelling the whole program, and here it must stop only the answer.
    loop = asyncio.new_event_loop()
    try:
        try:
            backend = loop.run_until_complete(_open(args))
        except BackendError as exc:
            print(f"chatd chat: {exc}", file=sys.stderr)
            return 1
        try:
            if interactive:
                history = None if args.no_history else history_file()
                return loop.run_until_complete(
                    repl.run(backend, session, render=args.render, history_path=history))
            return loop.run_until_complete(pipe.run(backend, session, text))
        finally:
            loop.run_until_complete(backend.aclose())
    finally:
        loop.close()
