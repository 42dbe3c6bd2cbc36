"""API keys from flag, environment and file; 401s; open /health; protected /metrics."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import openai
import pytest

from .conftest import (
    ENV_KEY,
    FILE_KEYS,
    FLAG_KEY,
    MODEL,
    Server,
    assert_envelope,
    auth,
    chat_body,
    running,
)

pytestmark = pytest.mark.timeout(180)


@pytest.mark.parametrize("key", [FLAG_KEY, ENV_KEY, FILE_KEYS[-1]])
def test_each_key_source_is_accepted(ops_server: Server, key: str) -> None:
    r = httpx.get(ops_server.url + "/v1/models", headers=auth(key))
    assert r.status_code == 200, r.text
    assert r.json()["data"][0]["id"] == MODEL


@pytest.mark.parametrize("headers", [{}, auth("sk-wrong-0123456789"),
                                     {"Authorization": "Basic abc"}])
def test_missing_or_wrong_key_is_401(ops_server: Server, headers: dict[str, str]) -> None:
    r = httpx.post(ops_server.url + "/v1/chat/completions", json=chat_body(), headers=headers)
    err = assert_envelope(r, 401, code="invalid_api_key")
    assert "sk-wrong-0123456789" not in err["message"]


def test_sdk_sees_authentication_error(ops_server: Server) -> None:
    client = openai.OpenAI(base_url=ops_server.url + "/v1", api_key="sk-nope-0123456789",
                           max_retries=0)
    with pytest.raises(openai.AuthenticationError) as exc:
        client.models.list()
    assert exc.value.body["code"] == "invalid_api_key"


def test_health_open_metrics_protected(ops_server: Server) -> None:
    assert httpx.get(ops_server.url + "/health").status_code == 200
    assert_envelope(httpx.get(ops_server.url + "/metrics"), 401, code="invalid_api_key")
    r = httpx.get(ops_server.url + "/metrics", headers=auth(FILE_KEYS[-1]))
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    for name in ("chatd_http_requests_total", "chatd_time_to_first_token_seconds_bucket",
                 "chatd_inter_token_latency_seconds_bucket",
                 "chatd_e2e_request_latency_seconds_bucket", "chatd_prompt_tokens_total",
                 "chatd_completion_tokens_total", "chatd_queue_depth",
                 "chatd_running_sequences", "chatd_kv_cells_running",
                 "chatd_kv_cache_usage_ratio", "chatd_prefix_cache_hit_tokens_total",
                 "chatd_kv_cells_allocated", "chatd_kv_repacks_total",
                 "chatd_kv_cells_parked", "chatd_kv_parked_hits_total"):
        assert name in r.text, name


def test_keys_never_logged_and_access_log_is_json(ops_server: Server) -> None:
    key = FILE_KEYS[-1]
    r = httpx.post(ops_server.url + "/v1/chat/completions", json=chat_body(),
                   headers={**auth(key), "x-request-id": "req_access_log_probe"})
    assert r.status_code == 200, r.text
    assert r.headers["x-request-id"] == "req_access_log_probe"
    assert ops_server.access_log is not None
    access_text = ops_server.access_log.read_text()
    lines = [json.loads(x) for x in access_text.splitlines()]
    entry = next(e for e in lines if e["request_id"] == "req_access_log_probe")
    assert entry["status"] == 200 and entry["model"] == MODEL
    assert entry["prompt_tokens"] > 0 and entry["completion_tokens"] > 0
    assert entry["ttft_ms"] is not None and entry["duration_ms"] >= entry["ttft_ms"]
    assert len(entry["key"]) == 12 and entry["key"] in ops_server.log_text()
    everything = ops_server.log_text() + access_text
    for secret in (FLAG_KEY, ENV_KEY, *FILE_KEYS):
        assert secret not in everything


def test_loud_warning_without_keys_off_loopback(tmp_path: Path) -> None:
    with running(["--ctx-size", "64", "--max-sequences", "1"], tmp_path / "log",
                 host="0.0.0.0") as server:
        assert "NO API KEY IS CONFIGURED" in server.log_text()
    with running(["--ctx-size", "64", "--max-sequences", "1"], tmp_path / "log2") as server:
        assert "NO API KEY" not in server.log_text()
