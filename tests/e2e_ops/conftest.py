"""Fixtures for the shared-deployment tests: real `chatd serve` subprocesses.

Each server is started with the flags its tests need (keys, limits, a tiny queue, an
access log) on a free loopback port, and stopped with SIGTERM. Servers are kept small
(short context, few sequences) so the suite stays quick on a 2-core machine.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

STARTUP_TIMEOUT_S = 120.0
MODEL = "SmolLM2-135M-Instruct"

# Keys of the ops server, one per test that spends a budget, so tests stay independent.
FLAG_KEY = "sk-flag-0123456789"
ENV_KEY = "sk-env-0123456789"
FILE_KEYS = ["sk-rpm-0123456789", "sk-tpm-0123456789", "sk-adm-0123456789",
             "sk-adm2-0123456789", "sk-sdk-0123456789", "sk-misc-0123456789"]
NO_EOS = {"0": -100, "2": -100, "4": -100}
"""logit_bias that bans the bundled model's end-of-generation tokens: full-length output."""
OPS_RPM = 4
OPS_TPM = 400


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A `chatd serve` subprocess; its combined output goes to `log_path`."""

    def __init__(self, args: list[str], log_path: Path, env: dict[str, str] | None = None,
                 host: str = "127.0.0.1") -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.access_log: Path | None = None  # where --access-log writes, when given
        self._log = log_path.open("wb")
        # One llama.cpp thread: with two threads on two busy cores, llama.cpp's barrier
        # spin-waits can slow a token down to seconds; one thread degrades gracefully.
        # Stored completions go to a file beside the log, never the user's home.
        store = [] if "--store" in args else ["--store", str(log_path.with_suffix(".sqlite3"))]
        self.cmd = [sys.executable, "-m", "chatd", "serve", "--host", host,
                    "--port", str(self.port), "--threads", "1", *store, *args]
        self.proc = subprocess.Popen(self.cmd, stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL,
                                     env={**os.environ, **(env or {})})

    def log_text(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def wait_ready(self) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"chatd exited with {self.proc.returncode} during start-up:\n"
                            f"{self.log_text()[-3000:]}", pytrace=False)
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            time.sleep(0.25)
        self.stop()
        pytest.fail(f"chatd not healthy in time:\n{self.log_text()[-3000:]}", pytrace=False)

    def terminate(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def stop(self) -> int | None:
        self.terminate()
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self._log.close()
        return self.proc.returncode


@contextlib.contextmanager
def running(args: list[str], log_path: Path, env: dict[str, str] | None = None,
            host: str = "127.0.0.1") -> Iterator[Server]:
    server = Server(args, log_path, env, host)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def ops_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """Keys from all three sources, tiny per-key limits, one sequence and a one-deep
    queue with a half-second wait, protected /metrics, and an access log."""
    root = tmp_path_factory.mktemp("ops")
    keys = root / "keys.txt"
    keys.write_text("# keys for the ops tests\n" + "".join(
        f"{k}   # test key {i}\n" for i, k in enumerate(FILE_KEYS)) + "\n")
    args = ["--api-key", FLAG_KEY, "--api-key-file", str(keys),
            "--rpm", str(OPS_RPM), "--tpm", str(OPS_TPM),
            "--max-sequences", "1", "--max-queue", "1", "--max-queue-wait", "0.5",
            "--ctx-size", "512", "--metrics-require-key",
            "--access-log", str(root / "access.log")]
    with running(args, root / "server.log", env={"CHATD_API_KEY": ENV_KEY}) as server:
        server.access_log = root / "access.log"
        yield server


@pytest.fixture(scope="session")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """Open, no limits, a short context so every generated request finishes fast."""
    root = tmp_path_factory.mktemp("fuzz")
    args = ["--ctx-size", "128", "--max-n", "2", "--max-sequences", "4"]
    with running(args, root / "server.log") as server:
        yield server


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def chat_body(prompt: str = "Hi", **kw: object) -> dict[str, object]:
    body: dict[str, object] = {"model": MODEL, "messages": [{"role": "user", "content": prompt}],
                               "max_tokens": 4, "temperature": 0}
    body.update(kw)
    return body


def assert_envelope(r: httpx.Response, status: int, code: str | None = None,
                    param: str | None = None) -> dict:
    assert r.status_code == status, f"expected {status}, got {r.status_code}: {r.text[:400]}"
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    err = body["error"]
    assert isinstance(err["message"], str) and err["message"]
    if code is not None:
        assert err["code"] == code, err
    if param is not None:
        assert err["param"] == param, err
    assert r.headers.get("x-request-id")
    return err
