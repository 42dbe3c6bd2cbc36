"""Server settings: one frozen object built by the CLI and read everywhere else."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

API_KEY_ENV = "CHATD_API_KEY"  # one key, or several separated by commas


@dataclass(frozen=True)
class Settings:
    model: Path | None = None          # None = the bundled SmolLM2
    model_name: str | None = None      # id clients send; default derived from the file
    host: str = "127.0.0.1"
    port: int = 8000
    ctx_size: int | None = None        # per sequence; default min(model's, 8192)
    kv_cells: int | None = None        # shared KV pool; default 4 x ctx_size
    max_sequences: int = 8             # sequences decoded together in one step
    batch_tokens: int = 512            # tokens per llama_decode
    prefill_chunk: int = 64            # prompt tokens per step while others decode
    threads: int = 0                   # 0 = one per available core
    max_n: int = 8                     # largest `n` one request may ask for
    max_body_bytes: int = 4 * 1024 * 1024
    api_keys: tuple[str, ...] = field(default=(), repr=False)
    log_level: str = "info"

    @staticmethod
    def keys_from_env() -> tuple[str, ...]:
        raw = os.environ.get(API_KEY_ENV, "")
        return tuple(k.strip() for k in raw.split(",") if k.strip())
