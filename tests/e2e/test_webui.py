"""The chat page at `/`, in a real browser against a real chatd on the bundled model.

Playwright drives Debian's chromium (`apt-get install -y chromium`, done by .ci/run)
through `executable_path`; Playwright's own browser download is never used. Without
chromium the browser tests skip and say so. A screenshot of the page is saved to
tests/artifacts/webui.png (gitignored).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from .conftest import AUTH_KEY, running_server

STATIC = Path(__file__).resolve().parents[2] / "src" / "chatd" / "webui" / "static"
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
XSS_IMG = "<img src=x onerror=alert(1)>"


def wait_js(page: Any, expression: str, timeout_s: float = 60) -> None:
    """Poll a JavaScript expression until it is truthy. Not `page.wait_for_function`:
    that one compiles its predicate with eval(), which the page's CSP forbids."""
    deadline = time.monotonic() + timeout_s
    while not page.evaluate(expression):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {expression}")
        time.sleep(0.05)


def _chromium() -> str | None:
    return os.environ.get("CHATD_CHROMIUM") or shutil.which("chromium") or shutil.which(
        "chromium-browser")


# --------------------------------------------------------------------------- no browser


def test_vendored_libraries_match_their_manifest() -> None:
    """Every vendored file is listed with its sha256, version and licence, and nothing
    unlisted hides in vendor/ (scripts/vendor_webui.py writes both)."""
    vendor = STATIC / "vendor"
    manifest = json.loads((vendor / "manifest.json").read_text())
    listed = {"manifest.json"}
    names = set()
    for package in manifest["packages"]:
        names.add(package["name"])
        assert re.fullmatch(r"\d+\.\d+\.\d+", package["version"]), package
        assert package["license"] and package["integrity"].startswith("sha512-"), package
        licences = [f for f in package["files"] if f["path"].startswith("licenses/")]
        assert licences, f"{package['name']} ships no licence text"
        for entry in package["files"]:
            listed.add(entry["path"])
            data = (vendor / entry["path"]).read_bytes()
            assert hashlib.sha256(data).hexdigest() == entry["sha256"], entry["path"]
    assert {"marked", "dompurify", "@highlightjs/cdn-assets"} <= names
    present = {p.relative_to(vendor).as_posix() for p in vendor.rglob("*") if p.is_file()}
    assert present == listed, f"unlisted: {present - listed}, missing: {listed - present}"


def test_page_and_files_carry_the_security_headers(http: httpx.Client) -> None:
    r = http.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert '<script type="module" src="/webui/app.js">' in r.text
    csp = r.headers["content-security-policy"]
    for directive in ("script-src 'self'", "connect-src 'self'", "object-src 'none'",
                      "frame-ancestors 'none'", "default-src 'none'"):
        assert directive in csp, csp
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["referrer-policy"] == "no-referrer"
    js = http.get("/webui/app.js")
    assert js.status_code == 200
    assert js.headers["content-type"].startswith("text/javascript")
    assert js.headers["content-security-policy"] == csp
    again = http.get("/webui/app.js", headers={"if-none-match": js.headers["etag"]})
    assert again.status_code == 304
    assert http.get("/webui/nothing-here.js").status_code == 404
    # The API's own responses are as before: no page headers added to them.
    assert "content-security-policy" not in http.get("/v1/models").headers


def test_no_webui_turns_the_page_off() -> None:
    with running_server(["--no-webui", "--ctx-size", "512", "--kv-cells", "1024",
                         "--max-sequences", "1"]) as server:
        assert httpx.get(server.url + "/").status_code == 404
        assert httpx.get(server.url + "/webui/app.js").status_code == 404
        assert httpx.get(server.url + "/v1/models").status_code == 200


# --------------------------------------------------------------------------- browser


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Module-scoped: Playwright's sync API keeps an asyncio loop running in this
    thread while it is open, and every later async test would then fail to start
    its own ("Runner.run() cannot be called from a running event loop")."""
    path = _chromium()
    if path is None:
        pytest.skip("chromium is not installed (apt-get install -y chromium; .ci/run does "
                    "it): the page's browser tests need it")
    sync_api = pytest.importorskip("playwright.sync_api",
                                   reason="playwright is not installed (the test extra)")
    args = ["--no-sandbox"] if os.geteuid() == 0 else []  # chromium refuses root otherwise
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=path, args=[*args, "--disable-dev-shm-usage"])
        yield b
        b.close()


class PageProbe:
    """A fresh browser context on the page, recording dialogs, errors and CSP reports."""

    def __init__(self, browser: Any, url: str, **context: Any) -> None:
        self.context = browser.new_context(**{"viewport": {"width": 1200, "height": 800},
                                              **context})
        self.page = self.context.new_page()
        self.url = url
        self.dialogs: list[str] = []
        self.errors: list[str] = []
        self.console: list[str] = []
        self.page.on("dialog", self._dialog)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("console", lambda m: self.console.append(f"{m.type}: {m.text}"))

    def _dialog(self, dialog: Any) -> None:
        self.dialogs.append(dialog.message)
        dialog.dismiss()

    def open(self) -> Any:
        self.page.goto(self.url + "/")
        self.page.wait_for_selector("body[data-ready='1']")
        return self.page

    def answers(self) -> int:
        return int(self.page.evaluate("Number(document.body.dataset.answers || 0)"))

    def wait_answer(self, before: int, timeout_s: float = 90) -> None:
        wait_js(self.page, f"Number(document.body.dataset.answers || 0) > {before}",
                timeout_s)

    def csp_violations(self) -> list[str]:
        return [m for m in self.console if "Content Security Policy" in m]

    def settings(self, **fields: str) -> None:
        page = self.page
        page.click("#open-settings")
        for name, value in fields.items():
            page.fill(f"#set-{name.replace('_', '-')}", value)
        page.click("#settings-close")

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def probe(browser: Any, server_url: str) -> Iterator[PageProbe]:
    p = PageProbe(browser, server_url)
    yield p
    p.close()


def _last_answer(page: Any) -> str:
    return page.locator(".msg.assistant .body").last.inner_text()


def _running_sequences(http: httpx.Client) -> int:
    return int(http.get("/health").json()["running_sequences"])


def _wait_idle(http: httpx.Client, timeout_s: float = 10) -> int:
    deadline = time.monotonic() + timeout_s
    running = _running_sequences(http)
    while running and time.monotonic() < deadline:
        time.sleep(0.1)
        running = _running_sequences(http)
    return running


def test_chat_streams_stops_regenerates_and_survives_reload(probe: PageProbe,
                                                            http: httpx.Client) -> None:
    page = probe.open()
    assert page.evaluate("document.activeElement.id") == "input", "focus not in the box"
    assert page.is_hidden("#attach"), "image attach shown for a text-only model"
    probe.settings(temperature="0", max_tokens="1000")  # greedy: runs to the limit

    # Type and send: the answer streams in (text visible while Stop is still shown).
    before = probe.answers()
    page.fill("#input", "Write a long story about a dragon and a knight.")
    page.keyboard.press("Enter")
    wait_js(page, "!document.getElementById('stop').hidden && "
                  "(document.querySelector('.msg.assistant:last-child .body')?.innerText"
                  " || '').length > 40")
    # Auto-scroll follows the answer, pauses while the reader scrolls up, and resumes.
    page.set_viewport_size({"width": 1200, "height": 420})
    box = "document.getElementById('messages')"
    wait_js(page, f"{box}.scrollHeight > {box}.clientHeight + 80")
    wait_js(page, f"{box}.scrollHeight - {box}.scrollTop - {box}.clientHeight < 48",
            timeout_s=5)
    page.evaluate(f"{box}.scrollTop = 0")
    grown = page.evaluate(f"{box}.scrollHeight")
    wait_js(page, f"{box}.scrollHeight > {grown} + 40", timeout_s=30)
    assert page.evaluate(f"{box}.scrollTop") == 0, "auto-scroll pulled the reader down"
    assert page.is_visible("#to-bottom")
    page.click("#to-bottom")
    wait_js(page, f"{box}.scrollHeight - {box}.scrollTop - {box}.clientHeight < 48",
            timeout_s=5)
    page.set_viewport_size({"width": 1200, "height": 800})
    partial = _last_answer(page)
    # Stop mid-answer: the request is aborted, and the server cancels the generation.
    page.click("#stop")
    probe.wait_answer(before)
    stats = page.locator(".msg.assistant .stats").last.inner_text()
    assert "stopped" in stats, stats
    assert _wait_idle(http) == 0, "a sequence still runs after Stop"
    stopped_text = _last_answer(page)
    assert stopped_text.startswith(partial[:20])
    time.sleep(0.5)
    assert _last_answer(page) == stopped_text, "the answer grew after Stop"

    # Escape stops too.
    before = probe.answers()
    page.click(".regenerate")
    wait_js(page, "!document.getElementById('stop').hidden && "
                  "document.querySelector('.msg.assistant:last-child .body')"
                  ".innerText.length > 0")
    page.keyboard.press("Escape")
    probe.wait_answer(before)
    assert "stopped" in page.locator(".msg.assistant .stats").last.inner_text()
    assert _wait_idle(http) == 0

    # Regenerate to the end: tokens, tokens/s and TTFT under the answer.
    probe.settings(max_tokens="40")
    before = probe.answers()
    page.click(".regenerate")
    probe.wait_answer(before)
    assert page.locator(".msg").count() == 2, "regenerate must replace the answer"
    stats = page.locator(".msg.assistant .stats").last.inner_text()
    assert re.search(r"\d+ tokens · [\d.]+ tok/s · TTFT \d+ ms", stats), stats
    assert _last_answer(page).strip()

    # Edit the question and regenerate from there.
    before = probe.answers()
    page.click(".msg.user .edit")
    page.fill(".edit-box", "Name three colors.")
    page.click(".save-edit")
    probe.wait_answer(before)
    assert page.locator(".msg").count() == 2
    assert page.locator(".msg.user .body").inner_text().strip() == "Name three colors."
    answer = _last_answer(page)
    assert answer.strip()

    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "webui.png"))

    # Reload: the conversation is still there (IndexedDB), rename and export it.
    page.reload()
    page.wait_for_selector("body[data-ready='1']")
    assert page.locator("#conversations li").count() >= 1
    assert page.locator(".msg.user .body").inner_text().strip() == "Name three colors."
    assert _last_answer(page) == answer
    page.click("#conversations li.current .rename")
    page.fill(".rename-box", "Colours")
    page.keyboard.press("Enter")
    page.wait_for_selector("#conversations li.current .conv-title:text('Colours')")
    page.reload()
    page.wait_for_selector("body[data-ready='1']")
    assert page.inner_text("#conversations li.current .conv-title") == "Colours"
    with page.expect_download() as download:
        page.click("#conversations li.current .export")
    exported = json.loads(Path(download.value.path()).read_text())
    assert exported["title"] == "Colours"
    assert [m["role"] for m in exported["messages"]] == ["user", "assistant"]
    assert exported["messages"][1]["stats"]["tokens"] > 0
    count = page.locator("#conversations li").count()
    page.click("#conversations li.current .delete")
    page.click("#conversations li.current .delete")
    wait_js(page, f"document.querySelectorAll('#conversations li').length < {count}")

    assert not probe.errors, probe.errors
    assert not probe.csp_violations(), probe.csp_violations()
    assert not probe.dialogs


def test_model_output_with_html_renders_as_inert_text(probe: PageProbe, http: httpx.Client,
                                                      model_id: str) -> None:
    """The bundled model, greedy, repeats markup it is asked to repeat: the page shows
    it as text; no image with an onerror handler, no script element, no dialog."""
    prompts = [f"Repeat exactly: {XSS_IMG}",
               f"Repeat exactly: {XSS_IMG} <script>alert(2)</script>"]
    expected = []
    for prompt in prompts:  # what the model says to exactly this request
        r = http.post("/v1/chat/completions", json={
            "model": model_id, "messages": [{"role": "user", "content": prompt}],
            "temperature": 0, "max_tokens": 60})
        expected.append(r.json()["choices"][0]["message"]["content"])
    assert any("<img src=x onerror" in t or "<script>" in t for t in expected), (
        f"the model no longer repeats the markup, so this test proves nothing: {expected}")

    page = probe.open()
    probe.settings(temperature="0", max_tokens="60")
    for prompt, model_text in zip(prompts, expected, strict=True):
        page.click("#new-chat")  # the same request as above: no earlier turns
        before = probe.answers()
        page.fill("#input", prompt)
        page.keyboard.press("Enter")
        probe.wait_answer(before)
        shown = _last_answer(page)
        for fragment in ("<img src=x onerror=alert(1)>", "<script>alert(2);</script>",
                         "<script>alert(2)</script>"):
            if fragment in model_text:
                assert fragment in shown, (fragment, shown)
    assert page.locator("#messages img").count() == 0
    assert page.locator("#messages script").count() == 0
    assert page.evaluate("[...document.querySelectorAll('#messages *')].filter(e => "
                         "[...e.attributes].some(a => a.name.startsWith('on'))).length") == 0
    time.sleep(0.3)  # a broken image's onerror would have fired by now
    assert probe.dialogs == []
    assert not probe.errors, probe.errors


def _sse(text: str) -> str:
    base = {"id": "chatcmpl-x", "object": "chat.completion.chunk", "created": 0,
            "model": "m", "system_fingerprint": "fp"}
    pieces = [text[i:i + 7] for i in range(0, len(text), 7)]
    events = [{**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                    "finish_reason": None}]}]
    events += [{**base, "choices": [{"index": 0, "delta": {"content": p},
                                     "finish_reason": None}]} for p in pieces]
    events.append({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    return "".join(f"data: {json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n"


CRAFTED = """Here is markup:

<img src=x onerror=alert(1)>
<script>alert(2)</script>
<svg onload=alert(3)></svg> <iframe src="javascript:alert(4)"></iframe>

[a link](javascript:alert(5)) and ![pic](x" onerror="alert(6))

```python
def add(a, b):
    return a + b
```
"""


def test_crafted_answer_is_sanitised_and_code_highlighted(probe: PageProbe) -> None:
    """Output no small model would write on cue, streamed to the page through an
    intercepted response: every vector stays inert; code gets highlighting and Copy.
    The model card is intercepted too, to show the image control when a model takes
    images."""
    page = probe.page

    def model_card(route: Any) -> None:
        response = route.fetch()
        card = response.json()
        card["input_modalities"] = ["text", "image"]
        route.fulfill(response=response, json=card)

    page.route(re.compile(r".*/v1/models/[^/]+$"), model_card)
    page.route("**/v1/chat/completions", lambda route: route.fulfill(
        status=200, headers={"content-type": "text/event-stream"}, body=_sse(CRAFTED)))
    probe.open()
    page.wait_for_selector("#attach:not([hidden])")
    before = probe.answers()
    page.fill("#input", "anything")
    page.keyboard.press("Enter")
    probe.wait_answer(before)
    body = page.locator(".msg.assistant .body").last
    text = body.inner_text()
    assert "<img src=x onerror=alert(1)>" in text and "<script>alert(2)</script>" in text
    for tag in ("script", "iframe", "svg", "object", "embed"):
        assert page.locator(f"#messages {tag}").count() == 0, tag
    hrefs = page.eval_on_selector_all("#messages a", "els => els.map(e => e.href)")
    assert not [h for h in hrefs if h.lower().startswith("javascript:")], hrefs
    assert page.evaluate("[...document.querySelectorAll('#messages *')].filter(e => "
                         "[...e.attributes].some(a => a.name.startsWith('on'))).length") == 0
    assert page.locator("#messages pre code.hljs .hljs-keyword").count() >= 1
    assert page.locator("#messages .code-block .copy-code").count() == 1
    time.sleep(0.3)
    assert probe.dialogs == [] and not probe.errors, (probe.dialogs, probe.errors)


def test_wrong_key_shows_the_401_and_the_right_key_works(browser: Any,
                                                         auth_server_url: str) -> None:
    probe = PageProbe(browser, auth_server_url)
    try:
        page = probe.open()
        page.wait_for_selector("#banner:not([hidden])")
        assert "401" in page.inner_text("#banner")
        probe.settings(api_key="wrong-key")
        page.wait_for_selector("#banner:not([hidden])")
        page.fill("#input", "Hello?")
        page.keyboard.press("Enter")
        wait_js(page, "document.getElementById('banner-text').textContent.includes('401')")
        banner = page.inner_text("#banner")
        assert "Error 401" in banner and "API key" in banner, banner
        assert page.input_value("#input") == "Hello?", "the message was lost"
        probe.settings(api_key=AUTH_KEY, max_tokens="8", temperature="0")
        page.wait_for_selector("#banner", state="hidden")
        before = probe.answers()
        page.keyboard.press("Enter")
        probe.wait_answer(before)
        assert _last_answer(page).strip()
        assert page.evaluate("localStorage.getItem('chatd.apiKey')") == AUTH_KEY
    finally:
        probe.close()


def test_presets_theme_and_phone_width(browser: Any, server_url: str) -> None:
    probe = PageProbe(browser, server_url, viewport={"width": 390, "height": 844})
    try:
        page = probe.open()
        # Phone width: the list folds away behind a button and nothing overflows.
        assert page.is_visible("#open-sidebar") and page.is_visible("#input")
        assert page.evaluate("document.documentElement.scrollWidth") <= 390
        page.click("#open-sidebar")
        wait_js(page, "getComputedStyle(document.getElementById('sidebar'))"
                      ".transform === 'none'")
        page.click("#close-sidebar")
        # Themes: auto -> light -> dark.
        page.click("#theme")
        page.click("#theme")
        assert page.evaluate("document.documentElement.dataset.theme") == "dark"
        dark_bg = page.evaluate("getComputedStyle(document.body).backgroundColor")
        page.click("#theme")  # back to auto
        page.click("#theme")  # light
        assert page.evaluate("getComputedStyle(document.body).backgroundColor") != dark_bg
        # Presets are saved and applied.
        page.click("#open-settings")
        page.fill("#set-system", "Answer in one word.")
        page.fill("#set-temperature", "0.3")
        page.fill("#preset-name", "terse")
        page.click("#preset-save")
        page.fill("#set-system", "")
        page.fill("#set-temperature", "1")
        page.select_option("#preset-select", "terse")
        page.click("#preset-apply")  # reads the preset back from IndexedDB
        wait_js(page, "document.getElementById('set-system').value === 'Answer in one word.'",
                timeout_s=10)
        assert page.input_value("#set-temperature") == "0.3"
        page.click("#settings-close")
        page.reload()
        page.wait_for_selector("body[data-ready='1']")
        page.click("#open-settings")
        assert page.input_value("#set-system") == "Answer in one word."
        # Opening the settings lists the presets from IndexedDB, asynchronously.
        wait_js(page, "document.querySelector('#preset-select option') !== null"
                " && document.querySelector('#preset-select').options[0].value !== ''",
                timeout_s=10)
        assert page.locator("#preset-select option[value='terse']").count() == 1
        assert not probe.errors and not probe.csp_violations(), probe.console
    finally:
        probe.close()
