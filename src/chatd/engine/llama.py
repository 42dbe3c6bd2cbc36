"""The only module that touches llama.cpp: load, tokenize, batch decode, KV cache ops.

Everything here runs on the engine thread except `tokenize`, which only reads the
vocabulary (thread-safe in llama.cpp) and is called from request handlers.
"""

from __future__ import annotations

import ctypes
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

import llama_cpp as lc
import numpy as np

from chatd.engine.pieces import PieceTokenizer, Special

log = logging.getLogger("chatd.llama")
_llama_log = logging.getLogger("chatd.llama.cpp")

# ggml log levels -> Python logging levels (llama.cpp's own lines are quiet by default).
_LEVELS = {1: logging.DEBUG, 2: logging.INFO, 3: logging.WARNING, 4: logging.ERROR}
_log_tail: list[str] = []
# The weight buffers llama.cpp reports while a model loads ("CPU_REPACK model buffer
# size = ..."): how it holds the weights, which decides which kernels run them.
_BUFFER_LINE = re.compile(r"(\S+) model buffer size =")
_buffers_seen: list[str] = []


@lc.llama_log_callback
def log_callback(level: int, text: bytes, _user: ctypes.c_void_p) -> None:
    """Route llama.cpp's log through Python logging; lines arrive in fragments."""
    _log_tail.append(text.decode("utf-8", errors="replace"))
    if _log_tail[-1].endswith("\n"):
        line = "".join(_log_tail).rstrip()
        _log_tail.clear()
        if line:
            if (found := _BUFFER_LINE.search(line)) is not None:
                _buffers_seen.append(found.group(1))
            # llama.cpp logs its warnings about normal operation at WARN; keep them DEBUG
            # unless they are errors, so a quiet server stays quiet.
            py_level = logging.ERROR if level == 4 else logging.DEBUG
            _llama_log.log(py_level, "%s", line)


_backend_ready = False


def init_backend() -> None:
    """Route llama.cpp's log through Python logging and init the backend, once."""
    global _backend_ready
    if not _backend_ready:
        lc.llama_log_set(log_callback, ctypes.c_void_p(0))
        lc.llama_backend_init()
        _backend_ready = True


def cpu_has_amx() -> bool:
    """Whether the CPU advertises Intel AMX (Sapphire Rapids and later)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return "amx_int8" in line.split()
    except OSError:
        pass
    return False


def gpu_offload_supported() -> bool:
    """Whether this llama.cpp build can run layers on a GPU (CUDA, Metal, Vulkan...)."""
    return bool(lc.llama_supports_gpu_offload())


def model_params(interleave: bool = True) -> lc.llama_model_params:
    """Load parameters for the weights, shared by the server and the ceiling benchmark.

    `interleave` lets llama.cpp hold the weights interleaved ("repacked", eight rows
    together) where it has kernels for that (Q4_0, Q4_K, IQ4_NL; Q4_1 with chatd's patch
    to the llama.cpp that llama-cpp-python vendors, patches/). Those kernels multiply
    activations four rows at a time and the rest one by one. A probe gave a row bitwise
    the same logits either way, but `--deterministic`'s guarantee is what the suite and
    `benchmarks.invariance` check on llama.cpp's plain kernels, so that mode keeps them.

    On CPUs with AMX, llama.cpp moves Q4_1 weights into its AMX buffer type, and the
    AMX matmul in the llama.cpp that llama-cpp-python 0.3.36 bundles segfaults on the
    first decode (seen on a 2-core Xeon VM with amx_int8). Extra buffer types are
    turned off there; elsewhere they stay on, since they also hold the repacked
    weights that make Q4_0/Q4_K models faster on AVX2.
    """
    mparams = lc.llama_model_default_params()
    mparams.n_gpu_layers = -1 if gpu_offload_supported() else 0
    if not interleave or cpu_has_amx():
        mparams.use_extra_bufts = False
    return mparams


def load_model(path: Path, interleave: bool = True
               ) -> tuple[lc.llama_model_p, tuple[str, ...]]:
    """The loaded weights, and the buffers llama.cpp reported holding them in."""
    init_backend()
    _buffers_seen.clear()
    model = lc.llama_model_load_from_file(str(path).encode(), model_params(interleave))
    if not model:
        raise RuntimeError(f"llama.cpp could not load {path}")
    return model, tuple(_buffers_seen)


def weights_interleaved(path: Path) -> bool:
    """Whether llama.cpp holds this file's weights interleaved for its batched kernels
    (loads them once to see)."""
    model, buffers = load_model(path)
    lc.llama_model_free(model)
    return "CPU_REPACK" in buffers


class DecodeError(RuntimeError):
    """llama_decode failed; `no_space` means the KV cache had no room for the batch."""

    def __init__(self, code: int) -> None:
        super().__init__(f"llama_decode returned {code}")
        self.code = code
        self.no_space = code == 1


# Attention always runs flash attention, over f16 keys and values by default: with them
# llama.cpp processes prompts with its tiled kernel (a ~1,000-token prompt's first token
# ~1.45x sooner than with q8_0 on 2 cores). With equal f16 K/V types it picks among
# three kernels, and two make a row's logits depend on the rest of the micro-batch and
# on where its cells sit in the cache: the tiled one (>= 64 query rows) groups KV cells
# into blocks by cache index, and the split-KV one (a lone row over 512+ cells) cuts
# the occupied range into one chunk per thread. A seeded request's text can then change
# when another request's prompt is prefilled beside it, or when it runs again over a
# cache that holds other entries. With quantized K/V llama.cpp always uses the per-row
# kernel, which visits only the sequence's own cells, in cache order, so
# `--deterministic` (batch-invariant mode) keeps q8_0 keys and values. Decode speed was
# within noise of f16's in the server: f16's lone-row step is ~10% faster over a fresh
# cache, but its split-KV kernel cuts cells by position, so with many idle prefix-cache
# cells below a sequence one thread gets all of its cells (2,100 idle cells: 9.2-12.0
# ms a step against q8_0's 8.3-9.0; 256-512 idle cells: no clear difference).
KV_CACHE_TYPE = lc.GGML_TYPE_F16
INVARIANT_KV_CACHE_TYPE = lc.GGML_TYPE_Q8_0

# Cutting at special tokens scans the text once per special token (as llama.cpp does),
# and the start-up check builds a probe per special token: vocabularies with thousands
# of added tokens keep llama.cpp's own path.
MAX_PIECE_SPECIALS = 512


@dataclass(frozen=True)
class LlamaSettings:
    """Context settings that change outputs or capacity (part of the fingerprint)."""

    kv_cells: int
    n_seq_max: int
    n_batch: int = 512
    n_threads: int = 0  # 0 = physical cores
    type_k: int = KV_CACHE_TYPE
    type_v: int = KV_CACHE_TYPE
    kv_unified: bool = True  # False: one stream of kv_cells / n_seq_max cells per sequence
    interleave: bool = True  # weights in llama.cpp's interleaved layout where it has one


def default_threads() -> int:
    """llama.cpp is fastest with one thread per physical core, not per hyperthread."""
    count = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, count or 1)


class LlamaContext:
    """A loaded GGUF model with one context and its batch: decode and KV cache ops.

    The served model is a `LlamaModel`; a second, bare context runs prompts through
    dense weights (engine/prompts.py) and needs no vocabulary tables.
    """

    def __init__(self, path: Path, settings: LlamaSettings) -> None:
        self.settings = settings
        self._model, self.weight_buffers = load_model(path, settings.interleave)
        self._vocab = lc.llama_model_get_vocab(self._model)
        self.n_vocab = lc.llama_vocab_n_tokens(self._vocab)
        self.n_ctx_train = lc.llama_model_n_ctx_train(self._model)

        cparams = lc.llama_context_default_params()
        threads = settings.n_threads or default_threads()
        cparams.n_ctx = settings.kv_cells
        cparams.n_batch = settings.n_batch
        cparams.n_ubatch = settings.n_batch
        cparams.flash_attn_type = lc.LLAMA_FLASH_ATTN_TYPE_ENABLED  # quantized V needs it
        cparams.n_seq_max = settings.n_seq_max
        cparams.n_threads = threads
        cparams.n_threads_batch = threads
        cparams.type_k = settings.type_k
        cparams.type_v = settings.type_v
        # One cell pool makes prefix sharing and n>1 forks free; one stream per sequence
        # makes each decoding row read only its own sequence's cells (engine/streams.py).
        cparams.kv_unified = settings.kv_unified
        cparams.no_perf = True
        self._ctx = lc.llama_init_from_model(self._model, cparams)
        if not self._ctx:
            lc.llama_model_free(self._model)
            self._model = None
            raise RuntimeError("llama.cpp could not create a context (out of memory?)")
        self._mem = lc.llama_get_memory(self._ctx)
        self.kv_cells = lc.llama_n_ctx(self._ctx)
        self.stream_cells = lc.llama_n_ctx_seq(self._ctx)  # cells one sequence may hold

        self._batch = lc.llama_batch_init(settings.n_batch, 0, 1)
        self._batch_cap = settings.n_batch
        self._embd_batch: lc.llama_batch | None = None  # made for the first media rows
        self._partner: LlamaContext | None = None  # whose context this one holds now

    @property
    def handle(self) -> lc.llama_model_p:
        """The llama_model pointer (libmtmd loads a projector against it)."""
        return self._model

    @property
    def n_params(self) -> int:
        return int(lc.llama_model_n_params(self._model))

    @property
    def interleaved(self) -> bool:
        """Whether llama.cpp holds (some of) the weights interleaved for its batched
        kernels: for a Q4_1 file, only with chatd's patch (patches/)."""
        return "CPU_REPACK" in self.weight_buffers

    @property
    def file_type(self) -> int:
        """The weights' llama_ftype (LLAMA_FTYPE_MOSTLY_Q4_1, ...)."""
        return int(lc.llama_model_ftype(self._model))

    # ---- decoding ---------------------------------------------------------------

    def decode(self, tokens: list[int], positions: list[int], seq_ids: list[int],
               want_logits: list[bool]) -> None:
        """One llama_decode over tokens of many sequences (the engine's single step)."""
        n = len(tokens)
        if n > self._batch_cap:
            raise ValueError(f"batch of {n} tokens exceeds n_batch {self._batch_cap}")
        b = self._batch
        b.n_tokens = n
        for i in range(n):
            b.token[i] = tokens[i]
            b.pos[i] = positions[i]
            b.n_seq_id[i] = 1
            b.seq_id[i][0] = seq_ids[i]
            b.logits[i] = want_logits[i]
        rc = lc.llama_decode(self._ctx, b)
        if rc != 0:
            raise DecodeError(rc)

    # ---- KV cache -----------------------------------------------------------------

    def seq_remove(self, seq_id: int, start: int = 0, end: int = -1) -> None:
        lc.llama_memory_seq_rm(self._mem, seq_id, start, end)

    def seq_copy(self, src: int, dst: int, start: int = 0, end: int = -1) -> None:
        lc.llama_memory_seq_cp(self._mem, src, dst, start, end)

    def seq_pos_max(self, seq_id: int) -> int:
        return lc.llama_memory_seq_pos_max(self._mem, seq_id)

    def clear(self) -> None:
        # Cell contents need no zeroing: attention skips every cell no sequence holds.
        lc.llama_memory_clear(self._mem, False)

    def seq_save(self, seq_id: int) -> ctypes.Array[ctypes.c_uint8]:
        """A byte copy of one sequence's KV cells (positions and data, in cell order)."""
        size = lc.llama_state_seq_get_size(self._ctx, seq_id)
        buf = (ctypes.c_uint8 * size)()
        if lc.llama_state_seq_get_data(self._ctx, buf, size, seq_id) != size:
            raise RuntimeError(f"could not save the KV cells of sequence {seq_id}")
        return buf

    def seq_restore(self, data: ctypes.Array[ctypes.c_uint8], seq_id: int) -> None:
        """Put saved cells back under `seq_id`, in the same order, in the lowest free
        cells from llama.cpp's allocation cursor; the bytes are unchanged."""
        if lc.llama_state_seq_set_data(self._ctx, data, len(data), seq_id) != len(data):
            raise RuntimeError(f"could not restore the KV cells of sequence {seq_id}")

    def swap_context(self, other: LlamaContext) -> None:
        """Exchange llama.cpp contexts (each with its weights and KV cache) with
        `other`, a context with the same settings over a copy of the same weights:
        decoding, logits and KV ops here then run on the copy, while this object
        keeps its own identity (file type, vocabulary). engine/weights.py."""
        if other.settings != self.settings:
            raise ValueError("contexts with different settings cannot stand in for each other")
        self._ctx, other._ctx = other._ctx, self._ctx
        self._mem, other._mem = other._mem, self._mem
        swapped = self._partner is None
        self._partner = other if swapped else None
        other._partner = self if swapped else None

    @property
    def swapped(self) -> bool:
        """Whether this object holds the other context (`swap_context`)."""
        return self._partner is not None

    def close(self) -> None:
        if self._partner is not None:  # each frees the context made over its own weights
            self.swap_context(self._partner)
        if self._ctx:
            lc.llama_batch_free(self._batch)
            if self._embd_batch is not None:
                lc.llama_batch_free(self._embd_batch)
            lc.llama_free(self._ctx)
            self._ctx = None
        if self._model:
            lc.llama_model_free(self._model)
            self._model = None


class LlamaModel(LlamaContext):
    """The served model: a context plus its vocabulary, logits and media rows."""

    def __init__(self, path: Path, settings: LlamaSettings) -> None:
        super().__init__(path, settings)
        self.n_embd = lc.llama_model_n_embd_inp(self._model)
        # llama_get_logits_ith returning a bare address, and one numpy view per address
        # seen: building a view through ctypes costs ~20 us a row with cold caches.
        self._logits_ith = lc.llama_cpp._lib["llama_get_logits_ith"]
        self._logits_ith.argtypes = [ctypes.c_void_p, ctypes.c_int32]
        self._logits_ith.restype = ctypes.c_void_p
        self._row_views: dict[int, np.ndarray] = {}
        self.bos_id = lc.llama_vocab_bos(self._vocab)
        self.eos_id = lc.llama_vocab_eos(self._vocab)
        self.add_bos = bool(lc.llama_vocab_get_add_bos(self._vocab))
        self.eog_ids = frozenset(
            t for t in range(self.n_vocab) if lc.llama_vocab_is_eog(self._vocab, t)
        )
        self.token_bytes = [self._piece(t, special=False) for t in range(self.n_vocab)]
        self.token_display = [self._piece(t, special=True) for t in range(self.n_vocab)]
        self._pieces = self._piece_tokenizer()

    # ---- vocabulary -------------------------------------------------------------

    def _piece(self, token: int, *, special: bool) -> bytes:
        buf = ctypes.create_string_buffer(64)
        n = lc.llama_token_to_piece(self._vocab, token, buf, 64, 0, special)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = lc.llama_token_to_piece(self._vocab, token, buf, -n, 0, special)
        return buf.raw[:n]

    @property
    def vocab(self) -> lc.llama_vocab_p:
        return self._vocab

    def token_text(self, token: int) -> str:
        """The special-aware rendering of one token, for logprobs and diagnostics."""
        return self.token_display[token].decode("utf-8", errors="replace")

    def _piece_tokenizer(self) -> PieceTokenizer | None:
        """A cache of the tokens between special tokens (chatd.engine.pieces), where
        llama.cpp tokenizes those pieces independently and the cuts check out."""
        if (lc.llama_vocab_type(self._vocab) != lc.LLAMA_VOCAB_TYPE_BPE
                or lc.llama_vocab_get_add_eos(self._vocab)):
            return None
        cut_at = (lc.LLAMA_TOKEN_ATTR_CONTROL | lc.LLAMA_TOKEN_ATTR_USER_DEFINED
                  | lc.LLAMA_TOKEN_ATTR_UNKNOWN)
        specials = []
        for t in range(self.n_vocab):
            attr = lc.llama_vocab_get_attr(self._vocab, t)
            text = lc.llama_vocab_get_text(self._vocab, t)
            if attr & cut_at and text:
                specials.append(Special(text, t, lstrip=bool(attr & lc.LLAMA_TOKEN_ATTR_LSTRIP),
                                        rstrip=bool(attr & lc.LLAMA_TOKEN_ATTR_RSTRIP)))
        if not specials or len(specials) > MAX_PIECE_SPECIALS:
            return None
        pieces = PieceTokenizer(specials, lambda b: self._tokenize(b, False, False))
        if not pieces.matches(lambda b: self._tokenize(b, False, True)):
            log.info("prompt pieces are not cached for this vocabulary")
            return None
        return pieces

    def tokenize(self, text: str, *, add_special: bool = True,
                 parse_special: bool = True) -> list[int]:
        data = text.encode("utf-8")
        if parse_special and self._pieces is not None:
            tokens = self._pieces.tokenize(data)
            return [self.bos_id, *tokens] if add_special and self.add_bos else tokens
        return self._tokenize(data, add_special, parse_special)

    def _tokenize(self, data: bytes, add_special: bool, parse_special: bool) -> list[int]:
        cap = len(data) + 8
        while True:
            arr = (lc.llama_token * cap)()
            n = lc.llama_tokenize(self._vocab, data, len(data), arr, cap, add_special,
                                  parse_special)
            if n >= 0:
                return list(arr[:n])
            cap = -n

    def detokenize(self, tokens: list[int]) -> str:
        """Token ids back to text, special tokens written out (as `tokenize` parses them)."""
        if not tokens:
            return ""
        arr = (lc.llama_token * len(tokens))(*tokens)
        cap = 8 * len(tokens) + 16
        while True:
            buf = ctypes.create_string_buffer(cap)
            n = lc.llama_detokenize(self._vocab, arr, len(tokens), buf, cap, False, True)
            if n >= 0:
                return buf.raw[:n].decode("utf-8", errors="replace")
            cap = -n

    def meta(self, key: str) -> str | None:
        buf = ctypes.create_string_buffer(4096)
        n = lc.llama_model_meta_val_str(self._model, key.encode(), buf, len(buf))
        return buf.value.decode("utf-8", errors="replace") if n >= 0 else None

    # ---- decoding ---------------------------------------------------------------

    def decode_embeddings(self, rows: np.ndarray, start: int, seq_id: int, *,
                          want_last_logits: bool, causal: bool = True) -> None:
        """One llama_decode of embedding rows (an image or audio chunk's, from libmtmd)
        for one sequence at positions start.. (llama.cpp cannot mix them with tokens).
        `causal=False` for projectors whose rows attend to each other both ways."""
        n = rows.shape[0]
        if n > self._batch_cap:
            raise ValueError(f"{n} embedding rows exceed n_batch {self._batch_cap}")
        if self._embd_batch is None:
            self._embd_batch = lc.llama_batch_init(self._batch_cap, self.n_embd, 1)
        b = self._embd_batch
        b.n_tokens = n
        flat = np.ascontiguousarray(rows, dtype=np.float32).reshape(-1)
        ctypes.memmove(b.embd, flat.ctypes.data, flat.nbytes)
        for i in range(n):
            b.pos[i] = start + i
            b.n_seq_id[i] = 1
            b.seq_id[i][0] = seq_id
            b.logits[i] = want_last_logits and i == n - 1
        if not causal:
            lc.llama_set_causal_attn(self._ctx, False)
        try:
            rc = lc.llama_decode(self._ctx, b)
        finally:
            if not causal:
                lc.llama_set_causal_attn(self._ctx, True)
        if rc != 0:
            raise DecodeError(rc)

    def logits_row(self, batch_index: int) -> np.ndarray:
        """A zero-copy view of one output row; valid until the next decode.

        A view is only a pointer and a shape, so the one made for an address earlier
        is as good as a new one whenever llama.cpp returns that address again.
        """
        addr = self._logits_ith(self._ctx, batch_index)
        if not addr:
            raise RuntimeError(f"llama.cpp has no logits for batch row {batch_index}")
        row = self._row_views.get(addr)
        if row is None:
            if len(self._row_views) >= 4 * self.settings.n_batch:
                self._row_views.clear()  # the output buffer moved; drop stale views
            row = np.ctypeslib.as_array((ctypes.c_float * self.n_vocab).from_address(addr))
            self._row_views[addr] = row
        return row

    def logits_rows(self, batch_indices: list[int]) -> np.ndarray:
        """The output rows of these batch rows as one [k, n_vocab] array: a zero-copy
        view when llama.cpp stored them back to back (every decode-only step), else a
        stacked copy. Valid until the next decode."""
        addrs = [self._logits_ith(self._ctx, i) for i in batch_indices]
        if not all(addrs):
            raise RuntimeError(f"llama.cpp has no logits for some of the rows {batch_indices}")
        stride = self.n_vocab * ctypes.sizeof(ctypes.c_float)
        first = addrs[0]
        if all(a == first + j * stride for j, a in enumerate(addrs)):
            block = (ctypes.c_float * (self.n_vocab * len(addrs))).from_address(first)
            return np.ctypeslib.as_array(block).reshape(len(addrs), self.n_vocab)
        return np.stack([self.logits_row(i) for i in batch_indices])
