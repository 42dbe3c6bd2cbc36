"""Server settings: one frozen object built by the CLI and read everywhere else."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

API_KEY_ENV = "CHATD_API_KEY"  # one key, or several separated by commas


class KeyFileError(ValueError):
    """A keys file that cannot be used; reported in one line at start-up."""


@dataclass(frozen=True)
class Settings:
    model: Path | None = None          # None = the bundled SmolLM2
    model_name: str | None = None      # id clients send; default derived from the file
    host: str = "127.0.0.1"
    port: int = 8000
    ctx_size: int | None = None        # per sequence; default min(model's, 8192)
    kv_cells: int | None = None        # shared KV pool; default 4 x ctx_size
    parked_cells: int | None = None    # idle prefix cache in host memory; default kv_cells/4
    max_sequences: int = 16            # sequences decoded together in one step
    batch_tokens: int = 512            # tokens per llama_decode
    prefill_chunk: int = 64            # prompt tokens per step while others decode
    threads: int = 0                   # 0 = one per available core
    kv_cache: str = "f16"              # "f16": fastest; "q8_0": batch-invariant (--deterministic)
    kv_layout: str = "auto"            # "unified": one shared pool; "split": a stream per
                                       # sequence; "auto": split when kv_cells allow it
    weights: str = "stored"            # "stored": as the file has them; "q8_0": re-encoded
                                       # once (models/requantize.py), cached in weights_cache
    weights_cache: Path | None = None  # None: $XDG_CACHE_HOME/chatd/weights
    dense_prefill: str = "auto"        # prompts through a BF16/F16 copy (engine/prompts.py):
                                       # "auto" where it pays, "on", "off"
    dense_decode: str = "auto"         # steps of 2+ sequences through that copy
                                       # (engine/weights.py): "auto", "on", "off"
    speculate: str = "ngram"           # prompt-lookup drafts: "ngram" (when they pay),
                                       # "always", "off"
    max_n: int = 8                     # largest `n` one request may ask for
    mmproj: Path | None = None         # multimodal projector: image/audio input
    media_fetch: str | None = None     # hosts whose image URLs may be fetched
    media_max_bytes: int = 10 * 1024 * 1024
    media_timeout: float = 10.0
    max_body_bytes: int = 4 * 1024 * 1024
    api_keys: tuple[str, ...] = field(default=(), repr=False)
    log_level: str = "info"
    # shared deployment: limits, backpressure, observability, shutdown
    requests_per_minute: int | None = None   # per key; None = unlimited
    tokens_per_minute: int | None = None     # per key, prompt + max completion reserved
    max_queue: int = 64                # requests that may wait for a sequence slot
    max_queue_wait: float = 120.0      # seconds one may wait before a 503
    shutdown_grace: float = 30.0       # seconds in-flight requests get after SIGTERM
    access_log: str | None = None      # None = off, "-" = stdout, else a file path
    metrics_require_key: bool = False  # /metrics asks for an API key too
    # stored completions (`store: true`)
    store: str | None = None           # None: SQLite in the user's data directory; a file
                                       # path, a postgresql:// URL, or "off"
    store_max_age: float | None = None  # seconds a stored completion is kept; None: always
    webui: bool = True                 # the chat page at / (--no-webui: off)

    @property
    def deterministic(self) -> bool:
        """Batch-invariant mode: a seeded request's text does not depend on what runs
        beside it (engine/llama.py, KV_CACHE_TYPE)."""
        return self.kv_cache == "q8_0"

    @staticmethod
    def keys_from_env() -> tuple[str, ...]:
        raw = os.environ.get(API_KEY_ENV, "")
        return tuple(k.strip() for k in raw.split(",") if k.strip())

    @staticmethod
    def keys_from_file(path: Path) -> tuple[str, ...]:
        """One key per line; blank lines and ``#`` comments (whole-line or trailing) are
        skipped. A key never contains whitespace, so anything else on a line is an error
        rather than a silently different key."""
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise KeyFileError(f"cannot read the API keys file {path}: {exc}") from exc
        keys = []
        for number, line in enumerate(text.splitlines(), start=1):
            words = line.split()
            if not words or words[0].startswith("#"):
                continue
            if len(words) > 1 and not words[1].startswith("#"):
                raise KeyFileError(f"{path}, line {number}: an API key cannot contain "
                                   "whitespace (put comments after '#')")
            keys.append(words[0])
        return tuple(keys)
