"""Error answers in A1111's shape ``{error, detail, body, errors}``, scoped to the API's routes.

:class:`ApiRoute` turns exceptions raised by ``/sdapi/v1`` handlers (and their request validation) into
JSON answers: 422 with the field path for bad input, 404/500 for model errors, 409 for cancelled jobs.
Other routes of the application (the UI) keep their own error handling.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from fastapi import HTTPException, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute

from webui.engine.errors import InvalidParameter, JobCancelled
from webui.models.errors import ModelError, ModelNotFound

log = logging.getLogger(__name__)

MAX_ECHOED_STRING = 200  # long strings (base64 images) are shortened when a bad body is echoed back


def error_response(
    status: int, error: str, detail: Any, errors: str, body: Any = "", headers: dict[str, str] | None = None
) -> JSONResponse:
    """A JSON answer in A1111's error shape."""
    content = {"error": error, "detail": detail, "body": body, "errors": errors}
    return JSONResponse(status_code=status, content=content, headers=headers)


def _shorten(value: Any) -> Any:
    if isinstance(value, str) and len(value) > MAX_ECHOED_STRING:
        return value[:MAX_ECHOED_STRING] + f"... ({len(value)} characters)"
    if isinstance(value, dict):
        return {k: _shorten(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_shorten(v) for v in value]
    return value


def _path(loc: Sequence[Any]) -> str:
    return ".".join(str(part) for part in loc)


def validation_error_response(exc: RequestValidationError) -> JSONResponse:
    """422 for a body that does not match the schema; each error names its field path."""
    detail = [
        {"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))}
        for e in exc.errors()
    ]
    errors = "; ".join(f"{_path(d['loc'])}: {d['msg']}" for d in detail)
    return error_response(422, "RequestValidationError", detail, errors, _shorten(exc.body))


def invalid_parameter_response(exc: InvalidParameter) -> JSONResponse:
    """422 for a value the engine refused; the field path is ``body.<field>``."""
    loc = ["body", *exc.field.split(".")]
    detail = [{"loc": loc, "msg": exc.message, "type": "value_error"}]
    return error_response(422, "InvalidParameter", detail, f"{_path(loc)}: {exc.message}")


def exception_response(exc: Exception) -> JSONResponse:
    """The answer for any exception a handler let escape."""
    if isinstance(exc, RequestValidationError):
        return validation_error_response(exc)
    if isinstance(exc, InvalidParameter):
        return invalid_parameter_response(exc)
    if isinstance(exc, HTTPException):
        detail = exc.detail
        return error_response(exc.status_code, "HTTPException", detail, str(detail), headers=exc.headers)
    if isinstance(exc, ModelNotFound):
        return error_response(404, type(exc).__name__, str(exc), str(exc))
    if isinstance(exc, ModelError):
        return error_response(500, type(exc).__name__, str(exc), str(exc))
    if isinstance(exc, JobCancelled):
        return error_response(409, type(exc).__name__, str(exc), str(exc))
    log.exception("API error: %s", exc)
    return error_response(500, type(exc).__name__, str(exc), str(exc))


class ApiRoute(APIRoute):
    """An API route whose errors (validation included) are answered in A1111's error shape."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        """Wrap FastAPI's handler so that exceptions become :func:`exception_response` answers."""
        handler = super().get_route_handler()

        async def guarded(request: Request) -> Response:
            try:
                return await handler(request)
            except Exception as exc:
                return exception_response(exc)

        return guarded
