"""Request bodies and their errors: every JSON body is read by the runtime's one JSON reader
(format/json_bounds.py) before FastAPI parses it, and every validation error answers valid JSON.

Python's JSON parser, which FastAPI uses, takes `NaN`, `Infinity` and `1e400` as floats. Such a value in
a field that fails validation made a 500: the error echoes its input, and the answer cannot be written as
JSON. One that passed validation could reach the images' `parameters` echo the same way. So a body is
refused (422, naming the problem) when it is not JSON, nests deeper than MAX_DEPTH, or holds a
non-finite number, before any route sees it; its size was checked by the guard (security.py) before it
was read.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute

from sdcpu.format.json_bounds import JsonError, parse_json

MAX_DEPTH = 32  # A1111's deepest request (alwayson_scripts.controlnet.args[].image.image) nests 5 levels
Handler = Callable[[Request], Coroutine[Any, Any, Response]]


class CheckedBodyRoute(APIRoute):
    """A route whose JSON body is checked by `parse_json` (bounded depth, finite numbers) first."""

    def get_route_handler(self) -> Handler:
        handler = super().get_route_handler()

        async def checked(request: Request) -> Response:
            body = await request.body()  # kept by the request: the route's own parsing reads it again
            if body:
                try:
                    parse_json(body, "the request body", max_bytes=len(body), max_depth=MAX_DEPTH, strict=True)
                except JsonError as err:
                    return JSONResponse({"detail": plain(str(err))}, status_code=422)
            return await handler(request)

        return checked


def install_validation_errors(app: FastAPI) -> None:
    """Validation errors as FastAPI shapes them (422, `detail` a list), their echoed inputs kept only
    where they are finite JSON: no error answer can fail to be written."""

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, err: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": [_safe(error) for error in err.errors()]}, status_code=422)


def plain(message: str) -> str:
    """`message` as text any JSON answer can hold: a lone surrogate it quotes is written as `\\udcff`."""
    return message.encode("utf-8", "backslashreplace").decode("utf-8")


def _safe(error: dict[str, Any]) -> dict[str, Any]:
    try:
        json.dumps(error, allow_nan=False, ensure_ascii=False).encode("utf-8")
        return error
    except (TypeError, ValueError):  # UnicodeEncodeError is a ValueError
        ctx = {key: plain(str(value)) for key, value in (error.get("ctx") or {}).items()}
        return {key: value for key, value in error.items() if key not in ("input", "ctx")} | {"ctx": ctx}
