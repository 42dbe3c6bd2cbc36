"""GET / and GET /webui/{file}: the page's files, read once from package data.

The files are small (about 350 kB with the vendored libraries), so they are held in
memory with an ETag each; `Cache-Control: no-cache` makes a browser revalidate, so an
upgraded chatd is never shown with yesterday's scripts. Every response carries the
security headers (``headers.py``). The routes stay out of the OpenAPI document: they
are not part of the API contract.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import Response

from chatd.webui.headers import SECURITY_HEADERS

PREFIX = "/webui/"

_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".md": "text/plain; charset=utf-8",
}


@dataclass(frozen=True)
class StaticFile:
    body: bytes
    media_type: str
    etag: str


def load_files() -> dict[str, StaticFile]:
    """Every file under static/, by its path there ("index.html", "vendor/...")."""
    root = resources.files("chatd.webui").joinpath("static")
    files: dict[str, StaticFile] = {}

    def walk(node, prefix: str) -> None:  # a Traversable: a directory or a zip entry
        for child in node.iterdir():
            name = prefix + child.name
            if child.is_dir():
                walk(child, name + "/")
                continue
            suffix = "." + child.name.rsplit(".", 1)[-1] if "." in child.name else ""
            body = child.read_bytes()
            etag = '"' + hashlib.sha256(body).hexdigest()[:24] + '"'
            files[name] = StaticFile(body, _TYPES.get(suffix, "text/plain; charset=utf-8"),
                                     etag)

    walk(root, "")
    return files


def _serve(request: Request, file: StaticFile | None) -> Response:
    if file is None:
        return Response("Not found\n", status_code=404, media_type="text/plain",
                        headers=SECURITY_HEADERS)
    headers = {**SECURITY_HEADERS, "ETag": file.etag, "Cache-Control": "no-cache"}
    if request.headers.get("if-none-match") == file.etag:
        return Response(status_code=304, headers=headers)
    return Response(file.body, media_type=file.media_type, headers=headers)


def build_router(files: dict[str, StaticFile]) -> APIRouter:
    router = APIRouter(include_in_schema=False)

    @router.api_route("/", methods=["GET", "HEAD"])
    async def page(request: Request) -> Response:
        return _serve(request, files.get("index.html"))

    @router.api_route(PREFIX + "{path:path}", methods=["GET", "HEAD"])
    async def static(path: str, request: Request) -> Response:
        return _serve(request, files.get(path))

    return router


def install(app: FastAPI) -> None:
    """Mount the page on `app` (skipped by `chatd serve --no-webui`)."""
    app.include_router(build_router(load_files()))
