"""Errors that carry their HTTP status; one handler (api/errors.py) renders them in OpenAI's shape."""

from __future__ import annotations


class APIError(Exception):
    status = 500
    type = "server_error"
    code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code or type(self).code
        self.headers = headers or {}


class InvalidRequest(APIError):
    status = 400
    type = "invalid_request_error"


class ModelNotFound(APIError):
    status = 404
    type = "invalid_request_error"
    code = "model_not_found"


class ModelNotDownloaded(APIError):
    """A catalog model whose files are not here, named by a request where requests may not start downloads."""

    status = 404
    type = "invalid_request_error"
    code = "model_not_downloaded"


class TooManyTokens(APIError):
    """One request bringing more tokens to compute than MAX_REQUEST_TOKENS."""

    status = 413
    type = "invalid_request_error"
    code = "too_many_tokens"


class Overloaded(APIError):
    status = 429
    type = "rate_limit_error"
    code = "overloaded"


class ModelUnavailable(APIError):
    status = 503
    type = "server_error"
    code = "model_unavailable"


class InferenceError(APIError):
    status = 500
    type = "server_error"
    code = "inference_failed"


def shutting_down() -> ModelUnavailable:
    """What new embedding work gets once SIGTERM has arrived (in the engine and in every front-end)."""
    return ModelUnavailable("the server is shutting down; retry on another instance", code="shutting_down")
