"""Image and audio input end to end, on tiny random-weight projectors beside SmolLM2.

The projectors (tests/fixtures/mmproj.py) have random weights, so nothing here
judges what the model says about a picture; the assertions are what holds
whatever the weights: token counts as libmtmd lays them out, different media give
different logits, the same media gives the same ones (and hits the prefix cache),
seeds reproduce, every API feature still works with media in the prompt, text
requests batched beside images are unchanged, and bad media gets a 400 naming
the part.
"""

from __future__ import annotations

import asyncio
import base64
import http.server
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import openai
import pytest

from tests.e2e.conftest import ServerProcess, running_server
from tests.fixtures.mmproj import (
    image_token_count,
    png_bytes,
    png_header_bytes,
    wav_bytes,
    write_audio_projector,
    write_image_projector,
)

IMAGE_TOKENS = image_token_count()
FETCH_CAP = 20_000  # --media-max-bytes of the image server


def _png_url(seed: int, size: tuple[int, int] = (64, 48)) -> str:
    return "data:image/png;base64," + base64.b64encode(png_bytes(*size, seed=seed)).decode()


def _image_part(url: str) -> dict[str, Any]:
    return {"type": "image_url", "image_url": {"url": url, "detail": "auto"}}


def _audio_part(data: bytes, fmt: str = "wav") -> dict[str, Any]:
    return {"type": "input_audio",
            "input_audio": {"data": base64.b64encode(data).decode(), "format": fmt}}


def _user(*parts: dict[str, Any], text: str = "Describe this.") -> list[dict[str, Any]]:
    return [{"role": "user", "content": [{"type": "text", "text": text}, *parts]}]


class _Images(http.server.BaseHTTPRequestHandler):
    """Serves /small.png, /big.png and /hop (a redirect to another host name)."""

    def do_GET(self) -> None:
        port = self.server.server_address[1]
        if self.path == "/hop":
            self.send_response(302)
            self.send_header("Location", f"http://localhost:{port}/small.png")
            self.end_headers()
            return
        body = {"/small.png": png_bytes(8, 8, seed=3),
                "/big.png": png_bytes(160, 160, seed=4)}.get(self.path)
        self.send_response(200 if body else 404)
        self.send_header("Content-Type", "image/png")
        self.end_headers()
        self.wfile.write(body or b"")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def image_host() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Images)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.fixture(scope="module")
def projectors(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("mmproj")
    return {"image": write_image_projector(folder / "image.gguf"),
            "audio": write_audio_projector(folder / "audio.gguf")}


@pytest.fixture(scope="module")
def image_server(projectors: dict[str, Path]) -> Iterator[ServerProcess]:
    with running_server(["--mmproj", str(projectors["image"]), "--ctx-size", "2048",
                         "--media-fetch", "127.0.0.1",
                         "--media-max-bytes", str(FETCH_CAP)]) as server:
        yield server


@pytest.fixture(scope="module")
def audio_server(projectors: dict[str, Path]) -> Iterator[ServerProcess]:
    with running_server(["--mmproj", str(projectors["audio"]), "--ctx-size", "2048"]) as server:
        yield server


def _client(server: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0,
                         timeout=120.0)


@pytest.fixture(scope="module")
def vclient(image_server: ServerProcess) -> Iterator[openai.OpenAI]:
    with _client(image_server) as c:
        yield c


@pytest.fixture(scope="module")
def vmodel(vclient: openai.OpenAI) -> str:
    return vclient.models.list().data[0].id


def _greedy(client: openai.OpenAI, model: str, messages: list[dict[str, Any]],
            **extra: Any) -> Any:
    return client.chat.completions.create(model=model, messages=messages, temperature=0,
                                          max_tokens=8, **extra)


def _post(server: ServerProcess, messages: list[dict[str, Any]]) -> httpx.Response:
    model = httpx.get(server.url + "/v1/models", timeout=10).json()["data"][0]["id"]
    return httpx.post(server.url + "/v1/chat/completions", timeout=60,
                      json={"model": model, "messages": messages, "max_tokens": 4})


def _error(server: ServerProcess, messages: list[dict[str, Any]]) -> dict[str, Any]:
    r = _post(server, messages)
    assert r.status_code == 400, r.text
    return r.json()["error"]


# ---- what the model takes --------------------------------------------------------------


def test_models_say_what_they_take(vclient: openai.OpenAI, vmodel: str,
                                   audio_server: ServerProcess, http: httpx.Client,
                                   model_id: str) -> None:
    assert vclient.models.retrieve(vmodel).model_extra["input_modalities"] == ["text", "image"]
    r = httpx.get(f"{audio_server.url}/v1/models/{vmodel}", timeout=10)
    assert r.json()["input_modalities"] == ["text", "audio"]
    assert http.get(f"/v1/models/{model_id}").json()["input_modalities"] == ["text"]


# ---- images ------------------------------------------------------------------------------


def test_image_tokens_are_counted_as_libmtmd_lays_them_out(vclient: openai.OpenAI,
                                                           vmodel: str) -> None:
    text_only = _greedy(vclient, vmodel,
                        [{"role": "user", "content": "Describe this.\n"}]).usage
    with_image = _greedy(vclient, vmodel, _user(_image_part(_png_url(1)))).usage
    assert with_image.prompt_tokens - text_only.prompt_tokens == IMAGE_TOKENS
    two = _greedy(vclient, vmodel, _user(_image_part(_png_url(1)),
                                         _image_part(_png_url(2)))).usage
    assert two.prompt_tokens - with_image.prompt_tokens == IMAGE_TOKENS + 1  # + "\n"


def test_different_images_differ_and_the_same_image_repeats(vclient: openai.OpenAI,
                                                             vmodel: str) -> None:
    def first_logprobs(seed: int) -> tuple[str, list[float], Any]:
        r = _greedy(vclient, vmodel, _user(_image_part(_png_url(seed, (40 + seed, 30)))),
                    logprobs=True, top_logprobs=5)
        top = r.choices[0].logprobs.content[0].top_logprobs
        return r.choices[0].message.content, [t.logprob for t in top], r.usage

    a_text, a_logprobs, _ = first_logprobs(11)
    _, b_logprobs, _ = first_logprobs(12)
    again_text, again_logprobs, usage = first_logprobs(11)
    assert a_logprobs != b_logprobs
    assert (a_text, a_logprobs) == (again_text, again_logprobs)
    # The repeated request comes from the prefix cache, image tokens included: all but
    # the last prompt token, which is decoded again for its logits.
    assert usage.prompt_tokens_details.cached_tokens == usage.prompt_tokens - 1


def test_seeded_image_request_is_reproducible(vclient: openai.OpenAI, vmodel: str) -> None:
    def run() -> str:
        r = vclient.chat.completions.create(model=vmodel, messages=_user(
            _image_part(_png_url(21))), temperature=1.0, seed=1234, max_tokens=16)
        return r.choices[0].message.content or ""
    assert run() == run()


def test_streaming_n_tools_and_schema_with_an_image(vclient: openai.OpenAI,
                                                    vmodel: str) -> None:
    messages = _user(_image_part(_png_url(31)))
    whole = _greedy(vclient, vmodel, messages).choices[0].message.content
    streamed = "".join(
        chunk.choices[0].delta.content or ""
        for chunk in _greedy(vclient, vmodel, messages, stream=True) if chunk.choices)
    assert streamed == whole

    n = vclient.chat.completions.create(model=vmodel, messages=messages, n=2, seed=5,
                                        temperature=1.0, max_tokens=6)
    assert sorted(c.index for c in n.choices) == [0, 1]

    schema = {"type": "object", "properties": {"colour": {"type": "string", "maxLength": 12}},
              "required": ["colour"], "additionalProperties": False}
    r = vclient.chat.completions.create(
        model=vmodel, messages=messages, max_tokens=60, temperature=0,
        response_format={"type": "json_schema",
                         "json_schema": {"name": "c", "schema": schema, "strict": True}})
    jsonschema.validate(json.loads(r.choices[0].message.content or ""), schema)

    tool = {"type": "function", "function": {
        "name": "tag", "parameters": {"type": "object", "properties": {
            "label": {"type": "string", "maxLength": 10}}, "required": ["label"],
            "additionalProperties": False}}}
    r = vclient.chat.completions.create(model=vmodel, messages=messages, tools=[tool],
                                        tool_choice="required", max_tokens=60, temperature=0)
    call = r.choices[0].message.tool_calls[0]
    assert call.function.name == "tag"
    assert set(json.loads(call.function.arguments)) == {"label"}


async def test_text_beside_images_is_unchanged(image_server: ServerProcess,
                                               vmodel: str) -> None:
    async with openai.AsyncOpenAI(base_url=image_server.url + "/v1", api_key="unused",
                                  max_retries=0, timeout=120.0) as c:
        async def text() -> str:
            r = await c.chat.completions.create(
                model=vmodel, temperature=1.0, seed=77, max_tokens=24,
                messages=[{"role": "user", "content": "Name a colour and a fruit."}])
            return r.choices[0].message.content or ""

        async def image(seed: int) -> None:
            await c.chat.completions.create(model=vmodel, max_tokens=24, temperature=0,
                                            messages=_user(_image_part(_png_url(100 + seed))))

        alone = await text()
        results = await asyncio.gather(text(), *(image(i) for i in range(3)))
        assert results[0] == alone


# ---- fetching image URLs ----------------------------------------------------------------


def test_allowed_url_is_fetched(vclient: openai.OpenAI, vmodel: str, image_host: str) -> None:
    r = _greedy(vclient, vmodel, _user(_image_part(image_host + "/small.png")))
    inline = _greedy(vclient, vmodel, _user(_image_part(
        "data:image/png;base64," + base64.b64encode(png_bytes(8, 8, seed=3)).decode())))
    assert r.choices[0].message.content == inline.choices[0].message.content


@pytest.mark.parametrize(("path", "words"), [
    ("/big.png", "larger than"),
    ("/hop", "redirects to another host"),
])
def test_fetch_limits(image_server: ServerProcess, image_host: str, path: str,
                      words: str) -> None:
    err = _error(image_server, _user(_image_part(image_host + path)))
    assert words in err["message"]
    assert err["param"] == "messages[0].content[1].image_url.url"


def test_unlisted_host_and_file_urls_are_refused(image_server: ServerProcess,
                                                 image_host: str) -> None:
    port = image_host.rsplit(":", 1)[1]
    err = _error(image_server, _user(_image_part(f"http://localhost:{port}/small.png")))
    assert "not allowed" in err["message"]
    err = _error(image_server, _user(_image_part("file:///etc/passwd")))
    assert "data: URL" in err["message"]


# ---- bad input ----------------------------------------------------------------------------


def _b64_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode()


@pytest.mark.parametrize(("url", "words"), [
    ("data:image/png;base64,not*base64!", "not valid base64"),
    (_b64_url(b""), "empty (0 bytes)"),
    (_b64_url(b"hello, this is text and not a picture"), "not an image"),
    (_b64_url(png_header_bytes(30000, 30000)), "30000x30000"),
    (_b64_url(b"RIFF\x10\x00\x00\x00WEBPVP8 " + b"\x00" * 20, "image/webp"), "WEBP"),
    (_b64_url(png_bytes(16, 16, seed=9)[:40]), "could not be decoded"),
])
def test_bad_images_are_400s_naming_the_part(image_server: ServerProcess, url: str,
                                             words: str) -> None:
    err = _error(image_server, _user(_image_part(url)))
    assert words in err["message"]
    assert err["param"].startswith("messages[0].content[1]")
    assert err["code"] == "invalid_image"


def test_too_many_images_for_the_context(image_server: ServerProcess) -> None:
    parts = [_image_part(_png_url(200 + i, (20, 20))) for i in range(2048 // IMAGE_TOKENS)]
    err = _error(image_server, _user(*parts))
    assert err["code"] == "context_length_exceeded"


def test_audio_to_an_image_projector(image_server: ServerProcess) -> None:
    err = _error(image_server, _user(_audio_part(wav_bytes(1.0))))
    assert err["param"] == "messages[0].content[1]"
    assert "audio" in err["message"]


def test_server_is_fine_after_bad_media(vclient: openai.OpenAI, vmodel: str) -> None:
    r = _greedy(vclient, vmodel, _user(_image_part(_png_url(1))))
    assert r.choices[0].finish_reason == "length"
    health = httpx.get(str(vclient.base_url).removesuffix("/v1/") + "/health").json()
    assert health["running_sequences"] == 0 and health["waiting_requests"] == 0


# ---- audio -------------------------------------------------------------------------------


def test_audio_tokens_are_counted_and_repeat(audio_server: ServerProcess, vmodel: str) -> None:
    with _client(audio_server) as c:
        def ask(freq: float) -> Any:
            return c.chat.completions.create(
                model=vmodel, temperature=0, max_tokens=6, logprobs=True, top_logprobs=3,
                messages=_user(_audio_part(wav_bytes(1.5, freq)), text="What is this?"))

        a, b, again = ask(440.0), ask(880.0), ask(440.0)
    audio = a.usage.prompt_tokens_details.audio_tokens
    assert audio > 0 and audio == b.usage.prompt_tokens_details.audio_tokens
    first = [[t.logprob for t in r.choices[0].logprobs.content[0].top_logprobs]
             for r in (a, b, again)]
    assert first[0] != first[1] and first[0] == first[2]
    assert again.usage.prompt_tokens_details.cached_tokens >= audio


@pytest.mark.parametrize(("data", "fmt", "words"), [
    (wav_bytes(0.5), "mp3", "not MP3"),
    (b"ID3 not really", "wav", "not a WAV"),
    (b"", "wav", "empty (0 bytes)"),
])
def test_bad_audio_is_a_400(audio_server: ServerProcess, data: bytes, fmt: str,
                            words: str) -> None:
    err = _error(audio_server, _user(_audio_part(data, fmt)))
    assert words in err["message"]
    assert err["param"].startswith("messages[0].content[1].input_audio")


def test_unsupported_audio_format(audio_server: ServerProcess) -> None:
    r = _post(audio_server, _user(_audio_part(wav_bytes(0.5), "flac")))
    assert r.status_code == 400
    assert "format" in r.json()["error"]["message"]


def test_image_to_an_audio_projector(audio_server: ServerProcess) -> None:
    err = _error(audio_server, _user(_image_part(_png_url(1))))
    assert "image" in err["message"]
    assert err["code"] == "unsupported_content_type"
