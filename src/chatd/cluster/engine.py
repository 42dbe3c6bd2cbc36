"""One engine replica: a whole chatd (model, engine, HTTP app) inside a Serve replica.

The replica runs chatd's own FastAPI app in-process and is called with the request
(scope fields and body); it yields the app's ASGI messages back through a Serve
streaming handle. So auth, validation, limits, the error envelope and SSE framing are
chatd's own code, the same as in a single process, and the ingress only relays bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator
from typing import Any

from chatd.config import Settings

log = logging.getLogger("chatd.cluster")

Message = dict[str, Any]
"""An ASGI message (`http.response.start` / `http.response.body`), as sent by the app."""

REPLICA_HEADER = b"x-chatd-replica"
"""Names the replica that answered, on every response (operations, and the tests)."""

DISCONNECT_GRACE_S = 2.0
"""After the caller goes away, how long the app gets to see the disconnect and cancel
its generation (freeing the engine's sequence) before its task is cancelled."""


class EngineReplica:
    """The engine deployment's class; `chatd.cluster.app` wraps it in `serve.deployment`."""

    async def __init__(self, settings: Settings, limits: str | None = None,
                       reports: str | None = None) -> None:
        # Imported here: the ingress process never loads a model or llama.cpp.
        from ray import serve

        from chatd.api.app import create_app
        from chatd.server import build_runtime, freeze_startup_heap, open_store
        from chatd.webui.routes import install as install_webui

        logging.basicConfig(level=getattr(logging, settings.log_level.upper()))
        _check_gpus()
        self.settings = settings
        replica = serve.get_replica_context().replica_id.unique_id
        self.replica_id = replica.encode()
        store = open_store(settings)
        self.runtime = build_runtime(settings)
        self.runtime.store = store
        if limits is not None:
            from chatd.cluster.limits import SharedRateLimiter

            self.runtime.limiter = SharedRateLimiter(  # type: ignore[attr-defined]
                limits, settings.requests_per_minute, settings.tokens_per_minute)
        peers = None
        if reports is not None:
            from chatd.cluster.telemetry import ReplicaPeers

            peers = self.runtime.peers = ReplicaPeers(  # type: ignore[attr-defined]
                reports, replica)
        self.runtime.engine.start()
        self.app = create_app(self.runtime)
        if settings.webui:
            install_webui(self.app)
        freeze_startup_heap()
        self._lifespan = self.app.router.lifespan_context(self.app)
        await self._lifespan.__aenter__()
        self._reporting = (asyncio.get_running_loop().create_task(peers.run(self._report))
                           if peers is not None else None)
        log.info("engine replica ready (pid %d): %s, %d llama.cpp threads", os.getpid(),
                 self.runtime.model_name, settings.threads)

    def _report(self) -> tuple[dict[str, Any], str]:
        """This replica's /health body and /metrics text, for the others to show."""
        from chatd.api.routes.health import health_body

        ctx = self.app.state.ctx
        health = (health_body(ctx) if ctx.alive() else
                  {"status": "the engine thread has stopped"})
        return health, ctx.metrics.render().decode()

    async def handle(self, request: Message, body: bytes,
                     session: str | None = None) -> AsyncIterator[Message]:
        """Run one HTTP request through chatd's app; yield its response messages.

        `session` is read by the router (chatd.cluster.routing), not here. Leaving the
        generator early (the client went away, the ingress cancelled) is a disconnect
        for the app, which then cancels its generation as it does in one process.
        """
        del session
        scope = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
            "method": request["method"], "scheme": request.get("scheme", "http"),
            "path": request["path"], "raw_path": request["path"].encode(),
            "query_string": request.get("query_string", b""), "root_path": "",
            "headers": request["headers"], "client": request.get("client"),
            "server": request.get("server"), "state": {},
        }
        out: asyncio.Queue[Message | None] = asyncio.Queue()
        gone = asyncio.Event()
        delivered = False

        async def receive() -> Message:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            await gone.wait()
            return {"type": "http.disconnect"}

        async def send(message: Message) -> None:
            await out.put(message)

        task = asyncio.create_task(self.app(scope, receive, send))
        task.add_done_callback(lambda _: out.put_nowait(None))
        try:
            while (message := await out.get()) is not None:
                if message["type"] == "http.response.start":
                    message = {**message, "headers": [*message.get("headers", []),
                                                      (REPLICA_HEADER, self.replica_id)]}
                else:
                    message = _coalesce(message, out)
                yield message
            await task  # surfaces an app crash (the ingress then ends the stream properly)
        finally:
            gone.set()
            if not task.done():
                with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                    await asyncio.wait_for(asyncio.shield(task), DISCONNECT_GRACE_S)
                task.cancel()

    def check_health(self) -> None:
        """Serve's health check: a dead engine thread makes Serve replace the replica."""
        if not self.runtime.engine.alive():
            raise RuntimeError("the chatd engine thread has stopped")

    def pid(self) -> int:
        """This replica's process id (the fault tests kill it)."""
        return os.getpid()

    async def __del__(self) -> None:
        """Serve's graceful stop (redeploy, scale-down): in-flight requests have already
        finished or timed out (graceful_shutdown_timeout_s); close the store, free the
        model."""
        if self._reporting is not None:
            self._reporting.cancel()
        with contextlib.suppress(Exception):
            await self._lifespan.__aexit__(None, None, None)
        self.runtime.close()


def _check_gpus() -> None:
    """A replica given GPUs (--gpus-per-replica) whose llama.cpp cannot use them says so:
    it still serves, on its CPUs, while the GPUs sit reserved."""
    import ray

    from chatd.engine.llama import gpu_offload_supported

    gpus = ray.get_gpu_ids()
    if gpus and not gpu_offload_supported():
        log.warning("this replica was given GPU(s) %s, but llama-cpp-python was built "
                    "without GPU support: running on the CPU (rebuild it with e.g. "
                    "CMAKE_ARGS=-DGGML_CUDA=on)", gpus)
    elif gpus:
        log.info("engine replica on GPU(s) %s: every layer offloaded", gpus)


def _coalesce(message: Message, out: asyncio.Queue[Message | None]) -> Message:
    """Body chunks already waiting go out as one: each item of a Serve stream is a Ray
    object, so when the ingress falls behind (many streams), it catches up in one hop
    instead of one per token. A chunk that is alone is sent alone, at once."""
    if not message.get("more_body", False):
        return message
    parts = [message.get("body", b"")]
    more = True
    while more and not out.empty():
        nxt = out.get_nowait()
        if nxt is None:  # the app has finished: nothing can follow the end marker
            out.put_nowait(None)
            break
        parts.append(nxt.get("body", b""))
        more = nxt.get("more_body", False)
    return {"type": "http.response.body", "body": b"".join(parts), "more_body": more}
