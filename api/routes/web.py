"""The web app: its page and its own files, served from the package (no CDN, no build step),
each answer under a Content-Security-Policy that lets the page load and call nothing but alma."""

from __future__ import annotations

import gzip
import mimetypes
from functools import cache
from pathlib import Path

from fastapi import APIRouter, Request, Response

from alma.api.errors import ApiError

router = APIRouter(include_in_schema=False)

STATIC = Path(__file__).resolve().parent.parent / "static"
# No inline script or style, no other host: a name injected into the page can run nothing.
# `blob:` is the page's own audio (a reply spoken) and images fetched with the key.
POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
    "media-src 'self' blob:; connect-src 'self'; object-src 'none'; base-uri 'none'; "
    "frame-ancestors 'none'; form-action 'none'"
)
_TYPES = {
    ".js": "text/javascript",
    ".css": "text/css",
    ".html": "text/html",
    ".svg": "image/svg+xml",
}


@router.get("/")
def page(request: Request) -> Response:
    """The web app (it asks for an API key and keeps it in the tab's session storage)."""
    return _serve("index.html", request)


@router.get("/web/{name:path}")
def web_file(name: str, request: Request) -> Response:
    return _serve(name, request)


def _serve(name: str, request: Request) -> Response:
    plain, packed = _file(name)
    headers = {
        "Content-Security-Policy": POLICY,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-cache",
        "Vary": "Accept-Encoding",
    }
    suffix = Path(name).suffix
    media = _TYPES.get(suffix) or mimetypes.guess_type(name)[0] or "application/octet-stream"
    if media.startswith("text/"):
        media += "; charset=utf-8"
    if "gzip" in request.headers.get("accept-encoding", ""):
        return Response(packed, media_type=media, headers={**headers, "Content-Encoding": "gzip"})
    return Response(plain, media_type=media, headers=headers)


@cache
def _file(name: str) -> tuple[bytes, bytes]:
    """A file of the app as it is and gzipped, read once per process; only files inside the
    app's folder."""
    path = (STATIC / name).resolve()
    if not path.is_relative_to(STATIC) or not path.is_file():
        raise ApiError(404, "not_found", f"no such file: {name}")
    plain = path.read_bytes()
    return plain, gzip.compress(plain, mtime=0)
