"""Limits that refuse over-large requests before any work starts."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from fastapi import HTTPException

DEFAULT_MAX_REQUEST_MB = 64  # option "api_max_request_mb"
DEFAULT_MAX_PIXELS = 4096 * 4096  # option "api_max_pixels": width * height of any image in or out


class RequestTooLarge(HTTPException):
    """The request body is larger than allowed (raised while the body is read)."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body is larger than {limit} bytes (option api_max_request_mb)")


class RequestSizeLimitMiddleware:
    """Answer 413 to requests on limited paths whose body exceeds ``max_bytes()`` bytes.

    A declared ``Content-Length`` is checked before anything is read; a body without one is counted as it
    streams in, and reading stops at the limit.
    """

    def __init__(self, app: Any, max_bytes: Callable[[], int], applies: Callable[[str], bool]) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.applies = applies

    async def __call__(
        self, scope: dict[str, Any], receive: Callable[[], Any], send: Callable[..., Any]
    ) -> None:
        if scope["type"] != "http" or not self.applies(scope.get("path", "")):
            await self.app(scope, receive, send)
            return
        limit = self.max_bytes()
        for key, value in scope.get("headers", []):
            if key.lower() == b"content-length" and value.isdigit() and int(value) > limit:
                await _send_413(send, limit)
                return
        seen = 0

        async def counting_receive() -> dict[str, Any]:
            nonlocal seen
            message = await receive()
            if message.get("type") == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise RequestTooLarge(limit)
            return message

        await self.app(scope, counting_receive, send)


async def _send_413(send: Callable[..., Any], limit: int) -> None:
    message = RequestTooLarge(limit).detail
    body = json.dumps({"error": "RequestTooLarge", "detail": message, "body": "", "errors": message}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 413, "headers": headers})
    await send({"type": "http.response.body", "body": body})
