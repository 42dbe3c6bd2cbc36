"""Per-key requests and tokens per minute, and the headers on every response."""

from __future__ import annotations

import httpx
import pytest

from .conftest import FILE_KEYS, OPS_RPM, OPS_TPM, Server, assert_envelope, auth, chat_body

pytestmark = pytest.mark.timeout(180)

URL = "/v1/chat/completions"
RATE_HEADERS = {f"x-ratelimit-{k}-{w}" for k in ("limit", "remaining", "reset")
                for w in ("requests", "tokens")}


def test_requests_per_minute(ops_server: Server) -> None:
    key = auth(FILE_KEYS[0])
    with httpx.Client(base_url=ops_server.url, timeout=60) as http:
        served = 0
        # the bucket refills one request every 15 s, so on a very slow machine one
        # more may get through before the budget runs dry
        for _ in range(OPS_RPM + 2):
            r = http.post(URL, json=chat_body(max_tokens=1), headers=key)
            assert set(r.headers) >= RATE_HEADERS
            if r.status_code != 200:
                break
            served += 1
        assert served >= OPS_RPM
        err = assert_envelope(r, 429, code="rate_limit_exceeded")
        assert err["type"] == "requests"
        assert "requests per minute" in err["message"] and "resets in" in err["message"]
        assert int(r.headers["retry-after"]) >= 1
        assert r.headers["x-ratelimit-remaining-requests"] == "0"
        # another key is not affected
        assert http.post(URL, json=chat_body(max_tokens=1),
                         headers=auth(FILE_KEYS[-1])).status_code == 200


def test_tokens_reserved_while_running_and_settled_after(ops_server: Server) -> None:
    key = auth(FILE_KEYS[1])
    long = chat_body("Tell me a long story about a dragon.", max_tokens=250, stream=True,
                     temperature=0.8, seed=1)
    with httpx.Client(base_url=ops_server.url, timeout=120) as http:
        with http.stream("POST", URL, json=long, headers=key) as stream:
            assert stream.status_code == 200
            assert set(stream.headers) >= RATE_HEADERS
            reserved_left = int(stream.headers["x-ratelimit-remaining-tokens"])
            assert reserved_left < OPS_TPM - 250  # prompt + max_tokens held
            # a second request that needs more than is left is refused, saying why
            r = http.post(URL, json=chat_body(max_tokens=200), headers=key)
            err = assert_envelope(r, 429, code="rate_limit_exceeded")
            assert err["type"] == "tokens" and "tokens per minute" in err["message"]
            assert int(r.headers["retry-after"]) >= 1
            text = stream.read().decode()
        assert text.endswith("data: [DONE]\n\n")
        # settled with the real count: whatever the story did not use came back
        r = http.get("/v1/models", headers=key)
        assert int(r.headers["x-ratelimit-remaining-tokens"]) > reserved_left


def test_request_larger_than_budget(ops_server: Server) -> None:
    r = httpx.post(ops_server.url + URL, json=chat_body(max_tokens=OPS_TPM),
                   headers=auth(FILE_KEYS[1]))
    err = assert_envelope(r, 429, code="rate_limit_exceeded")
    assert "Request too large" in err["message"]
    assert r.headers["x-should-retry"] == "false"


def test_headers_on_errors_and_health(ops_server: Server) -> None:
    for r in (httpx.get(ops_server.url + "/health"),
              httpx.post(ops_server.url + URL, json={"model": 1},
                         headers=auth(FILE_KEYS[-1])),
              httpx.get(ops_server.url + "/nope")):
        assert set(r.headers) >= RATE_HEADERS, (r.status_code, r.headers)
        assert r.headers["x-request-id"].startswith("req_")
        assert int(r.headers["openai-processing-ms"]) >= 0
