"""Read-only listings: samplers, schedulers, upscalers, models, VAEs, styles, memory, scripts, ..."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool

from webui.api.errors import ApiRoute
from webui.api.schemas import (
    EmbeddingsResponse,
    LatentUpscalerModeItem,
    MemoryResponse,
    PromptStyleItem,
    SamplerItem,
    SchedulerItem,
    ScriptsList,
    SDModelItem,
    SDVaeItem,
    UpscalerItem,
)
from webui.context import AppContext
from webui.engine.images import LATENT_UPSCALE_MODES
from webui.engine.styles import StyleDatabase
from webui.models.devices import memory_report


def build_catalog_router(ctx: AppContext, styles: StyleDatabase) -> APIRouter:
    """Routes that list what the installation has."""
    router = APIRouter(route_class=ApiRoute, tags=["catalogue"])

    @router.get("/samplers", response_model=list[SamplerItem])
    async def samplers() -> list[dict[str, Any]]:
        """Samplers with their aliases and options."""
        return [
            {"name": s.label, "aliases": list(s.aliases), "options": s.api_options()}
            for s in ctx.samplers.items()
        ]

    @router.get("/schedulers", response_model=list[SchedulerItem])
    async def schedulers() -> list[dict[str, Any]]:
        """Schedule types."""
        return [
            {
                "name": s.name,
                "label": s.label,
                "aliases": list(s.aliases) or None,
                "default_rho": s.default_rho,
                "need_inner_model": s.needs_model,
            }
            for s in ctx.schedules.items()
        ]

    @router.get("/upscalers", response_model=list[UpscalerItem])
    async def upscalers() -> list[dict[str, Any]]:
        """Image upscalers."""
        items = []
        for name in ctx.upscalers.names():
            upscaler = ctx.upscalers.get(name)
            path = getattr(upscaler, "path", None)  # model upscalers (ESRGAN ...) name their file
            items.append({"name": name, "model_name": getattr(upscaler, "model_name", None),
                          "model_path": str(path) if path is not None else None})  # fmt: skip
        return items

    @router.get("/latent-upscale-modes", response_model=list[LatentUpscalerModeItem])
    async def latent_upscale_modes() -> list[dict[str, Any]]:
        """Latent upscale modes of the hires. fix."""
        return [{"name": name} for name in LATENT_UPSCALE_MODES]

    @router.get("/sd-models", response_model=list[SDModelItem])
    async def sd_models() -> list[dict[str, Any]]:
        """Checkpoints found in the model folders."""
        checkpoints = ctx.models.checkpoints() or await run_in_threadpool(ctx.models.refresh)
        return [
            {
                "title": c.title,
                "model_name": c.model_name,
                "hash": c.shorthash,
                "sha256": c.sha256,
                "filename": str(c.path),
                "config": None,
            }
            for c in checkpoints
        ]

    @router.get("/sd-vae", response_model=list[SDVaeItem])
    async def sd_vae() -> list[dict[str, Any]]:
        """VAE files."""
        return [{"model_name": v.name, "filename": str(v.path)} for v in ctx.models.vaes()]

    @router.get("/prompt-styles", response_model=list[PromptStyleItem])
    async def prompt_styles() -> list[dict[str, Any]]:
        """Prompt styles from styles.csv."""
        await run_in_threadpool(styles.reload)
        return [
            {"name": s.name, "prompt": s.prompt, "negative_prompt": s.negative_prompt}
            for s in styles.styles.values()
        ]

    @router.get("/memory", response_model=MemoryResponse)
    async def memory() -> dict[str, Any]:
        """RAM and GPU memory use."""
        return await run_in_threadpool(memory_report, ctx.policy.device)

    @router.get("/scripts", response_model=ScriptsList)
    async def scripts() -> dict[str, Any]:
        """Script titles per tab (scripts are not supported yet)."""
        return {"txt2img": [], "img2img": []}

    @router.get("/script-info")
    async def script_info() -> list[dict[str, Any]]:
        """Scripts with their arguments (none yet)."""
        return []

    @router.get("/extensions")
    async def extensions() -> list[dict[str, Any]]:
        """Installed extensions with A1111's keys (plus ``id``, ``status`` and ``error``)."""
        host = ctx.extensions
        if host is None:
            return []
        return [
            {
                "name": e.folder or e.id,
                "remote": e.remote_url,
                "branch": e.branch,
                "commit_hash": e.commit,
                "commit_date": e.commit_date,
                "version": e.version,
                "enabled": e.enabled,
                "id": e.id,
                "status": e.status,
                "error": e.error,
            }
            for e in host.list()
        ]

    @router.get("/embeddings", response_model=EmbeddingsResponse)
    async def embeddings() -> dict[str, Any]:
        """Textual-inversion embeddings (none yet)."""
        return {"loaded": {}, "skipped": {}}

    @router.get("/loras")
    async def loras() -> list[dict[str, Any]]:
        """LoRA networks (none yet)."""
        return []

    return router
