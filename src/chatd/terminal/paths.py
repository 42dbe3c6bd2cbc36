"""Where `chatd chat` keeps its input history and saved conversations.

``$CHATD_HOME`` if set, else ``$XDG_DATA_HOME/chatd``, else ``~/.local/share/chatd``:
per user, surviving across sessions (the history is what the up arrow brings back).
"""

from __future__ import annotations

import os
from pathlib import Path


def data_dir() -> Path:
    if home := os.environ.get("CHATD_HOME"):
        return Path(home)
    xdg = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(xdg) / "chatd"


def history_file() -> Path:
    return data_dir() / "chat_history"


def chats_dir() -> Path:
    return data_dir() / "chats"
