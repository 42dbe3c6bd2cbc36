"""API keys: a second server started with --api-key test-key-123."""

from __future__ import annotations

import httpx
import openai
import pytest

from .conftest import AUTH_KEY, assert_error

pytestmark = pytest.mark.timeout(180)

BODY = {"model": "SmolLM2-135M-Instruct", "messages": [{"role": "user", "content": "Hi"}],
        "max_tokens": 4}


def test_no_key_401(auth_server_url: str) -> None:
    r = httpx.post(auth_server_url + "/v1/chat/completions", json=BODY, timeout=60)
    assert_error(r, 401, code="invalid_api_key")


def test_wrong_key_401(auth_server_url: str) -> None:
    r = httpx.post(auth_server_url + "/v1/chat/completions", json=BODY, timeout=60,
                   headers={"Authorization": "Bearer wrong-key-456"})
    err = assert_error(r, 401, code="invalid_api_key")
    assert "wrong-key-456" not in err["message"]  # the key is not echoed back


def test_not_bearer_401(auth_server_url: str) -> None:
    r = httpx.post(auth_server_url + "/v1/chat/completions", json=BODY, timeout=60,
                   headers={"Authorization": AUTH_KEY})
    assert_error(r, 401, code="invalid_api_key")


def test_right_key_200(auth_server_url: str) -> None:
    r = httpx.post(auth_server_url + "/v1/chat/completions", json=BODY, timeout=60,
                   headers={"Authorization": f"Bearer {AUTH_KEY}"})
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"]


def test_models_require_key(auth_server_url: str) -> None:
    assert_error(httpx.get(auth_server_url + "/v1/models", timeout=30), 401,
                 code="invalid_api_key")
    r = httpx.get(auth_server_url + "/v1/models", timeout=30,
                  headers={"Authorization": f"Bearer {AUTH_KEY}"})
    assert r.status_code == 200


def test_health_open(auth_server_url: str) -> None:
    assert httpx.get(auth_server_url + "/health", timeout=30).status_code == 200


def test_sdk_auth(auth_server_url: str) -> None:
    bad = openai.OpenAI(base_url=auth_server_url + "/v1", api_key="nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as exc:
        bad.chat.completions.create(**BODY)
    assert exc.value.body["code"] == "invalid_api_key"
    good = openai.OpenAI(base_url=auth_server_url + "/v1", api_key=AUTH_KEY, max_retries=0)
    resp = good.chat.completions.create(**BODY)
    assert resp.choices[0].message.content
    chunks = list(good.chat.completions.create(**BODY, stream=True))
    assert chunks and chunks[-1].choices[0].finish_reason in {"stop", "length"}
