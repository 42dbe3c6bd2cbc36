"""API keys from a file, and how a key is told apart without being shown."""

from __future__ import annotations

from pathlib import Path

import pytest

from chatd.api.auth import KeyChecker, key_hash
from chatd.config import KeyFileError, Settings


def test_keys_file_with_comments(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    path.write_text("# team keys\nsk-alice   # alice\n\n  sk-bob\n#sk-old\n")
    assert Settings.keys_from_file(path) == ("sk-alice", "sk-bob")


def test_keys_file_rejects_a_key_with_spaces(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    path.write_text("sk one\n")
    with pytest.raises(KeyFileError, match="line 1"):
        Settings.keys_from_file(path)


def test_missing_keys_file(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="cannot read"):
        Settings.keys_from_file(tmp_path / "absent")


def test_tags_are_short_and_distinct() -> None:
    checker = KeyChecker(("sk-a", "sk-b", "sk-a"))
    assert checker.tags == [key_hash("sk-a"), key_hash("sk-b")]
    assert all(len(t) == 12 and "sk-" not in t for t in checker.tags)
