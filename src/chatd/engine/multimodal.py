"""Images and audio through libmtmd: a projector beside the text model.

libmtmd turns a picture or a sound into a run of embedding rows that the language
model reads where the media sat in the prompt. chatd keeps those runs as `MediaSpan`s
of the prompt: in the token list each row is a *placeholder*, a negative id derived
from the media's hash and the row's index, so the prefix cache matches a repeated
image exactly as it matches text, and a sequence's tokens still say what its KV
cells hold. The engine decodes a span's rows in embedding batches of their own
(llama.cpp rejects a batch that mixes ids and embeddings), and an encoder thread
runs the vision/audio tower so the running streams do not stop for it.

Encodes take a lock: each writes the context's one output buffer, which is copied
out before the next may start.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import queue
import tempfile
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import llama_cpp.mtmd_cpp as mtmd
import numpy as np

from chatd.engine.llama import log_callback

log = logging.getLogger("chatd.media")

_KIND = {mtmd.MTMD_INPUT_CHUNK_TYPE_IMAGE: "image", mtmd.MTMD_INPUT_CHUNK_TYPE_AUDIO: "audio"}


class MediaError(ValueError):
    """Media that libmtmd cannot read; the message says what is wrong with it."""


@dataclass(eq=False)
class MediaSpan:
    """One image or audio chunk of a prompt: `n_tokens` embedding rows from `start`.

    The chunk handle is owned here and freed once the rows are encoded (or when the
    span is dropped without being encoded, e.g. because the prefix cache had it).
    """

    start: int
    n_tokens: int
    kind: str
    key: bytes               # the media's hash: what makes its placeholders its own
    bidirectional: bool = False      # rows attend to each other both ways: decode whole
    chunk: int | None = None
    embd: np.ndarray | None = None   # [n_tokens, n_embd] once encoded
    error: str | None = None
    submitted: bool = False
    done: threading.Event = field(default_factory=threading.Event)
    release: Callable[[], None] | None = None  # frees the chunk, once

    def free_chunk(self) -> None:
        self.chunk = None
        if self.release is not None:
            self.release()

    @property
    def end(self) -> int:
        return self.start + self.n_tokens

    @property
    def ready(self) -> bool:
        return self.done.is_set()


def placeholders(key: bytes, n_tokens: int) -> list[int]:
    """The negative ids standing for a media chunk's rows in a token list."""
    base = int.from_bytes(key[:6], "little") << 16
    return [-1 - (base | i) for i in range(n_tokens)]


@dataclass(frozen=True)
class MediaInput:
    """Bytes of one image or audio clip, as a request part gave them."""

    kind: str       # "image" | "audio"
    data: bytes
    param: str      # which request part, for error messages

    @property
    def key(self) -> bytes:
        return hashlib.sha256(self.data).digest()


class Projector:
    """A loaded mmproj file: what it reads, and tokenizing/encoding media with it."""

    def __init__(self, path: Path, model_ptr: int, *, n_threads: int) -> None:
        route_log()
        params = mtmd.mtmd_context_params_default()
        params.use_gpu = False
        params.n_threads = n_threads
        params.print_timings = False
        params.warmup = False
        ctx = mtmd.mtmd_init_from_file(str(path).encode(), model_ptr, params)
        if not ctx:
            raise MediaError(f"libmtmd could not load the projector {path} for this model "
                             "(wrong file, or made for a model of another width)")
        self._ctx = ctx
        self._lock = threading.Lock()
        self._no_ffmpeg = tempfile.TemporaryDirectory(prefix="chatd-no-ffmpeg-")
        self.path = path
        self.vision = bool(mtmd.mtmd_support_vision(ctx))
        self.audio = bool(mtmd.mtmd_support_audio(ctx))
        self.mrope = bool(mtmd.mtmd_decode_use_mrope(ctx))
        self.audio_sample_rate = (int(mtmd.mtmd_get_audio_sample_rate(ctx))
                                  if self.audio else 0)
        if self.mrope:
            self.close()
            raise MediaError(f"{path.name} needs M-RoPE positions (Qwen2-VL style), which "
                             "chatd does not support yet")

    @property
    def modalities(self) -> list[str]:
        return ["text"] + (["image"] if self.vision else []) + (["audio"] if self.audio else [])

    def close(self) -> None:
        if self._ctx:
            mtmd.mtmd_free(self._ctx)
            self._ctx = None
            self._no_ffmpeg.cleanup()

    # ---- request side (a worker thread of the event loop) -------------------------

    def tokenize(self, media: MediaInput) -> list[list[int] | MediaSpan]:
        """One media input as libmtmd lays it out: text tokens it adds around the media
        (some models frame images with special tokens) and the media chunks. Span
        `start`s are relative to this media's first piece.

        libmtmd documents tokenizing (which decodes and resizes the media) as
        thread-safe, so it runs beside an encode rather than waiting for it.
        """
        if media.kind == "image" and not self.vision:
            raise MediaError(f"{media.param}: this model's projector takes no images")
        if media.kind == "audio" and not self.audio:
            raise MediaError(f"{media.param}: this model's projector takes no audio")
        buf = (ctypes.c_uint8 * len(media.data)).from_buffer_copy(media.data)
        # Bytes its image and audio decoders reject, libmtmd hands to ffprobe/ffmpeg as
        # video (found on PATH). chatd takes no video: point it at an empty folder.
        opt = mtmd.mtmd_helper_init_opt_default()
        opt.video_params.ffmpeg_bin_dir = self._no_ffmpeg.name.encode()
        loaded = mtmd.mtmd_helper_bitmap_init_from_buf_wrapper(self._ctx, buf, len(media.data),
                                                               False, opt)
        if loaded.video_ctx:
            mtmd.mtmd_helper_video_free(loaded.video_ctx)
        bitmap = loaded.bitmap
        if not bitmap:
            raise MediaError(f"{media.param}: the {media.kind} could not be decoded")
        chunks = None
        try:
            key = media.key
            mtmd.mtmd_bitmap_set_id(bitmap, key.hex().encode())
            if bool(mtmd.mtmd_bitmap_is_audio(bitmap)) != (media.kind == "audio"):
                raise MediaError(f"{media.param}: the bytes are not {media.kind}")
            chunks = mtmd.mtmd_input_chunks_init()
            part = mtmd.mtmd_input_part(bitmap=bitmap)
            parts = (ctypes.POINTER(mtmd.mtmd_input_part) * 1)(ctypes.pointer(part))
            rc = mtmd.mtmd_tokenize_from_parts(self._ctx, chunks, parts, 1, False)
            if rc != 0:
                raise MediaError(f"{media.param}: libmtmd could not tokenize the {media.kind} "
                                 f"(code {rc})")
            out: list[list[int] | MediaSpan] = []
            at = 0
            for i in range(mtmd.mtmd_input_chunks_size(chunks)):
                chunk = mtmd.mtmd_input_chunks_get(chunks, i)
                kind = mtmd.mtmd_input_chunk_get_type(chunk)
                if kind == mtmd.MTMD_INPUT_CHUNK_TYPE_TEXT:
                    n = ctypes.c_size_t(0)
                    ptr = mtmd.mtmd_input_chunk_get_tokens_text(chunk, ctypes.byref(n))
                    tokens = [int(ptr[j]) for j in range(n.value)]
                    out.append(tokens)
                    at += len(tokens)
                    continue
                n_tokens = int(mtmd.mtmd_input_chunk_get_n_tokens(chunk))
                owned = mtmd.mtmd_input_chunk_copy(chunk)
                span = MediaSpan(start=at, n_tokens=n_tokens, kind=_KIND.get(kind, "media"),
                                 key=hashlib.sha256(key + i.to_bytes(4, "little")).digest(),
                                 bidirectional=bool(
                                     mtmd.mtmd_decode_use_non_causal(self._ctx, chunk)),
                                 chunk=owned)
                # Freed after encoding, or when the span is dropped unencoded.
                span.release = weakref.finalize(span, _free_chunk, owned)
                out.append(span)
                at += n_tokens
            return out
        finally:
            if chunks:
                mtmd.mtmd_input_chunks_free(chunks)
            mtmd.mtmd_bitmap_free(bitmap)

    # ---- engine side (the encoder thread) ------------------------------------------

    def encode(self, span: MediaSpan, n_embd: int) -> np.ndarray:
        """The span's embedding rows, copied out of libmtmd's buffer."""
        with self._lock:
            if span.chunk is None:
                raise MediaError("the media chunk was already released")
            rc = mtmd.mtmd_encode_chunk(self._ctx, span.chunk)
            if rc != 0:
                raise MediaError(f"the {span.kind} encoder failed (code {rc})")
            ptr = mtmd.mtmd_get_output_embd(self._ctx)
            rows = np.ctypeslib.as_array(ptr, shape=(span.n_tokens * n_embd,))
            return rows.reshape(span.n_tokens, n_embd).copy()


def route_log() -> None:
    """libmtmd logs through its own callback (every tensor, at debug level): send it
    where llama.cpp's log goes."""
    mtmd.mtmd_helper_log_set(log_callback, ctypes.c_void_p(0))


def _free_chunk(chunk: int) -> None:
    mtmd.mtmd_input_chunk_free(chunk)


class MediaEncoder:
    """One thread that encodes spans in submission order and wakes the engine.

    The vision tower runs here, beside the engine's decode steps, so a 1-2 s image
    encode costs the other streams some speed (the cores are shared) instead of a
    1-2 s stop.
    """

    def __init__(self, projector: Projector, n_embd: int, wake: Callable[[], None]) -> None:
        self._projector = projector
        self._n_embd = n_embd
        self._wake = wake
        self._jobs: queue.SimpleQueue[MediaSpan | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="chatd-media", daemon=True)
        self._thread.start()
        self.encoded = 0
        self.seconds = 0.0

    def submit(self, span: MediaSpan) -> None:
        if not span.submitted:
            span.submitted = True
            self._jobs.put(span)

    def stop(self, timeout: float = 10.0) -> None:
        """Finish the encode under way (the projector is freed after this)."""
        self._jobs.put(None)
        self._thread.join(timeout)

    def _run(self) -> None:
        while (span := self._jobs.get()) is not None:
            started = time.perf_counter()
            try:
                span.embd = self._projector.encode(span, self._n_embd)
            except Exception as exc:  # one request's media fails alone
                log.warning("encoding a %s failed: %s", span.kind, exc)
                span.error = str(exc)
            finally:
                span.free_chunk()
                self.seconds += time.perf_counter() - started
                self.encoded += 1
                span.done.set()
                self._wake()
