"""What the extension host needs from the application: the registries extensions add to, and settings."""

from __future__ import annotations

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
    """

    samplers: SamplerRegistry
    schedules: ScheduleRegistry
    upscalers: UpscalerRegistry
    options: Any = None
    models: Any = None
    models_dir: Path | None = None

    @classmethod
    def from_context(cls, ctx: Any) -> HostServices:
        """Take the services from an :class:`~webui.context.AppContext` (read by attribute)."""
        return cls(ctx.samplers, ctx.schedules, ctx.upscalers, ctx.options, ctx.models, ctx.paths.models_dir)

    @classmethod
    def fresh(cls, options: Any = None, models_dir: Path | None = None) -> HostServices:
        """Services over new built-in registries (for tests and tools)."""
        samplers, schedules = create_registries()
        return cls(samplers, schedules, UpscalerRegistry.with_builtins(), options, None, models_dir)
