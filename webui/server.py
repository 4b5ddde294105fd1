"""Serving: one FastAPI application with the A1111 API (``--api`` / ``--nowebui``) and the Gradio UI.

Called by ``launch.py`` after the environment is ready.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from webui.config.flags import Flags, parse_auth
from webui.context import AppContext, build_context

log = logging.getLogger("webui")


def exposure_warning(flags: Flags) -> str | None:
    """The loud warning printed when the server is reachable from other hosts without authentication."""
    if not flags.reachable_from_other_hosts:
        return None
    missing = []
    if not flags.nowebui and not flags.gradio_auth:
        missing.append("the web UI (--gradio-auth)")
    if (flags.api or flags.nowebui) and not flags.api_auth:
        missing.append("the API (--api-auth)")
    if not missing:
        return None
    return (
        "WARNING: the server is reachable from other hosts (--listen/--share/--server-name) and "
        + " and ".join(missing)
        + " has no password. Anyone who can reach it can generate images and read your outputs."
    )


def create_app(ctx: AppContext):  # -> fastapi.FastAPI
    """Build the ASGI application for ``ctx``: API routes and/or the UI, as the flags ask."""
    from fastapi import FastAPI

    app = FastAPI(title="Stable Diffusion web UI", version=ctx.version, docs_url="/docs", redoc_url=None)
    flags = ctx.flags
    if flags.api or flags.nowebui:
        from webui.api import install_api

        install_api(app, ctx)
    if not flags.nowebui:
        import gradio as gr

        from webui.app import build_ui

        auth = list(parse_auth(flags.gradio_auth).items()) or None
        app = gr.mount_gradio_app(app, build_ui(ctx), path="/", auth=auth)
    return app


def load_initial_model(ctx: AppContext) -> None:
    """Load ``--ckpt``, the last used checkpoint, or the first one found (queued on the GPU worker)."""
    wanted = ctx.flags.ckpt or ctx.options.get("sd_model_checkpoint") or None
    checkpoints = ctx.models.refresh()
    if not checkpoints:
        log.warning("no checkpoint found in %s: add .safetensors files there", ctx.paths.ckpt_dirs[0])
        return

    def load() -> None:
        try:
            model = ctx.models.load(wanted, ctx.options.get("sd_vae", "Automatic"))
        except Exception as e:  # the app keeps running without a model; the UI shows the error
            log.error("could not load the checkpoint: %s", e)
            if wanted:
                model = ctx.models.load(None)
            else:
                return
        ctx.options.update({"sd_model_checkpoint": model.checkpoint.title})

    ctx.submit("model-load", load)


def serve(flags: Flags, root: Path) -> int:
    """Start the app and serve until interrupted; returns the process exit code."""
    import uvicorn

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    ctx = build_context(flags, root)
    warning = exposure_warning(flags)
    if warning:
        print("\n" + "!" * 100 + f"\n{warning}\n" + "!" * 100 + "\n", file=sys.stderr, flush=True)
    ctx.start()
    load_initial_model(ctx)
    app = create_app(ctx)
    url = f"http://{'127.0.0.1' if flags.host == '0.0.0.0' else flags.host}:{flags.server_port}"
    print(f"Running on local URL:  {url}", flush=True)
    if flags.share and not flags.nowebui:
        log.info("--share: Gradio's share tunnel is opened by the UI launcher")
    if flags.autolaunch:
        import webbrowser

        webbrowser.open(url)
    try:
        uvicorn.run(app, host=flags.host, port=flags.server_port, log_level="info")
    finally:
        ctx.close()
    return 0
