"""GET /v1/models and /v1/models/{id}."""

from __future__ import annotations

import httpx
import openai
import pytest

from .conftest import assert_error

pytestmark = pytest.mark.timeout(60)


def test_models_list(http: httpx.Client, model_id: str) -> None:
    r = http.get("/v1/models")
    assert r.status_code == 200
    body = r.json()
    assert body["object"] == "list"
    assert isinstance(body["data"], list) and body["data"]
    ids = [m["id"] for m in body["data"]]
    assert "SmolLM2-135M-Instruct" in ids
    for m in body["data"]:
        assert m["object"] == "model"
        assert isinstance(m["id"], str) and m["id"]
        assert isinstance(m["created"], int) and not isinstance(m["created"], bool)
        assert isinstance(m["owned_by"], str)


def test_models_retrieve(http: httpx.Client, model_id: str) -> None:
    listed = next(m for m in http.get("/v1/models").json()["data"] if m["id"] == model_id)
    r = http.get(f"/v1/models/{model_id}")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "model"
    assert body["id"] == model_id
    assert body == listed


def test_models_unknown_404(http: httpx.Client) -> None:
    r = http.get("/v1/models/no-such-model")
    assert_error(r, 404, code="model_not_found")


def test_models_with_sdk(client: openai.OpenAI, model_id: str) -> None:
    page = client.models.list()
    assert model_id in [m.id for m in page.data]
    m = client.models.retrieve(model_id)
    assert m.id == model_id and m.object == "model"
    with pytest.raises(openai.NotFoundError) as exc:
        client.models.retrieve("no-such-model")
    assert exc.value.body["code"] == "model_not_found"
