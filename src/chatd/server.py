"""Start-up wiring: settings -> model -> engine -> chat service -> HTTP app -> uvicorn."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import ipaddress
import logging
import signal
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from types import FrameType
from typing import TypeVar

import llama_cpp
import uvicorn
from fastapi import FastAPI

from chatd import __version__
from chatd.api.app import create_app
from chatd.api.context import ServerContext
from chatd.api.metering import MeteredChatService
from chatd.chat.media import MediaPolicy
from chatd.chat.service import ChatService
from chatd.chat.template import ChatTemplate
from chatd.config import Settings
from chatd.engine.engine import Engine, EngineConfig
from chatd.engine.llama import (
    INVARIANT_KV_CACHE_TYPE,
    KV_CACHE_TYPE,
    LlamaContext,
    LlamaModel,
    LlamaSettings,
    default_threads,
    gpu_offload_supported,
    init_backend,
)
from chatd.engine.multimodal import MediaError, Projector
from chatd.engine.prompts import (
    PromptRunner,
    auto_reason,
    dense_bytes,
    dense_file_type,
    plain_cache,
)
from chatd.engine.sampling import SAMPLER_VERSION
from chatd.engine.weights import WeightSwitch
from chatd.models.registry import ModelFileError, ModelInfo, load_model_info
from chatd.models.requantize import FILE_TYPE_NAMES, dense_copy, served_weights
from chatd.store import CompletionStore
from chatd.webui.routes import install as install_webui

log = logging.getLogger("chatd")

DEFAULT_CTX_CAP = 8192


class ConfigError(ValueError):
    """A setting that cannot work; reported in one line, not a traceback."""

T = TypeVar("T")


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
    weights: str = "unknown"  # what /health says of the weights served
    store: CompletionStore | None = None  # opened and closed by the app's lifespan

    @property
    def kv_layout(self) -> str:
        return "unified" if self.model.settings.kv_unified else "split"

    def close(self) -> None:
        self.engine.stop()
        if self.engine.projector is not None:
            self.engine.projector.close()
        if self.engine.prompts is not None:
            self.engine.prompts.close()
        if self.engine.weights is not None:
            self.engine.weights.close()
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
    if settings.parked_cells is not None and settings.parked_cells < 0:
        raise ConfigError("--parked-cells must be 0 or more")
    if settings.max_sequences < 1:
        raise ConfigError("--max-sequences must be at least 1")
    max_slots = llama_cpp.llama_max_parallel_sequences()
    # Two llama.cpp sequence ids are the scheduler's trash and scratch (engine/scheduler.py).
    n_slots = min(max_slots - 2, max(2 * settings.max_sequences, settings.max_sequences + 4))
    if settings.max_sequences > n_slots:
        raise ConfigError(f"--max-sequences is at most {max_slots} with this llama.cpp build")
    batch_tokens = max(settings.batch_tokens, settings.max_sequences)

    kv_type = INVARIANT_KV_CACHE_TYPE if settings.deterministic else KV_CACHE_TYPE
    llama = LlamaSettings(kv_cells=kv_cells, n_seq_max=n_slots + 2, type_k=kv_type,
                          type_v=kv_type, n_batch=batch_tokens, n_threads=settings.threads,
                          interleave=not settings.deterministic)
    streams = kv_streams(settings, ctx_size, kv_cells, n_slots)
    if streams:
        n_slots, stream_cells = streams
        llama = replace(llama, kv_cells=n_slots * stream_cells, n_seq_max=n_slots,
                        kv_unified=False)
    init_backend()  # llama.cpp's quantizer logs through chatd's logging, as loading does
    try:
        weights_path, weights = served_weights(info, settings.weights,
                                               cache_dir=settings.weights_cache,
                                               threads=settings.threads or default_threads())
    except ModelFileError as exc:
        raise ConfigError(str(exc)) from exc
    model = LlamaModel(weights_path, llama)
    projector = _load_projector(settings, model)
    if model.interleaved:
        weights += " (interleaved for llama.cpp's batched kernels)"
    prompts, switch = _dense_paths(settings, info, model, ctx_size)
    if prompts is not None or switch is not None:
        kind = prompts.kind if prompts is not None else switch.kind  # type: ignore[union-attr]
        uses = " and ".join(use for use, on in (("prompts", prompts), ("batches", switch)) if on)
        weights += f" ({uses} through a {kind} copy)"
    engine = Engine(model, EngineConfig(
        max_running=settings.max_sequences, n_slots=n_slots, ctx_size=ctx_size,
        batch_tokens=batch_tokens, prefill_chunk=max(1, settings.prefill_chunk),
        epoch_cells=max(ctx_size, 8192), park_cells=settings.parked_cells,
        speculate=settings.speculate), projector, prompts, switch)
    template_source = info.chat_template
    if template_source is None:
        log.warning("%s has no chat template in its metadata; using the built-in ChatML "
                    "template", info.path.name)
    template = ChatTemplate(
        template_source,
        bos_token=model.token_text(model.bos_id) if model.bos_id >= 0 else "",
        eos_token=model.token_text(model.eos_id) if model.eos_id >= 0 else "",
    )
    media_policy = MediaPolicy.parse(settings.media_fetch, max_bytes=settings.media_max_bytes,
                                     timeout_s=settings.media_timeout)
    chat = MeteredChatService(engine, template, ctx_size=ctx_size,
                              max_n=min(settings.max_n, settings.max_sequences),
                              media_policy=media_policy)
    fingerprint = info.fingerprint({
        "ctx_size": ctx_size, "kv_cells": kv_cells, "batch_tokens": batch_tokens,
        "kv_cache": settings.kv_cache, "kv_layout": "split" if streams else "unified",
        "weights": settings.weights, "interleaved": model.interleaved,
        "dense_prefill": prompts.kind if prompts is not None else "off",
        "dense_decode": switch.kind if switch is not None else "off",
        "mmproj": settings.mmproj.name if settings.mmproj else None,
        "chatd": __version__, "llama_cpp": llama_cpp.__version__, "sampler": SAMPLER_VERSION,
    })
    return Runtime(settings, info, model, engine, chat, info.name, ctx_size, fingerprint,
                   weights)


def _dense_paths(settings: Settings, info: ModelInfo, model: LlamaModel, ctx_size: int
                 ) -> tuple[PromptRunner | None, WeightSwitch | None]:
    """What `--dense-prefill` and `--dense-decode` ask for: prompts through a dense copy
    of the weights (engine/prompts.py), and batches (engine/weights.py)."""
    modes = {"--dense-prefill": settings.dense_prefill, "--dense-decode": settings.dense_decode}
    forced = [flag for flag, mode in modes.items() if mode == "on"]
    if all(mode == "off" for mode in modes.values()):
        return None, None
    if not plain_cache(model):
        if forced:
            raise ConfigError(f"{forced[0]} on: this model's memory is not one plain KV "
                              "cache (sliding-window or recurrent layers)")
        return None, None
    if settings.deterministic and forced:
        raise ConfigError(f"{forced[0]} on cannot keep --deterministic's guarantee "
                          "(a seeded text the same alone, under load and from a cached "
                          "prefix); drop one")

    def wanted(mode: str, cells: int, what: str) -> bool:
        if mode != "auto":
            return mode == "on"
        reason = auto_reason(model.file_type, dense_bytes(model, cells),
                             gpu=gpu_offload_supported(), deterministic=settings.deterministic,
                             interleaved=model.interleaved)
        if reason is not None:
            log.info("%s run on the served weights: %s", what, reason)
        return reason is None

    prefill = wanted(settings.dense_prefill, ctx_size, "prompts")
    decode = wanted(settings.dense_decode, model.kv_cells + (ctx_size if prefill else 0),
                    "batches")
    if not (prefill or decode):
        return None, None
    file_type = dense_file_type()
    kind = FILE_TYPE_NAMES.get(file_type, str(file_type))
    try:
        path = dense_copy(info, file_type, cache_dir=settings.weights_cache,
                          threads=settings.threads or default_threads())
    except ModelFileError as exc:
        if forced:
            raise ConfigError(str(exc)) from exc
        log.warning("prompts and batches run on the served weights: %s", exc)
        return None, None

    def start(flag: str, make: Callable[[], T]) -> T | None:
        """A context over the copy; one that llama.cpp cannot create (out of memory)
        costs only its own path, unless the flag asked for it."""
        try:
            return make()
        except RuntimeError as exc:
            if modes[flag] == "on":
                raise ConfigError(f"{flag} on: {exc}") from exc
            log.warning("%s: %s; that path stays on the served weights", flag, exc)
            return None

    prompts = (start("--dense-prefill", lambda: PromptRunner(path, model.settings, ctx_size,
                                                             kind)) if prefill else None)
    switch = (start("--dense-decode", lambda: WeightSwitch(LlamaContext(path, model.settings),
                                                           kind)) if decode else None)
    return prompts, switch


def kv_streams(settings: Settings, ctx_size: int, kv_cells: int,
               n_slots: int) -> tuple[int, int] | None:
    """(streams, cells per stream) when the KV cache is laid out one stream per
    sequence (engine/streams.py), else None for one shared pool.

    `auto` takes streams when the pool holds a full context for every sequence that
    may run (llama.cpp gives each stream the same share), outside --deterministic.
    """
    stream = -(-ctx_size // 256) * 256  # llama.cpp rounds a stream up to 256 cells
    fits = kv_cells // stream
    layout = settings.kv_layout
    if layout == "auto":
        layout = ("split" if not settings.deterministic and fits >= settings.max_sequences
                  else "unified")
    if layout == "unified":
        return None
    if settings.deterministic:
        raise ConfigError("--deterministic keeps one shared KV pool; drop --kv-layout split")
    if fits < settings.max_sequences:
        raise ConfigError(f"--kv-layout split gives every sequence its own {stream} cells: "
                          f"--kv-cells must be at least --max-sequences x that, "
                          f"{settings.max_sequences * stream}")
    return min(n_slots, fits), stream


def _load_projector(settings: Settings, model: LlamaModel) -> Projector | None:
    if settings.mmproj is None:
        return None
    if not settings.mmproj.is_file():
        raise ConfigError(f"--mmproj {settings.mmproj}: no such file")
    try:
        projector = Projector(settings.mmproj, model.handle,
                              n_threads=settings.threads or default_threads())
    except MediaError as exc:
        raise ConfigError(str(exc)) from exc
    log.info("projector %s: input %s", settings.mmproj.name, ", ".join(projector.modalities))
    return projector


SHUTDOWN_MARGIN_S = 5.0
"""After the grace deadline aborts generation, how long streams get to send their final
chunk and [DONE] before uvicorn cancels whatever is left."""


class _Server(uvicorn.Server):
    """uvicorn, plus the 'ready' line, and a drain that ends with exit status 0.

    On SIGTERM/SIGINT uvicorn stops accepting and waits for in-flight responses. At
    the grace deadline every request still queued is refused and every generation is
    aborted, so each stream ends with a finish chunk and [DONE] instead of a torn
    connection; uvicorn's own deadline (a little later) only cancels stragglers.
    """

    runtime: Runtime
    app: FastAPI

    async def startup(self, sockets: list | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            rt = self.runtime
            log.info("chatd ready at http://%s:%d/v1 serving %s (%s, weights %s, context %d "
                     "tokens, %d sequences per step)", rt.settings.host, rt.settings.port,
                     rt.model_name, rt.info.path.name, rt.weights, rt.ctx_size,
                     rt.settings.max_sequences)
            if rt.settings.webui:
                log.info("chat page at http://%s:%d/", rt.settings.host, rt.settings.port)

    async def shutdown(self, sockets: list | None = None) -> None:
        grace = self.runtime.settings.shutdown_grace
        ctx: ServerContext = self.app.state.ctx
        in_flight = ctx.gate.queue.in_use + ctx.gate.queue.depth
        log.info("shutting down: no new connections; %d request(s) in flight get up to "
                 "%gs to finish", in_flight, grace)
        loop = asyncio.get_running_loop()
        deadline = loop.call_later(grace, self._deadline)
        try:
            await super().shutdown(sockets)
        finally:
            deadline.cancel()

    def _deadline(self) -> None:
        ctx: ServerContext = self.app.state.ctx
        if ctx.gate.queue.in_use or ctx.gate.queue.depth:
            log.warning("shutdown grace period over: ending the remaining requests")
        ctx.gate.close()
        self.runtime.engine.abort_all()

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """uvicorn's version re-raises the signal after a graceful shutdown, so the
        process would die by it (status 143/130); a completed drain exits 0 instead."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        originals = {sig: signal.signal(sig, self.handle_exit)
                     for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in originals.items():
                signal.signal(sig, handler)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.should_exit and sig == signal.SIGINT:
            self.force_exit = True  # a second Ctrl-C: stop waiting
        else:
            self.should_exit = True


def _warn_if_open(settings: Settings, key_tags: list[str]) -> None:
    """An open server on a reachable address serves anyone who finds it: say so loudly."""
    if key_tags:
        log.info("API keys required: %d configured (tags %s)", len(key_tags),
                 ", ".join(key_tags))
        return
    if _is_loopback(settings.host):
        return
    bar = "!" * 78
    log.warning("\n%s\n!! NO API KEY IS CONFIGURED and chatd listens on %s, which is not a "
                "loopback\n!! address: anyone who can reach this port can use the model. "
                "Set --api-key,\n!! --api-key-file or $CHATD_API_KEY.\n%s",
                bar, settings.host, bar)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def open_store(settings: Settings) -> CompletionStore | None:
    """`--store`: opened and migrated now, before the model loads, so a store that
    cannot be used stops the start-up with one line; the app reconnects on its loop."""
    if settings.store == "off":
        log.info("stored completions are off (--store off): `store: true` gets a 400")
        return None
    try:
        store = CompletionStore.from_spec(settings.store, max_age=settings.store_max_age)
        found = store.prepare()
    except Exception as exc:  # a bad path or URL, the database unreachable, a newer schema
        raise ConfigError(f"cannot open the completion store: {exc}") from exc
    log.info("stored completions in %s%s", store.location,
             " (new)" if found == 0 else "")
    return store


def freeze_startup_heap() -> None:
    """Take what start-up built (the model's vocabulary tables, FastAPI's routes and
    models, the tokenizer's caches: ~120,000 objects) out of the cyclic garbage
    collector's reach. Otherwise each full collection walks them all, 60-95 ms with
    the GIL held (about once a minute under load), and the allocations of a burst of
    new requests are what set one off: the engine thread's next step and every one of
    those requests' first tokens wait that much longer (docs/performance.md)."""
    gc.collect()
    gc.freeze()


def serve(settings: Settings) -> None:
    store = open_store(settings)
    runtime = build_runtime(settings)
    runtime.store = store
    runtime.engine.start()
    app = create_app(runtime)
    if settings.webui:
        install_webui(app)
    _warn_if_open(settings, app.state.ctx.auth.tags)
    freeze_startup_heap()
    config = uvicorn.Config(
        app, host=settings.host, port=settings.port, log_level="warning",
        loop="uvloop", http="httptools",
        timeout_graceful_shutdown=max(0.0, settings.shutdown_grace) + SHUTDOWN_MARGIN_S,
    )
    server = _Server(config)
    server.runtime = runtime
    server.app = app
    try:
        server.run()
    finally:
        runtime.close()
