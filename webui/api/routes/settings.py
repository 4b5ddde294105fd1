"""Settings (``/options``), command-line flags, and the checkpoint endpoints.

A change of ``sd_model_checkpoint`` or ``sd_vae`` becomes a model switch job on the shared queue, so it
happens between jobs: jobs queued before it run on the old model, jobs queued after it on the new one.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Body
from starlette.concurrency import run_in_threadpool

from webui.api.errors import ApiRoute
from webui.api.jobs import submit_model_switch
from webui.api.settings_check import API_OPTION_DEFAULTS, check_settings
from webui.config.flags import flags_as_dict
from webui.context import AppContext
from webui.engine.jobs import wait_async
from webui.models.manager import VAE_AUTOMATIC, VAE_NONE

SECRET_FLAGS = ("api_auth", "gradio_auth", "ngrok")
REDACTED = "<redacted>"


def current_options(ctx: AppContext) -> dict[str, Any]:
    """Every setting, with the active checkpoint's title and hash as A1111 reports them."""
    options = {**API_OPTION_DEFAULTS, **ctx.options.as_dict()}
    model = ctx.models.current
    if model is not None:
        options["sd_model_checkpoint"] = model.checkpoint.title
        options["sd_checkpoint_hash"] = model.checkpoint.sha256
    return options


def _needs_switch(ctx: AppContext, checkpoint: str | None, vae: str | None) -> bool:
    model = ctx.models.current
    if model is None:
        return True
    if checkpoint is not None and ctx.models.find(checkpoint).path != model.checkpoint.path:
        return True
    return vae is not None and vae != ctx.options.get("sd_vae", VAE_AUTOMATIC)


def build_settings_router(ctx: AppContext) -> APIRouter:
    """Routes for settings, flags and checkpoints."""
    router = APIRouter(route_class=ApiRoute, tags=["settings and models"])

    @router.get("/options")
    async def get_options() -> dict[str, Any]:
        """All settings by A1111's names."""
        return current_options(ctx)

    @router.post("/options")
    async def set_options(req: dict[str, Any] = Body(...)) -> None:
        """Change settings; a checkpoint or VAE change waits for its switch job (between jobs)."""
        changes = check_settings(ctx.options, req)
        checkpoint = changes.pop("sd_model_checkpoint", None)
        vae = changes.pop("sd_vae", None)

        def check_models() -> bool:
            if checkpoint is not None:
                ctx.models.find(
                    str(checkpoint)
                )  # unknown names raise ModelNotFound (404) listing the valid ones
            if vae not in (None, VAE_AUTOMATIC, VAE_NONE):
                ctx.models.find_vae(str(vae))
            return (checkpoint is not None or vae is not None) and _needs_switch(ctx, checkpoint, vae)

        if await run_in_threadpool(check_models):
            await wait_async(submit_model_switch(ctx, checkpoint, vae))
        elif vae is not None:
            changes["sd_vae"] = vae
        if changes:
            await run_in_threadpool(ctx.options.update, changes)

    @router.get("/cmd-flags")
    async def cmd_flags() -> dict[str, Any]:
        """The command-line flags (passwords and tokens redacted)."""
        flags = flags_as_dict(ctx.flags)
        for name in SECRET_FLAGS:
            if flags.get(name):
                flags[name] = REDACTED
        return flags

    @router.post("/refresh-checkpoints")
    async def refresh_checkpoints() -> None:
        """Rescan the checkpoint folders."""
        await run_in_threadpool(ctx.models.refresh)

    @router.post("/refresh-vae")
    async def refresh_vae() -> None:
        """Rescan the VAE folders."""
        await run_in_threadpool(ctx.models.refresh_vaes)

    @router.post("/unload-checkpoint")
    async def unload_checkpoint() -> None:
        """Move the active model off the GPU (between jobs)."""
        await wait_async(ctx.submit("unload-checkpoint", ctx.models.unload))

    @router.post("/reload-checkpoint")
    async def reload_checkpoint() -> None:
        """Put the active model back on the GPU, or load the selected checkpoint (between jobs)."""

        def reload() -> None:
            if ctx.models.reload() is None:
                wanted = ctx.options.get("sd_model_checkpoint") or None
                ctx.models.load(wanted, str(ctx.options.get("sd_vae", VAE_AUTOMATIC)))

        await wait_async(ctx.submit("reload-checkpoint", reload))

    return router
