"""The A1111-compatible HTTP API (``/sdapi/v1``), mounted by :func:`install_api`.

This layer never touches torch: it validates a request, queues a job on the application's one job queue
and renders the result.
"""

from __future__ import annotations

from collections.abc import Callable

from fastapi import APIRouter, FastAPI

from webui.api.auth import BasicAuthMiddleware
from webui.api.limits import DEFAULT_MAX_REQUEST_MB, RequestSizeLimitMiddleware
from webui.api.routes.catalog import build_catalog_router
from webui.api.routes.extension_routes import EXTENSION_PREFIX, build_extension_router
from webui.api.routes.generation import build_generation_router
from webui.api.routes.progress import build_progress_router
from webui.api.routes.settings import build_settings_router
from webui.config.flags import parse_auth
from webui.context import AppContext
from webui.engine.styles import StyleDatabase

API_PREFIX = "/sdapi/v1"
DOC_PATHS = ("/docs", "/docs/oauth2-redirect", "/openapi.json", "/redoc")

__all__ = ["API_PREFIX", "api_paths", "install_api"]


def api_paths(api_only: bool) -> Callable[[str], bool]:
    """Which paths belong to the API: all of them when the API is served alone (``--nowebui``)."""
    if api_only:
        return lambda _path: True
    return lambda path: path.startswith((API_PREFIX + "/", EXTENSION_PREFIX + "/")) or path in DOC_PATHS


def install_api(app: FastAPI, ctx: AppContext) -> None:
    """Mount the routes on ``app``, with the request size limit and ``--api-auth`` when given."""
    styles = StyleDatabase(ctx.paths.styles_file)
    api = APIRouter(prefix=API_PREFIX)
    api.include_router(build_generation_router(ctx, styles))
    api.include_router(build_progress_router(ctx))
    api.include_router(build_settings_router(ctx))
    api.include_router(build_catalog_router(ctx, styles))
    app.include_router(api)
    app.include_router(build_extension_router(ctx))

    protects = api_paths(ctx.flags.nowebui)

    def max_bytes() -> int:
        return int(float(ctx.options.get("api_max_request_mb", DEFAULT_MAX_REQUEST_MB)) * 1024 * 1024)

    app.add_middleware(RequestSizeLimitMiddleware, max_bytes=max_bytes, applies=protects)
    credentials = parse_auth(ctx.flags.api_auth)
    if credentials:  # added last, so it runs first: a stranger's body is never read
        app.add_middleware(BasicAuthMiddleware, credentials=credentials, protects=protects)
