"""How an answer appears as it streams: raw text, or markdown redrawn with rich."""

from __future__ import annotations

import sys
from typing import Protocol, TextIO


class Output(Protocol):
    def write(self, piece: str) -> None: ...

    def end(self) -> None: ...


class PlainOutput:
    """Each piece as it arrives; what `ollama run` shows, and what a pipe gets."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stdout
        self.last = ""

    def write(self, piece: str) -> None:
        self.stream.write(piece)
        self.stream.flush()
        self.last = piece

    def end(self) -> None:
        if self.last and not self.last.endswith("\n"):
            self.stream.write("\n")
        self.stream.flush()


class MarkdownOutput:
    """The answer so far as rendered markdown (headings, lists, highlighted code),
    redrawn at most 8 times a second while it grows (`--render markdown`)."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.live import Live
        from rich.markdown import Markdown

        self._markdown = Markdown
        self.text = ""
        self.live = Live(Markdown(""), console=Console(), refresh_per_second=8,
                         vertical_overflow="visible", transient=False)
        self.live.start()

    def write(self, piece: str) -> None:
        self.text += piece
        self.live.update(self._markdown(self.text))

    def end(self) -> None:
        self.live.update(self._markdown(self.text), refresh=True)
        self.live.stop()


def make_output(render: str) -> Output:
    return MarkdownOutput() if render == "markdown" else PlainOutput()
