"""What the extension host needs from the application: the registries extensions add to, and settings."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from webui.engine.images import UpscalerRegistry
from webui.engine.samplers.registry import SamplerRegistry, ScheduleRegistry, create_registries


@dataclass(frozen=True)
class HostServices:
    """The parts of the application context the host hands to extensions.

    Attributes:
        samplers / schedules / upscalers: the registries (entries recorded with the extension id as owner).
        options: the settings store (``get``/``update``); None keeps extension settings in memory.
        models: the model manager (optional; not needed by the facade's file reader).
        models_dir: where relative paths given to ``api.load_model_file`` are resolved.
        outputs_dir: the outputs folder (``api.output_folder``).
        submit_job: ``submit_job(kind, fn(job_context)) -> Job`` queues work on the GPU worker.
        generate_in_job: ``generate_in_job(params, job_context, folder) -> Processed`` runs a generation on
            the worker from inside a running job.
    """

    samplers: SamplerRegistry
    schedules: ScheduleRegistry
    upscalers: UpscalerRegistry
    options: Any = None
    models: Any = None
    models_dir: Path | None = None
    outputs_dir: Path | None = None
    submit_job: Callable[[str, Callable[[Any], Any]], Any] | None = None
    generate_in_job: Callable[[Any, Any, str | None], Any] | None = None

    @classmethod
    def from_context(cls, ctx: Any) -> HostServices:
        """Take the services from an :class:`~webui.context.AppContext` (read by attribute)."""
        return cls(
            ctx.samplers, ctx.schedules, ctx.upscalers, ctx.options, ctx.models, ctx.paths.models_dir,
            ctx.paths.outputs_dir, ctx.submit_job, ctx.generate_in_job,
        )  # fmt: skip

    @classmethod
    def fresh(cls, options: Any = None, models_dir: Path | None = None) -> HostServices:
        """Services over new built-in registries (for tests and tools)."""
        samplers, schedules = create_registries()
        return cls(samplers, schedules, UpscalerRegistry.with_builtins(), options, None, models_dir)
