"""`chatd chat` in a real pseudo-terminal (pexpect) and in pipe mode.

In-process on the bundled model (no server, no port), and against the session's real
`chatd serve` through --base-url. Each terminal gets its own data directory
(CHATD_HOME), so history and saved chats never touch the user's.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from .conftest import AUTH_KEY, EXTRA_SERVER_ARGS

pexpect = pytest.importorskip("pexpect", reason="pexpect is not installed (the test extra)")

# prompt_toolkit turns bracketed paste on while it reads a line and off once the line is
# taken: the output of a command or an answer lies between the two.
READING = "\x1b[?2004h"
TAKEN = "\x1b[?2004l"
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][A-Z0-9]|\r")
LONG = "Write a long story about a dragon and a knight."


def _engine_args() -> list[str]:
    """The e2e servers' mode and --threads, for the in-process engine too: batch-invariant
    (the seeded-answer test reruns a prompt over its own cached prefix) and the cores
    shared as the servers share them."""
    args = EXTRA_SERVER_ARGS
    if "--threads" in args:
        return ["--deterministic", "--threads", args[args.index("--threads") + 1]]
    return ["--deterministic"]


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "chatd-home"


def _env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("CHATD_API_KEY", "OPENAI_API_KEY")}
    # PROMPT_TOOLKIT_NO_CPR: pexpect does not answer prompt_toolkit's cursor-position
    # query, which would otherwise cost a 2 s wait and a warning.
    env.update(CHATD_HOME=str(home), TERM="xterm", PROMPT_TOOLKIT_NO_CPR="1",
               PYTHONUNBUFFERED="1")
    return env


def _plain(text: str) -> str:
    return ANSI.sub("", text)


class Terminal:
    def __init__(self, home: Path, *args: str) -> None:
        self.child = pexpect.spawn(sys.executable, ["-m", "chatd", "chat", *args],
                                   env=_env(home), encoding="utf-8", timeout=90,
                                   dimensions=(50, 200))
        self.child.expect_exact("/bye to exit")
        self.prompt()

    def prompt(self, timeout: float = 90) -> str:
        """Wait until a line is read again; returns what was printed before, plain."""
        self.child.expect_exact(READING, timeout=timeout)
        return _plain(self.child.before)

    def send(self, line: str) -> None:
        """Type `line` (its newlines are Enter) and wait until it is taken."""
        self.child.sendline(line)
        for _ in line.split("\n"):
            self.child.expect_exact(TAKEN)

    def run(self, line: str, timeout: float = 90) -> str:
        """Send `line`; returns the output up to the next prompt."""
        self.send(line)
        return self.prompt(timeout).strip()

    def close(self) -> None:
        if self.child.isalive():
            self.child.terminate(force=True)


@pytest.fixture
def terminal(home: Path) -> Iterator[Terminal]:
    t = Terminal(home, *_engine_args())
    yield t
    t.close()


def test_a_turn_streams_and_bye_exits_0(terminal: Terminal) -> None:
    terminal.run("/set max_tokens 120")
    terminal.run("/set temperature 0")  # greedy: a long answer every time, not by luck
    child = terminal.child
    terminal.send("Count from one to thirty in words.")
    reads: list[tuple[float, int]] = []
    text = ""
    while READING not in text:
        chunk = child.read_nonblocking(4096, timeout=60)
        reads.append((time.monotonic(), len(chunk)))
        text += chunk
    answer = _plain(text.split(READING)[0]).strip()
    assert len(answer) > 40, answer
    # Streamed: the answer came in many writes spread over time, not in one piece.
    assert len(reads) >= 5, reads
    assert reads[-1][0] - reads[0][0] > 0.2, reads
    assert "/bye to exit" not in answer and "Traceback" not in answer
    child.sendline("/bye")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


def test_ctrl_c_stops_the_answer_and_the_prompt_returns(terminal: Terminal) -> None:
    child = terminal.child
    terminal.send(LONG)
    child.expect(r"\w+ \w+ \w+ \w+ \w+")  # some of the answer is out
    started = time.monotonic()
    child.sendintr()
    child.expect(r"\(stopped\)", timeout=10)
    terminal.prompt(timeout=10)
    assert time.monotonic() - started < 5
    stats = terminal.run("/stats")
    assert "stopped with Ctrl+C" in stats and "tokens/s" in stats, stats
    assert re.search(r"time to first token: \d+ ms", stats), stats
    # Still alive and answering; Ctrl+C at the prompt only clears the line.
    child.sendintr()
    terminal.prompt(timeout=10)
    assert "messages:    2" in terminal.run("/show")
    child.sendeof()  # Ctrl+D
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


def test_temperature_0_seeded_turn_is_reproducible(terminal: Terminal, home: Path) -> None:
    assert "Set temperature to 0" in terminal.run("/set temperature 0")
    terminal.run("/set seed 42")
    terminal.run("/set max_tokens 30")
    first = terminal.run("Name three colors.")
    assert first
    terminal.run("/clear")
    second = terminal.run("Name three colors.")
    assert second == first
    # Pipe mode with the same settings prints exactly that answer, and nothing else.
    result = subprocess.run(
        [sys.executable, "-m", "chatd", "chat", *_engine_args(), "--temperature", "0",
         "--seed", "42", "--max-tokens", "30"],
        input="Name three colors.", capture_output=True, text=True, env=_env(home),
        timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == _plain(first).strip()


def test_multiline_paste_history_save_and_load(home: Path) -> None:
    t = Terminal(home, *_engine_args(), "--max-tokens", "6", "--temperature", "0")
    try:
        answer = t.run('"""First line\nsecond line"""')
        assert answer
        # Bracketed paste: two lines pasted at once are one message, sent with Enter.
        t.child.send("\x1b[200~Pasted one\nPasted two\x1b[201~")
        time.sleep(0.2)
        t.child.send("\r")
        t.prompt()
        assert "messages:    4" in t.run("/show")
        assert "Saved" in t.run("/save colours")
        assert (home / "chats" / "colours.json").is_file()
        assert "Unknown command" in t.run("/nonsense")
        t.child.sendline("/bye")
        t.child.expect(pexpect.EOF)
    finally:
        t.close()
    history = (home / "chat_history").read_text()
    assert "Pasted one" in history and "/save colours" in history

    t = Terminal(home, *_engine_args())
    try:
        # The input history of the last session is one Up arrow away.
        t.child.send("\x1b[A")
        t.child.expect("/bye")
        t.child.sendintr()  # clears the line
        t.prompt()
        assert "Loaded 'colours': 4 messages" in t.run("/load colours")
        shown = t.run("/show")
        assert "max_tokens:  6" in shown and "temperature: 0.0" in shown, shown
    finally:
        t.close()


def test_pipe_mode_prints_only_the_answer(home: Path, server_url: str, model_id: str) -> None:
    body = {"model": model_id, "messages": [{"role": "user", "content": "Name three colors."}],
            "temperature": 0, "max_tokens": 24}
    expected = httpx.post(server_url + "/v1/chat/completions", json=body,
                          timeout=60).json()["choices"][0]["message"]["content"]
    result = subprocess.run(
        [sys.executable, "-m", "chatd", "chat", "--base-url", server_url,
         "--temperature", "0", "--max-tokens", "24"],
        input="Name three colors.\n", capture_output=True, text=True, env=_env(home),
        timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout == expected + "\n"
    assert result.stderr == ""


def test_pipe_mode_error_exits_non_zero_with_the_api_message(home: Path,
                                                             auth_server_url: str) -> None:
    r = httpx.get(auth_server_url + "/v1/models",
                  headers={"Authorization": "Bearer wrong-key"})
    message = r.json()["error"]["message"]
    result = subprocess.run(
        [sys.executable, "-m", "chatd", "chat", "--base-url", auth_server_url + "/v1",
         "--api-key", "wrong-key"],
        input="Hello", capture_output=True, text=True, env=_env(home), timeout=60)
    assert result.returncode != 0
    assert result.stdout == ""
    assert message in result.stderr and "401" in result.stderr, result.stderr
    ok = subprocess.run(
        [sys.executable, "-m", "chatd", "chat", "--base-url", auth_server_url,
         "--max-tokens", "4"],
        input="Hello", capture_output=True, text=True,
        env={**_env(home), "CHATD_API_KEY": AUTH_KEY}, timeout=60)
    assert ok.returncode == 0 and ok.stdout.strip(), ok.stderr


def test_ctrl_c_over_http_cancels_on_the_server(home: Path, server_url: str) -> None:
    t = Terminal(home, "--base-url", server_url)
    try:
        t.send(LONG)
        t.child.expect(r"\w+ \w+ \w+ \w+ \w+")
        t.child.sendintr()
        t.child.expect(r"\(stopped\)", timeout=10)
        deadline = time.monotonic() + 10
        while httpx.get(server_url + "/health").json()["running_sequences"]:
            assert time.monotonic() < deadline, "the server still generates"
            time.sleep(0.1)
        t.prompt()
        t.child.sendline("/bye")
        t.child.expect(pexpect.EOF)
        t.child.close()
        assert t.child.exitstatus == 0
    finally:
        t.close()


def test_render_markdown(home: Path) -> None:
    args = [*_engine_args(), "--temperature", "0", "--max-tokens", "60"]
    question = "Write a python function that adds two numbers, in a code block."
    raw = subprocess.run([sys.executable, "-m", "chatd", "chat", *args], input=question,
                         capture_output=True, text=True, env=_env(home), timeout=120)
    assert "```" in raw.stdout, f"the model wrote no code fence: {raw.stdout!r}"
    t = Terminal(home, *args, "--render", "markdown")
    try:
        shown = t.run(question)
        assert "```" not in shown and "def " in shown, shown
        t.child.sendline("/bye")
        t.child.expect(pexpect.EOF)
    finally:
        t.close()


# --------------------------------------------------------------------------- no model


def test_commands_and_multiline_parsing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                        ) -> None:
    from chatd.terminal.backends import api_base
    from chatd.terminal.repl import unquote
    from chatd.terminal.session import CommandError, Exit, Session

    monkeypatch.setenv("CHATD_HOME", str(tmp_path))
    s = Session()
    s.command("/set system Be brief.")
    s.command("/set temperature 0.5")
    s.command("/set seed 7")
    s.command("/set max_tokens 12")
    s.record("Hi", "Hello!")
    assert s.request("Again") == {
        "messages": [{"role": "system", "content": "Be brief."},
                     {"role": "user", "content": "Hi"},
                     {"role": "assistant", "content": "Hello!"},
                     {"role": "user", "content": "Again"}],
        "temperature": 0.5, "seed": 7, "max_tokens": 12}
    s.command("/save t1")
    s.command("/clear")
    s.command("/set seed none")
    assert s.request("x")["messages"][-1] == {"role": "user", "content": "x"}
    assert "seed" not in s.request("x")
    assert "2 messages" in s.command("/load t1") and s.options.seed == 7
    for bad in ("/set temperature hot", "/set temperature 3", "/set nothing 1", "/load ../x",
                "/load missing", "/frobnicate"):
        with pytest.raises(CommandError):
            s.command(bad)
    with pytest.raises(Exit):
        s.command("/bye")
    assert unquote('"""one\ntwo"""') == "one\ntwo"
    assert unquote('/set system """be\nkind"""') == "/set system be\nkind"
    assert api_base("http://h:1") == "http://h:1/v1"
    assert api_base("http://h:1/v1/") == "http://h:1/v1"
    assert api_base("http://h:1/api/openai") == "http://h:1/api/openai"
