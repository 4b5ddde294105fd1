"""HTTP Basic authentication for the API (``--api-auth user:pass[,user:pass]``).

An ASGI middleware, so that it also covers the routes FastAPI adds by itself (``/docs``,
``/openapi.json``), unlike A1111 where some routes stay open.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
from collections.abc import Callable, Mapping
from typing import Any

REALM = "Stable Diffusion web UI API"

Scope = dict[str, Any]
Receive = Callable[[], Any]
Send = Callable[[dict[str, Any]], Any]


def credentials_match(header: str | None, credentials: Mapping[str, str]) -> bool:
    """Whether an ``Authorization: Basic ...`` header names a known user with the right password.

    Every known pair is compared in constant time, so the answer's timing tells nothing about which part
    was wrong.
    """
    if not header or not credentials:
        return False
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "basic":
        return False
    try:
        decoded = base64.b64decode(token.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return False
    user, sep, password = decoded.partition(":")
    if not sep:
        return False
    ok = False
    for known_user, known_password in credentials.items():
        user_ok = hmac.compare_digest(user.encode(), known_user.encode())
        password_ok = hmac.compare_digest(password.encode(), known_password.encode())
        ok |= user_ok and password_ok
    return ok


class BasicAuthMiddleware:
    """Answer 401 (with ``WWW-Authenticate``) to requests on protected paths without valid credentials.

    Args:
        app: the wrapped ASGI application.
        credentials: user name -> password.
        protects: ``protects(path)`` tells whether a path needs credentials.
    """

    def __init__(self, app: Any, credentials: Mapping[str, str], protects: Callable[[str], bool]) -> None:
        self.app = app
        self.credentials = dict(credentials)
        self.protects = protects

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or not self.protects(scope.get("path", "")):
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        if credentials_match(headers.get("authorization"), self.credentials):
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        body = json.dumps(
            {"error": "Unauthorized", "detail": "Incorrect username or password", "body": "",
             "errors": "this API needs HTTP Basic credentials (--api-auth)"}
        ).encode()  # fmt: skip
        await send(
            {
                "type": "http.response.start",
                "status": 401,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"www-authenticate", f'Basic realm="{REALM}"'.encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
