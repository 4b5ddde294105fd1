"""Progress of the running job, interrupt / skip, and the job queue (listing and cancelling)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException
from starlette.concurrency import run_in_threadpool

from webui.api.errors import ApiRoute
from webui.api.schemas import CancelResponse, ProgressResponse, QueueResponse
from webui.context import AppContext
from webui.engine.images import encode_png_base64
from webui.engine.jobs import progress_view


def build_progress_router(ctx: AppContext) -> APIRouter:
    """Routes that read or steer the job queue; none of them waits for the worker."""
    router = APIRouter(route_class=ApiRoute, tags=["progress and queue"])

    @router.get("/progress", response_model=ProgressResponse)
    async def progress(skip_current_image: bool = False) -> dict[str, Any]:
        """Progress of the running job, with its live preview unless skip_current_image."""
        job = ctx.queue.current()
        view = progress_view(ctx.queue)
        if job is not None and not skip_current_image:
            preview = job.progress.preview
            if preview is not None:
                view["current_image"] = await run_in_threadpool(encode_png_base64, preview)
        return view

    @router.post("/interrupt")
    async def interrupt() -> dict[str, Any]:
        """Stop the running job at its next step; finished images are kept and returned."""
        ctx.queue.interrupt()
        return {}

    @router.post("/skip")
    async def skip() -> dict[str, Any]:
        """Drop the image being made and go on with the next one."""
        ctx.queue.skip()
        return {}

    @router.get("/queue", response_model=QueueResponse)
    async def queue() -> dict[str, Any]:
        """The running job (position 0) and the waiting ones in order, with rough ETAs."""
        rows = ctx.queue.snapshot()
        running = sum(1 for row in rows if row["position"] == 0)
        return {"running": running, "waiting": len(rows) - running, "jobs": rows}

    @router.delete("/queue/{job_id}", response_model=CancelResponse)
    async def cancel(job_id: str) -> dict[str, Any]:
        """Cancel a waiting job (its request answers 409), or interrupt the running one."""
        job = ctx.queue.get(job_id)
        if job is None:
            waiting = ", ".join(row["id"] for row in ctx.queue.snapshot()) or "none"
            raise HTTPException(404, f"no job with id {job_id!r}; running and waiting: {waiting}")
        if job.status.finished:
            raise HTTPException(409, f"job {job_id!r} already finished ({job.status.value})")
        return {"id": job_id, "status": ctx.queue.cancel(job_id).value}

    return router
