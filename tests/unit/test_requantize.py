"""`--weights`: which file is loaded and where a re-encoded copy is kept (the
re-encoding itself runs on the real model in tests/e2e/test_weights.py)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from chatd.models.registry import ModelFileError, bundled_model_path, load_model_info
from chatd.models.requantize import (
    Q8_0_FILE_TYPE,
    cache_path,
    default_cache_dir,
    file_type_name,
    served_weights,
)


def test_stored_serves_the_file_itself() -> None:
    info = load_model_info(None)
    assert served_weights(info, "stored") == (info.path, "Q4_1")
    assert file_type_name(info) == "Q4_1"


def test_a_file_already_q8_0_is_served_as_it_is(tmp_path: Path) -> None:
    info = load_model_info(None)
    q8 = type(info)(path=info.path, name=info.name, file_size=info.file_size,
                    metadata={**info.metadata, "general.file_type": Q8_0_FILE_TYPE})
    assert served_weights(q8, "q8_0", cache_dir=tmp_path) == (info.path, "Q8_0")
    assert list(tmp_path.iterdir()) == []


def test_the_cache_key_follows_the_source_file(tmp_path: Path) -> None:
    copy = tmp_path / bundled_model_path().name
    shutil.copyfile(bundled_model_path(), copy)
    first = cache_path(load_model_info(copy), tmp_path / "cache")
    assert first.parent == tmp_path / "cache"
    assert first.name.startswith("SmolLM2-135M-Instruct.Q4_1.")
    assert first.name.endswith(".q8_0.gguf")
    assert cache_path(load_model_info(copy), tmp_path / "cache") == first
    os.utime(copy, ns=(0, 10**18))  # replaced in place: a new copy is due
    assert cache_path(load_model_info(copy), tmp_path / "cache") != first


def test_an_unknown_mode_and_an_unusable_directory_are_errors(tmp_path: Path) -> None:
    info = load_model_info(None)
    with pytest.raises(ModelFileError, match="--weights must be one of stored, q8_0"):
        served_weights(info, "q4_0")
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ModelFileError, match="cannot create its cache directory"):
        served_weights(info, "q8_0", cache_dir=blocker / "cache")


def test_the_default_cache_is_the_users_cache_directory(monkeypatch: pytest.MonkeyPatch,
                                                        tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_cache_dir() == tmp_path / "chatd" / "weights"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert default_cache_dir() == Path.home() / ".cache" / "chatd" / "weights"
