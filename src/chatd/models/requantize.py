"""`--weights q8_0`: serve a model file's weights re-encoded as Q8_0.

llama.cpp's CPU backend has no batched kernel for the bundled model's Q4_1 weights
(neither llamafile's tinyBLAS nor a repacked layout takes Q4_1): a prompt, or a step
of 16 sequences, runs them one dot product at a time. Q8_0 has such kernels, so the
same weights re-encoded as Q8_0 processed prompts ~2x and 16 sequences 1.35-1.6x
faster on this project's 2-core AVX2 machine (README, "Weights").
The price is a second rounding: Q8_0's grid is not Q4_1's, so logits move a little
(on the bundled model: KL 0.007 nats a token, 4% of greedy choices change) and the
weights take ~1.5x the memory. That is the user's trade, never a default.

The re-encoded file is written once with llama.cpp's own quantizer and kept in a cache
directory, keyed by the source file, so later starts load it directly.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import llama_cpp

from chatd.models.registry import ModelFileError, ModelInfo

log = logging.getLogger("chatd")

WEIGHT_MODES = ("stored", "q8_0")
Q8_0_FILE_TYPE = llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0

# llama.cpp's names for `general.file_type` values (LLAMA_FTYPE_MOSTLY_Q4_1 -> "Q4_1"),
# for log lines and /health: read from the binding, so every type it knows is named.
FILE_TYPE_NAMES = {
    value: name.removeprefix("LLAMA_FTYPE_").removeprefix("MOSTLY_").removeprefix("ALL_")
    for name, value in vars(llama_cpp).items()
    if name.startswith("LLAMA_FTYPE_") and name != "LLAMA_FTYPE_GUESSED"
}


def file_type_name(info: ModelInfo) -> str:
    value = info.metadata.get("general.file_type")
    if value is None:
        return "unknown"
    return FILE_TYPE_NAMES.get(int(value), f"type {value}")


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/chatd/weights``, else ``~/.cache/chatd/weights``."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "chatd" / "weights"


def cache_path(info: ModelInfo, cache_dir: Path, kind: str = "q8_0") -> Path:
    """Where `info`'s copy of this kind lives: named after the source file, keyed by
    its path, size, modification time and header, so a replaced file is re-encoded."""
    stat = info.path.stat()
    digest = hashlib.sha256(json.dumps(
        [str(info.path.resolve()), stat.st_size, stat.st_mtime_ns, info.metadata],
        sort_keys=True, default=str).encode()).hexdigest()[:12]
    return cache_dir / f"{info.path.name.removesuffix('.gguf')}.{digest}.{kind}.gguf"


def served_weights(info: ModelInfo, mode: str, *, cache_dir: Path | None = None,
                   threads: int = 0) -> tuple[Path, str]:
    """(the file to load, what /health says of its weights) for `--weights mode`."""
    stored = file_type_name(info)
    if mode == "stored":
        return info.path, stored
    if mode != "q8_0":
        raise ModelFileError(f"--weights must be one of {', '.join(WEIGHT_MODES)}, not {mode}")
    if info.metadata.get("general.file_type") == Q8_0_FILE_TYPE:
        return info.path, stored
    target = cache_path(info, cache_dir or default_cache_dir())
    described = f"Q8_0 (re-encoded from {stored})"
    if target.is_file():
        return target, described
    _requantize(info.path, target, threads, Q8_0_FILE_TYPE, "--weights q8_0")
    return target, described


def dense_copy(info: ModelInfo, file_type: int, *, cache_dir: Path | None = None,
               threads: int = 0) -> Path:
    """The file's weights written out as `file_type` (F16 or BF16), once, for the dense
    prompt path (engine/prompts.py); later starts load the cached copy."""
    kind = FILE_TYPE_NAMES.get(file_type, str(file_type)).lower()
    target = cache_path(info, cache_dir or default_cache_dir(), kind)
    if not target.is_file():
        _requantize(info.path, target, threads, file_type, "--dense-prefill")
    return target


def _requantize(source: Path, target: Path, threads: int, file_type: int, flag: str) -> None:
    """Write `target` atomically: a start-up killed halfway leaves no half-written copy
    that a later start would load."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ModelFileError(f"{flag} cannot create its cache directory "
                             f"{target.parent}: {exc.strerror or exc}") from exc
    partial = target.with_name(f"{target.name}.{os.getpid()}.partial")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = file_type
    params.allow_requantize = True
    params.nthread = max(0, threads)
    name = FILE_TYPE_NAMES.get(file_type, str(file_type))
    log.info("writing %s's weights as %s into %s (once; later starts reuse it)",
             source.name, name, target.parent)
    try:
        status = llama_cpp.llama_model_quantize(str(source).encode(), str(partial).encode(),
                                                params)
        if status != 0 or not partial.is_file():
            raise ModelFileError(f"{flag}: llama.cpp could not write {source}'s weights as "
                                 f"{name} (status {status})")
        os.replace(partial, target)
    except OSError as exc:
        raise ModelFileError(f"{flag} cannot write {target}: "
                             f"{exc.strerror or exc}") from exc
    finally:
        partial.unlink(missing_ok=True)
