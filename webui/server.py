"""Serving: one FastAPI application with the A1111 API (``--api`` / ``--nowebui``) and the Gradio UI.

Called by ``launch.py`` after the environment is ready.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Callable
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


TunnelOpener = Callable[[str, int], str]


def gradio_share_tunnel(host: str, port: int) -> str:
    """Gradio's share tunnel (a gradio.live address) to ``host:port``, through Gradio's public
    ``networking.setup_tunnel``, the call its own ``launch(share=True)`` makes."""
    import secrets

    from gradio.networking import setup_tunnel

    return setup_tunnel(host, port, secrets.token_urlsafe(32), None, None)


def open_share_tunnel(host: str, port: int, opener: TunnelOpener = gradio_share_tunnel) -> str | None:
    """``--share``: open a public link to the local UI and print it as Gradio does; when that is not
    possible (no internet, the share server refuses), say why and keep serving locally. Returns the URL."""
    local = f"http://{host}:{port}"
    try:
        url = opener(host, port)
    except Exception as error:  # any failure of the tunnel must leave the local server running
        cause = f"{error}: {error.__cause__}" if error.__cause__ else str(error)
        message = f"--share: could not create a public link ({cause}); the UI is still on {local}"
        log.error(message)
        print(message, file=sys.stderr, flush=True)
        return None
    print(f"Running on public URL: {url}", flush=True)
    return url


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
    if flags.share and not flags.nowebui:  # in the background: the local server must not wait for it
        local = "127.0.0.1" if flags.host == "0.0.0.0" else flags.host
        threading.Thread(
            target=open_share_tunnel, args=(local, flags.server_port), name="share-tunnel", daemon=True
        ).start()
    if flags.autolaunch:
        import webbrowser

        webbrowser.open(url)
    try:
        uvicorn.run(app, host=flags.host, port=flags.server_port, log_level="info")
    finally:
        ctx.close()
    return 0
