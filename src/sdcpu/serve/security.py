"""The server's security rules, each in one place (docs/serve.md has them as a table):

- it binds to loopback unless given an API key (`check_bind`);
- with a key, every request must carry it: HTTP Basic with the key as password (what A1111's
  `--api-auth` clients and browsers send), `Authorization: Bearer KEY` or `X-API-Key: KEY`;
- without a key, the server answers only to loopback host names (`Host: 127.0.0.1`, `localhost`,
  `[::1]`), so that a web page whose domain is re-pointed at 127.0.0.1 (DNS rebinding) gets nothing;
- a state-changing request from another site (`Sec-Fetch-Site: cross-site`, or an `Origin` that is not
  this server) gets 403; requests without `Origin` (curl, scripts) pass;
- a request body must declare its length, within the upload limit, before it is read, and may not be
  chunked (`Transfer-Encoding`), whose length is only known once it is read;
- responses say `nosniff`, and the page may not be framed or load anything from elsewhere.
"""

from __future__ import annotations

import base64
import binascii
import secrets
from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from sdcpu.errors import SdcpuError

LOOPBACK = ("127.0.0.1", "::1", "localhost")
LOOPBACK_HOSTS = ("127.0.0.1", "[::1]", "localhost")  # as they appear in a Host header, before the port
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; frame-ancestors 'none'",
    "Referrer-Policy": "no-referrer",
}
Next = Callable[[Request], Awaitable[Response]]


def check_bind(host: str, api_key: str | None) -> None:
    """Refuse to serve beyond this machine without an API key, and a key that is not text (bytes that are
    not UTF-8, from a shell or an environment variable: no client could send it)."""
    try:
        (api_key or "").encode("utf-8")
    except UnicodeEncodeError:
        raise SdcpuError("the API key is not valid UTF-8 text; give it in UTF-8") from None
    if host not in LOOPBACK and not api_key:
        raise SdcpuError(
            f"binding to {host} serves every machine that can reach it; pass --api-key KEY (checked on every "
            "request) or bind to 127.0.0.1"
        )


def guard(api_key: str | None, max_body: int) -> Callable[[Request, Next], Awaitable[Response]]:
    """The HTTP middleware that applies the rules above to every request."""

    async def middleware(request: Request, call_next: Next) -> Response:
        refusal = _refusal(request, api_key, max_body)
        response = refusal if refusal is not None else await call_next(request)
        response.headers.update(HEADERS)
        return response

    return middleware


def _refusal(request: Request, api_key: str | None, max_body: int) -> Response | None:
    if api_key and not _has_key(request, api_key):
        headers = {"WWW-Authenticate": 'Basic realm="sdcpu"'}
        return JSONResponse({"detail": "this server needs its API key"}, status_code=401, headers=headers)
    host = request.headers.get("host", "")
    host = host.lower()  # host names are case-insensitive (RFC 4343)
    if not api_key and host.rsplit(":", 1)[0] not in LOOPBACK_HOSTS and host not in LOOPBACK_HOSTS:
        return _error(421, f"this server answers to 127.0.0.1 and localhost only, not {host!r}")
    if "transfer-encoding" in request.headers:
        return _error(411, "send the request body with a Content-Length, not chunked")
    if request.method in SAFE_METHODS:
        return None
    if request.headers.get("sec-fetch-site") == "cross-site":
        return _error(403, "cross-site requests are refused")
    origin = request.headers.get("origin")
    if origin is not None and origin != f"{request.url.scheme}://{request.headers.get('host', '')}":
        return _error(403, f"requests from {origin} are refused; use this server's own page or no Origin")
    length = request.headers.get("content-length")
    if length is None:
        return _error(411, "send the request body with a Content-Length")
    if not length.isdigit() or int(length) > max_body:
        return _error(413, f"the request body is over this server's limit of {max_body:,} bytes")
    return None


def _has_key(request: Request, api_key: str) -> bool:
    given = request.headers.get("x-api-key", "")
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer":
        given = value
    elif scheme.lower() == "basic":
        try:
            given = base64.b64decode(value, validate=True).decode("utf-8").partition(":")[2]
        except (binascii.Error, UnicodeDecodeError):
            return False
    return secrets.compare_digest(given.encode(), api_key.encode())


def _error(status: int, message: str) -> Response:
    return JSONResponse({"detail": message}, status_code=status)
