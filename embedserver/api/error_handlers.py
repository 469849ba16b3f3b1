"""Every error leaves the server in OpenAI's shape: {"error": {"message", "type", "param", "code"}}.

Validation errors answer 400 on the OpenAI API (as OpenAI does) and 422 on the native API (as its existing
clients expect); the framework's default {"detail": ...} body is never sent.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.types import Send

from embedserver.api.responses import JSON
from embedserver.errors import APIError, InvalidRequest

log = logging.getLogger(__name__)


def error_body(
    message: str, type_: str, *, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


async def send_error(
    send: Send,
    status: int,
    message: str,
    *,
    code: str,
    headers: list[tuple[bytes, bytes]] | None = None,
    kind: str = "invalid_request_error",
) -> None:
    """An error answered from ASGI middleware, before any route runs, in the same shape as the routes'."""
    payload = orjson.dumps(error_body(message, kind, code=code))
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})


def api_error_response(exc: APIError, path: str) -> JSON:
    status = exc.status
    if isinstance(exc, InvalidRequest) and not path.startswith(("/v1/", "/v2/")):
        status = 422  # the native API answers every input error with 422, as its clients expect
    return JSON(
        error_body(exc.message, exc.type, param=exc.param, code=exc.code), status, headers=exc.headers
    )


def internal_error() -> JSON:
    """The answer to an error nothing expected; called while handling it, so its traceback is logged."""
    log.exception("unhandled error")
    return JSON(error_body("internal server error", "server_error"), 500)


def install(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSON:
        return api_error_response(exc, request.url.path)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSON:
        status = 400 if request.url.path.startswith(("/v1/", "/v2/")) else 422
        message, param = _describe(exc)
        content_type = request.headers.get("content-type", "")
        if request.method == "POST" and "json" not in content_type.lower():
            # FastAPI reads only JSON bodies; any other body arrives as nothing, and its complaint would be
            # about a missing object, not about what the client can fix (curl -d sends a form type).
            sent = _echo(content_type) if content_type else "none"
            message, param = (
                f"the request body must be JSON (content-type: application/json), got {sent}",
                None,
            )
        return JSON(error_body(message, "invalid_request_error", param=param), status)

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> JSON:
        if exc.status_code == 400 and str(exc.detail).startswith("There was an error parsing the body"):
            # Not JSON at all (invalid UTF-8, nesting too deep, truncated): an input error like any other,
            # 422 on the native API as documented.
            status = 400 if request.url.path.startswith(("/v1/", "/v2/")) else 422
            message = "the request body is not valid JSON (UTF-8 text, nesting within the parser's limit)"
            return JSON(error_body(message, "invalid_request_error"), status)
        type_ = "invalid_request_error" if exc.status_code < 500 else "server_error"
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        return JSON(
            error_body(str(exc.detail), type_, code=code),
            exc.status_code,
            headers=getattr(exc, "headers", None),
        )

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSON:
        return internal_error()


def _echo(value: str, limit: int = 100) -> str:
    """A client's value quoted back at most `limit` characters long, so an error never grows with the input."""
    return repr(value if len(value) <= limit else value[:limit] + "...")


def _describe(exc: RequestValidationError) -> tuple[str, str | None]:
    """One line naming the field, e.g. "texts[2]: Input should be a valid string"."""
    errors = exc.errors()
    if not errors:
        return "invalid request", None
    first = errors[0]
    if first.get("type") == "json_invalid":
        return f"request body is not valid JSON: {first.get('ctx', {}).get('error', 'parse error')}", None
    loc = [part for part in first.get("loc", ()) if part != "body"]
    if not loc:
        return f"request body: {first.get('msg', 'invalid')}", None
    param = str(loc[0])
    if param == "input":
        # `input` is a union, and pydantic reports one error per member; say what is accepted instead.
        return (
            "input must be a non-empty string, a list of strings, a list of token ids, or a list of token-id lists",
            "input",
        )
    field = param + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc[1:])
    if first.get("type") == "missing":
        return f"{field}: field required", param
    return f"{field}: {first.get('msg', 'invalid value')}", param
