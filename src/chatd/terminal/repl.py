"""The interactive loop: read a line (prompt_toolkit: editing, history across sessions,
bracketed paste), run a slash command or stream an answer, repeat until /bye or Ctrl+D.
"""

from __future__ import annotations

import sys
from pathlib import Path

from prompt_toolkit import PromptSession
from prompt_toolkit.history import FileHistory, History, InMemoryHistory

from chatd.terminal.backends import BackendError, ChatBackend
from chatd.terminal.render import make_output
from chatd.terminal.session import CommandError, Exit, Session
from chatd.terminal.turn import stream_answer

PROMPT = ">>> "
CONTINUATION = "... "
QUOTES = '"""'


def _history(path: Path | None) -> History:
    if path is None:
        return InMemoryHistory()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(exist_ok=True)
        return FileHistory(str(path))
    except OSError as exc:
        print(f"(input history not kept: {exc})", file=sys.stderr)
        return InMemoryHistory()


def unquote(text: str) -> str:
    """Drop the opening and closing \"\"\" of a multiline block."""
    first = text.find(QUOTES)
    last = text.rfind(QUOTES)
    if first == -1:
        return text
    if last == first:
        return (text[:first] + text[first + 3:]).strip()
    return (text[:first] + text[first + 3:last] + text[last + 3:]).strip()


async def _read(prompt: PromptSession) -> str:
    """One input: a line, or every line of a \"\"\" ... \"\"\" block."""
    line = await prompt.prompt_async(PROMPT)
    if line.count(QUOTES) % 2 == 0:
        return line
    lines = [line]
    while True:
        more = await prompt.prompt_async(CONTINUATION)
        lines.append(more)
        if QUOTES in more:
            return unquote("\n".join(lines))


async def run(backend: ChatBackend, session: Session, *, render: str,
              history_path: Path | None) -> int:
    prompt: PromptSession = PromptSession(history=_history(history_path))
    print(f"chatd chat · {backend.model} · /? for help, Ctrl+D or /bye to exit", flush=True)
    while True:
        try:
            text = await _read(prompt)
        except KeyboardInterrupt:
            continue  # Ctrl+C at the prompt: a fresh line, like a shell
        except EOFError:
            return 0
        if not text.strip():
            continue
        if text.lstrip().startswith("/"):
            try:
                print(session.command(text))
            except CommandError as exc:
                print(exc)
            except Exit:
                return 0
            continue
        try:
            answer, stats = await stream_answer(backend, session.request(text),
                                                make_output(render))
        except BackendError as exc:
            print(f"Error: {exc}", file=sys.stderr, flush=True)
            continue
        if stats.stopped:
            print("(stopped)", flush=True)
        session.last = stats
        if answer:
            session.record(text, answer)
