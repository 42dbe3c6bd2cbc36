"""stdin is not a terminal: the whole input is one message, and stdout gets only the
answer, so `echo "Name three colors" | chatd chat > out.txt` composes with other tools.
An error goes to stderr with the API's message and a non-zero exit status."""

from __future__ import annotations

import sys

from chatd.terminal.backends import BackendError, ChatBackend
from chatd.terminal.render import PlainOutput
from chatd.terminal.session import Session
from chatd.terminal.turn import stream_answer

EXIT_ERROR = 1


async def run(backend: ChatBackend, session: Session, text: str) -> int:
    try:
        await stream_answer(backend, session.request(text), PlainOutput(sys.stdout),
                            stoppable=False)
    except BackendError as exc:
        print(f"chatd chat: {exc}", file=sys.stderr, flush=True)
        return EXIT_ERROR
    return 0
