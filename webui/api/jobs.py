"""Queueing API work on the application's one job queue.

A plain generation goes through :meth:`AppContext.submit_generation`. A request with
``override_settings`` or ``force_task_id`` gets its own job whose settings are an overlay of the shared
ones, so the overrides never leak into other jobs; a checkpoint or VAE override switches the model inside
the job (between jobs, as every switch) and switches back afterwards when
``override_settings_restore_afterwards`` is set, as A1111 does.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

from webui.config.options import Options
from webui.context import AppContext
from webui.engine.jobs import Job, JobContext
from webui.engine.outputs import OutputSaver
from webui.engine.params import GenerationParams
from webui.engine.processing import Processed, generate
from webui.models.manager import VAE_AUTOMATIC, VAE_NONE


def _current_model_key(ctx: AppContext) -> tuple[str, str] | None:
    model = ctx.models.current
    if model is None:
        return None
    return model.checkpoint.name, (model.vae_info.name if model.vae_info else VAE_NONE)


def switch_model(ctx: AppContext, checkpoint: str | None, vae: str | None) -> str:
    """Load ``checkpoint`` (default: the current one) with ``vae`` and record both in the settings.

    Runs on the worker. Returns the loaded checkpoint's title.
    """
    if checkpoint is None and ctx.models.current is not None:
        checkpoint = ctx.models.current.checkpoint.name
    vae = vae if vae is not None else str(ctx.options.get("sd_vae", VAE_AUTOMATIC))
    model = ctx.models.load(checkpoint, vae)
    ctx.options.update({"sd_model_checkpoint": model.checkpoint.title, "sd_vae": vae})
    return model.checkpoint.title


def submit_model_switch(ctx: AppContext, checkpoint: str | None, vae: str | None) -> Job[str]:
    """Queue a model switch behind the jobs already waiting."""
    return ctx.submit("model-switch", lambda: switch_model(ctx, checkpoint, vae))  # type: ignore[return-value]


def _run_with_overrides(
    ctx: AppContext, params: GenerationParams, overrides: Mapping[str, Any], restore: bool
) -> Callable[[JobContext], Processed]:
    def run(job: JobContext) -> Processed:
        base = ctx.options.as_dict()
        merged = {**base, **overrides}
        services = dataclasses.replace(
            ctx.engine_services(),
            options=Options(None, merged),
            outputs=OutputSaver(ctx.paths.outputs_dir, merged),
        )
        previous = _current_model_key(ctx)
        switches = "sd_model_checkpoint" in overrides or "sd_vae" in overrides
        if switches:
            checkpoint = overrides.get("sd_model_checkpoint") or (previous[0] if previous else None)
            ctx.models.load(checkpoint, str(merged.get("sd_vae", VAE_AUTOMATIC)))
        try:
            return generate(services, params, job)
        finally:
            if switches and restore and previous is not None:
                ctx.models.load(*previous)
            if not restore:
                ctx.options.update(dict(overrides), save=False)
                if switches and ctx.models.current is not None:
                    ctx.options.update(
                        {"sd_model_checkpoint": ctx.models.current.checkpoint.title}, save=False
                    )

    return run


def submit_generation(
    ctx: AppContext,
    params: GenerationParams,
    *,
    overrides: Mapping[str, Any] | None = None,
    restore_afterwards: bool = True,
    job_id: str | None = None,
) -> Job[Processed]:
    """Queue a txt2img / img2img job, with settings overrides for this job only."""
    if not overrides and job_id is None:
        return ctx.submit_generation(params)
    ctx.check_extension_args(params)
    run = _run_with_overrides(ctx, params, overrides or {}, restore_afterwards)
    return ctx.queue.submit(Job(params.mode, run, payload=params, job_id=job_id))
