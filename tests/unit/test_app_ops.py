"""The app without a model: OpenAPI document, /health liveness, /metrics."""

from __future__ import annotations

import threading
import types

import httpx
from fastapi import FastAPI

from chatd.api.app import create_app
from chatd.config import Settings


class FakeEngine:
    def __init__(self) -> None:
        self._thread: threading.Thread | None = None

    def alive(self) -> bool:
        return self._thread is None or self._thread.is_alive()

    def stats(self) -> dict[str, int]:
        return {"running_sequences": 0, "kv_cells_total": 100, "kv_cells_running": 0}


def make_app(engine: FakeEngine, **settings: object) -> FastAPI:
    runtime = types.SimpleNamespace(settings=Settings(**settings), engine=engine, chat=None,
                                    model_name="m", fingerprint="fp_x")
    return create_app(runtime)  # type: ignore[arg-type]


def test_openapi_documents_real_responses() -> None:
    doc = make_app(FakeEngine()).openapi()
    chat = doc["paths"]["/v1/chat/completions"]["post"]
    assert chat["operationId"] == "createChatCompletion"
    assert "422" not in chat["responses"]
    ok = chat["responses"]["200"]["content"]
    assert ok["application/json"]["schema"] == {"$ref": "#/components/schemas/ChatCompletion"}
    assert "text/event-stream" in ok
    assert "Retry-After" in chat["responses"]["429"]["headers"]
    schemas = doc["components"]["schemas"]
    assert {"ChatCompletionRequest", "ChatCompletion", "ErrorResponse"} <= set(schemas)
    assert "HTTPValidationError" not in schemas
    assert "/metrics" not in doc["paths"]


async def test_health_is_503_once_the_engine_thread_died() -> None:
    engine = FakeEngine()
    app = make_app(engine)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        assert (await client.get("/health")).status_code == 200
        engine._thread = threading.Thread(target=lambda: None)
        engine._thread.start()
        engine._thread.join()
        r = await client.get("/health")
        assert r.status_code == 503 and r.json()["error"]["code"] == "engine_stopped"
        metrics = await client.get("/metrics")
        assert metrics.status_code == 200 and "chatd_kv_cells_total 100.0" in metrics.text


async def test_metrics_can_require_a_key() -> None:
    app = make_app(FakeEngine(), api_keys=("sk-test",), metrics_require_key=True)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        assert (await client.get("/metrics")).status_code == 401
        ok = await client.get("/metrics", headers={"Authorization": "Bearer sk-test"})
        assert ok.status_code == 200
        assert (await client.get("/health")).status_code == 200
