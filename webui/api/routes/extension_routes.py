"""Routes that extensions add through their facade, served under ``/ext/<id>/...``.

One catch-all route looks the handler up at request time, so disabling or reloading an extension
changes what is served at once, and a failing handler disables only its extension.
"""

from __future__ import annotations

import inspect
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.concurrency import run_in_threadpool

from webui.api.errors import invalid_parameter_response
from webui.context import AppContext
from webui.engine.errors import InvalidParameter
from webui.extensions.hooks import ExtensionError

EXTENSION_PREFIX = "/ext"


def build_extension_router(ctx: AppContext) -> APIRouter:
    """The ``/ext/{ext_id}/{path}`` dispatcher over ``ctx.extensions``."""
    router = APIRouter(prefix=EXTENSION_PREFIX)

    @router.api_route(
        "/{ext_id}/{path:path}", methods=["GET", "POST", "PUT", "DELETE", "PATCH"], include_in_schema=False
    )
    async def dispatch(ext_id: str, path: str, request: Request) -> Any:
        host = ctx.extensions
        spec = host.route(ext_id, path, request.method) if host is not None else None
        if spec is None:
            raise HTTPException(404, f"no route {request.method} /{path} in extension {ext_id!r}")
        body: Any = None
        if request.method in ("POST", "PUT", "PATCH"):
            raw = await request.body()
            body = await request.json() if raw else None
        kwargs: dict[str, Any] = {}
        params = inspect.signature(spec.fn).parameters
        if "body" in params:
            kwargs["body"] = body
        if "query" in params:
            kwargs["query"] = dict(request.query_params)
        try:
            return await run_in_threadpool(host.call_guarded, ext_id, "route", spec.fn, **kwargs)
        except InvalidParameter as e:  # the caller's bad input, not the extension's fault
            return invalid_parameter_response(e)
        except ExtensionError as e:
            raise HTTPException(500, str(e)) from e

    return router
