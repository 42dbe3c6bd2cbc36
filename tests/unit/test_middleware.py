"""The pure-ASGI middleware on a bare app: headers, 413/500 envelopes, metrics, log."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
from fastapi import FastAPI, Request

from chatd.api.accesslog import AccessLog
from chatd.api.metrics import Metrics
from chatd.api.middleware import RequestContextMiddleware
from chatd.api.ratelimit import RateLimiter
from chatd.api.tracking import record_of


def make_app(log_path: Path) -> tuple[FastAPI, Metrics, AccessLog]:
    app = FastAPI()
    limiter = RateLimiter(10, 1000)
    metrics = Metrics(lambda: {"kv_cells_total": 10, "kv_cells_running": 2},
                      lambda: (3, 1))
    access = AccessLog(str(log_path))

    @app.get("/ok")
    async def ok(request: Request) -> dict[str, str]:
        record_of(request).key = "tag"
        limiter.take_request("tag")
        return {"ok": "yes"}

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("secret detail")

    @app.post("/echo")
    async def echo(request: Request) -> dict[str, int]:
        return {"size": len(await request.body())}

    app.add_middleware(RequestContextMiddleware, max_body_bytes=100,
                       rate_limit_headers=limiter.headers, metrics=metrics,
                       access_log=access, known_routes=frozenset({"/echo"}))
    return app, metrics, access


async def test_headers_errors_metrics_and_log(tmp_path: Path) -> None:
    log_path = tmp_path / "access.log"
    app, metrics, access = make_app(log_path)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        r = await client.get("/ok", headers={"x-request-id": "req_mine"})
        assert r.status_code == 200
        assert r.headers["x-request-id"] == "req_mine"
        assert int(r.headers["openai-processing-ms"]) >= 0
        assert r.headers["x-ratelimit-remaining-requests"] == "9"

        r = await client.get("/boom")
        assert r.status_code == 500
        assert r.json()["error"]["type"] == "server_error"
        assert "secret" not in r.text
        assert r.headers["x-request-id"].startswith("req_")

        r = await client.post("/echo", content=b"x" * 101)
        assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
        assert "x-ratelimit-limit-requests" in r.headers  # unidentified: a fresh budget

        r = await client.get("/nowhere/at/all")
        assert r.status_code == 404
    access.close()

    text = metrics.render().decode()
    assert 'chatd_http_requests_total{method="GET",route="/ok",status="200"} 1.0' in text
    assert 'chatd_http_requests_total{method="GET",route="/boom",status="500"} 1.0' in text
    assert 'chatd_http_requests_total{method="POST",route="/echo",status="413"} 1.0' in text
    assert 'route="unmatched",status="404"' in text
    assert "chatd_queue_depth 3.0" in text and "chatd_kv_cells_running 2.0" in text

    lines = [json.loads(line) for line in log_path.read_text().splitlines()]
    assert [e["status"] for e in lines] == [200, 500, 413, 404]
    assert lines[0]["request_id"] == "req_mine" and lines[0]["key"] == "tag"
    assert all(e["completed"] for e in lines)
