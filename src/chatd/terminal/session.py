"""A terminal conversation: its messages, its sampling options, and the slash commands.

Kept apart from the terminal I/O so the commands are plain functions of text in and
text out; saved chats are JSON files under the data directory (``paths``).
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from chatd.terminal.backends import TurnStats
from chatd.terminal.paths import chats_dir

HELP = """\
Commands:
  /set system TEXT      system prompt (/set system with no text: the model's default)
  /set temperature X    sampling temperature (0 = greedy)
  /set seed N           seed for reproducible answers (/set seed none: random)
  /set max_tokens N     longest answer in tokens (/set max_tokens none: no limit)
  /show                 the current settings
  /clear                forget the conversation (settings stay)
  /save NAME, /load NAME   keep a conversation and its settings, or bring it back
  /stats                the last answer's tokens, tokens/s and time to first token
  /bye                  exit (or Ctrl+D)
Multiline input: start and end it with \"\"\" (pasting several lines also works).
Ctrl+C stops an answer; Ctrl+C at the prompt clears the line."""

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class CommandError(ValueError):
    """A command that cannot be done as typed; the message says what to type."""


class Exit(Exception):
    """/bye: a signal to leave, not a failure."""


@dataclass
class Options:
    system: str | None = None
    temperature: float | None = None
    seed: int | None = None
    max_tokens: int | None = None

    def request_fields(self) -> dict[str, Any]:
        return {k: v for k, v in (("temperature", self.temperature), ("seed", self.seed),
                                  ("max_tokens", self.max_tokens)) if v is not None}


@dataclass
class Session:
    options: Options = field(default_factory=Options)
    messages: list[dict[str, str]] = field(default_factory=list)
    last: TurnStats | None = None

    def request(self, text: str) -> dict[str, Any]:
        """The Chat Completions body for a new user message (not yet recorded)."""
        messages = [{"role": "system", "content": self.options.system}] \
            if self.options.system else []
        messages += [*self.messages, {"role": "user", "content": text}]
        return {"messages": messages, **self.options.request_fields()}

    def record(self, text: str, answer: str) -> None:
        self.messages += [{"role": "user", "content": text},
                          {"role": "assistant", "content": answer}]

    # ---- commands ---------------------------------------------------------------

    def command(self, line: str) -> str:
        """Run a slash command; returns what to print. Raises Exit for /bye."""
        name, _, rest = line.strip().partition(" ")
        rest = rest.strip()
        handlers = {"/set": self._set, "/show": lambda _: self._show(),
                    "/clear": lambda _: self._clear(), "/save": self._save,
                    "/load": self._load, "/stats": lambda _: self._stats(),
                    "/help": lambda _: HELP, "/?": lambda _: HELP}
        if name in ("/bye", "/exit", "/quit"):
            raise Exit
        handler = handlers.get(name.lower())
        if handler is None:
            raise CommandError(f"Unknown command {name!r}. Type /? for help.")
        return handler(rest)

    def _set(self, rest: str) -> str:
        key, _, value = rest.partition(" ")
        value = value.strip()
        key = key.lower().replace("-", "_")
        o = self.options
        if key == "system":
            o.system = value or None
            return "System prompt set." if value else "System prompt cleared."
        if key == "temperature":
            o.temperature = _number(value, float, "temperature", low=0.0, high=2.0)
        elif key == "seed":
            o.seed = _number(value, int, "seed")
        elif key in ("max_tokens", "num_predict"):
            o.max_tokens = _number(value, int, "max_tokens", low=1)
        else:
            raise CommandError("Usage: /set system|temperature|seed|max_tokens VALUE")
        current = getattr(o, "max_tokens" if key == "num_predict" else key)
        return f"Set {key} to {'default' if current is None else current}."

    def _show(self) -> str:
        o = self.options
        return "\n".join([
            f"system:      {o.system if o.system else '(model default)'}",
            f"temperature: {o.temperature if o.temperature is not None else 'default'}",
            f"seed:        {o.seed if o.seed is not None else 'random'}",
            f"max_tokens:  {o.max_tokens if o.max_tokens is not None else 'no limit'}",
            f"messages:    {len(self.messages)}"])

    def _clear(self) -> str:
        self.messages.clear()
        return "Cleared the conversation."

    def _save(self, name: str) -> str:
        path = _chat_path(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        data = {"options": asdict(self.options), "messages": self.messages}
        path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
        return f"Saved the conversation as {name!r} ({path})."

    def _load(self, name: str) -> str:
        path = _chat_path(name)
        try:
            data = json.loads(path.read_text())
            options = Options(**data.get("options", {}))
            messages = [{"role": str(m["role"]), "content": str(m["content"])}
                        for m in data.get("messages", [])]
        except FileNotFoundError as exc:
            raise CommandError(f"No saved conversation {name!r}.") from exc
        except (OSError, ValueError, TypeError, KeyError) as exc:
            raise CommandError(f"Cannot load {path}: {exc}") from exc
        self.options, self.messages = options, messages
        return f"Loaded {name!r}: {len(messages)} messages."

    def _stats(self) -> str:
        s = self.last
        if s is None:
            return "No answer yet."
        ttft = "-" if s.ttft is None else f"{s.ttft * 1000:.0f} ms"
        speed = "-" if s.tokens_per_second is None else f"{s.tokens_per_second:.1f} tokens/s"
        lines = [f"completion tokens: {s.tokens}",
                 f"prompt tokens:     {s.prompt_tokens if s.prompt_tokens is not None else '-'}",
                 f"time to first token: {ttft}",
                 f"speed:             {speed}"]
        if s.ended is not None:
            lines.append(f"total time:        {s.ended - s.started:.2f} s")
        if s.stopped:
            lines.append("(stopped with Ctrl+C)")
        return "\n".join(lines)


def _number(text: str, kind: type, name: str, *, low: float | None = None,
            high: float | None = None) -> Any:
    if text.lower() in ("none", "default", "off", ""):
        if text == "":
            raise CommandError(f"Usage: /set {name} VALUE (or none)")
        return None
    try:
        value = kind(text)
    except ValueError as exc:
        raise CommandError(f"{name} must be a{'n integer' if kind is int else ' number'}, "
                           f"not {text!r}") from exc
    if (low is not None and value < low) or (high is not None and value > high):
        raise CommandError(f"{name} must be between {low} and {high if high else 'any'}")
    return value


def _chat_path(name: str) -> Path:
    if not _NAME.match(name):
        raise CommandError("Usage: /save NAME or /load NAME (letters, digits, . _ -)")
    return chats_dir() / f"{name}.json"
