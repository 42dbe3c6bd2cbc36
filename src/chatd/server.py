"""Start-up wiring: settings -> model -> engine -> chat service -> HTTP app -> uvicorn."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import llama_cpp
import uvicorn

from chatd import __version__
from chatd.api.app import create_app
from chatd.chat.service import ChatService
from chatd.chat.template import ChatTemplate
from chatd.config import Settings
from chatd.engine.engine import Engine, EngineConfig
from chatd.engine.llama import LlamaModel, LlamaSettings
from chatd.models.registry import ModelFileError, ModelInfo, load_model_info

log = logging.getLogger("chatd")

DEFAULT_CTX_CAP = 8192


class ConfigError(ValueError):
    """A setting that cannot work; reported in one line, not a traceback."""


@dataclass
class Runtime:
    """Everything a running server holds; closed together on shutdown."""

    settings: Settings
    info: ModelInfo
    model: LlamaModel
    engine: Engine
    chat: ChatService
    model_name: str
    ctx_size: int
    fingerprint: str

    def close(self) -> None:
        self.engine.stop()
        self.model.close()


def build_runtime(settings: Settings) -> Runtime:
    try:
        info = load_model_info(settings.model, settings.model_name)
    except ModelFileError as exc:
        raise ConfigError(str(exc)) from exc
    trained = info.context_length or DEFAULT_CTX_CAP
    ctx_size = settings.ctx_size or min(trained, DEFAULT_CTX_CAP)
    if ctx_size < 16:
        raise ConfigError(f"--ctx-size {ctx_size} is too small")
    if ctx_size > trained:
        log.warning("--ctx-size %d exceeds the %d tokens the model was trained on",
                    ctx_size, trained)
    kv_cells = settings.kv_cells or 4 * ctx_size
    if kv_cells < ctx_size:
        raise ConfigError(f"--kv-cells {kv_cells} must be at least --ctx-size {ctx_size}")
    if settings.max_sequences < 1:
        raise ConfigError("--max-sequences must be at least 1")
    max_slots = llama_cpp.llama_max_parallel_sequences()
    n_slots = min(max_slots, max(2 * settings.max_sequences, settings.max_sequences + 4))
    if settings.max_sequences > n_slots:
        raise ConfigError(f"--max-sequences is at most {max_slots} with this llama.cpp build")
    batch_tokens = max(settings.batch_tokens, settings.max_sequences)

    model = LlamaModel(info.path, LlamaSettings(kv_cells=kv_cells, n_seq_max=n_slots,
                                                n_batch=batch_tokens, n_threads=settings.threads))
    engine = Engine(model, EngineConfig(
        max_running=settings.max_sequences, n_slots=n_slots, ctx_size=ctx_size,
        batch_tokens=batch_tokens, prefill_chunk=max(1, settings.prefill_chunk)))
    template_source = info.chat_template
    if template_source is None:
        log.warning("%s has no chat template in its metadata; using the built-in ChatML "
                    "template", info.path.name)
    template = ChatTemplate(
        template_source,
        bos_token=model.token_text(model.bos_id) if model.bos_id >= 0 else "",
        eos_token=model.token_text(model.eos_id) if model.eos_id >= 0 else "",
    )
    chat = ChatService(engine, template, ctx_size=ctx_size,
                       max_n=min(settings.max_n, settings.max_sequences))
    fingerprint = info.fingerprint({
        "ctx_size": ctx_size, "kv_cells": kv_cells, "batch_tokens": batch_tokens,
        "chatd": __version__, "llama_cpp": llama_cpp.__version__,
    })
    return Runtime(settings, info, model, engine, chat, info.name, ctx_size, fingerprint)


class _Server(uvicorn.Server):
    """uvicorn, plus the one 'ready' line once the socket is listening."""

    runtime: Runtime

    async def startup(self, sockets: list | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            rt = self.runtime
            log.info("chatd ready at http://%s:%d/v1 serving %s (%s, context %d tokens, "
                     "%d sequences per step)", rt.settings.host, rt.settings.port,
                     rt.model_name, rt.info.path.name, rt.ctx_size,
                     rt.settings.max_sequences)


def serve(settings: Settings) -> None:
    runtime = build_runtime(settings)
    runtime.engine.start()
    app = create_app(runtime)
    config = uvicorn.Config(
        app, host=settings.host, port=settings.port, log_level="warning",
        loop="uvloop", http="httptools", timeout_graceful_shutdown=30,
    )
    server = _Server(config)
    server.runtime = runtime
    try:
        server.run()
    finally:
        runtime.close()
