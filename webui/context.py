"""The application context: built once at start-up, handed explicitly to the UI, the API and extensions.

Nothing here runs at import time. :func:`build_context` wires settings, paths, the model manager, the
sampler/schedule/upscaler registries, the output saver and the job queue with its one GPU worker.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from webui.config.flags import Flags, resolve_path
from webui.config.options import Options
from webui.config.paths import Paths
from webui.engine.errors import InvalidParameter
from webui.engine.esrgan import ModelUpscalers, TileSettings, UpscaleModelCache
from webui.engine.images import UpscalerRegistry
from webui.engine.jobs import Job, JobContext, JobQueue
from webui.engine.outputs import OutputSaver
from webui.engine.params import GenerationParams
from webui.engine.processing import EngineServices, Processed, generate
from webui.engine.samplers.registry import SamplerRegistry, ScheduleRegistry, create_registries
from webui.extensions.host import ExtensionHost
from webui.models.devices import DevicePolicy, choose_policy
from webui.models.manager import CacheLimits, ModelManager

log = logging.getLogger(__name__)
VERSION = "v0.1.0"


@dataclass
class AppContext:
    """Everything the running application owns. One instance per process (tests build their own)."""

    flags: Flags
    paths: Paths
    options: Options
    policy: DevicePolicy
    models: ModelManager
    samplers: SamplerRegistry
    schedules: ScheduleRegistry
    upscalers: UpscalerRegistry
    queue: JobQueue
    version: str = VERSION
    extensions: ExtensionHost | None = None
    model_upscalers: ModelUpscalers | None = None
    started: bool = field(default=False, init=False)

    def engine_services(self, folder: str | None = None) -> EngineServices:
        """The engine's view of the context; output settings are read fresh for every job. ``folder``
        (relative to the outputs folder) takes every image of the job instead of the per-kind folders."""
        outputs = OutputSaver(self.paths.outputs_dir, self.options.as_dict(), folder=folder)
        host = self.extensions
        return EngineServices(
            self.models, self.samplers, self.options, outputs, self.upscalers, self.version,
            hooks=host.hooks if host else None, wrap_denoiser=host.wrap_denoiser if host else None,
        )  # fmt: skip

    def submit_generation(self, params: GenerationParams) -> Job:
        """Queue a txt2img/img2img job; its result is a :class:`Processed`."""

        self.check_extension_args(params)

        def run(job_ctx: object) -> Processed:
            return generate(self.engine_services(), params, job_ctx)  # type: ignore[arg-type]

        return self.queue.submit(Job(params.mode, run, payload=params))

    def check_extension_args(self, params: GenerationParams, trusted: str | None = None) -> None:
        """Check ``params.extension_args`` against the extensions' controls, filling in their defaults."""
        if self.extensions is not None:
            params.extension_args = self.extensions.extension_args(params.extension_args, trusted)
        elif params.extension_args:
            raise InvalidParameter("extension_args", "extensions are disabled in this session")

    def submit_job(self, kind: str, fn: Callable[[JobContext], Any]) -> Job:
        """Queue ``fn(job_context)`` on the GPU worker (extension jobs: progress, previews, interrupt)."""
        return self.queue.submit(Job(kind, fn))

    def generate_in_job(
        self,
        params: GenerationParams,
        job: JobContext | None,
        folder: str | None = None,
        owner: str | None = None,
    ) -> Processed:
        """Run a generation right now, from inside a job that is already on the worker (``owner``: the
        extension running it, whose own ``extension_args`` entry it checks itself)."""
        self.check_extension_args(params, owner)
        return generate(self.engine_services(folder), params, job)

    def submit(self, kind: str, fn: object) -> Job:
        """Queue any GPU work (model switches, extension jobs) behind the jobs already waiting."""
        return self.queue.submit(Job(kind, lambda _ctx: fn()))  # type: ignore[operator]

    def start(self) -> None:
        """Start the GPU worker."""
        if not self.started:
            self.queue.start()
            self.started = True
            if self.extensions is not None:
                self.extensions.fire("app_started", context=self)

    def close(self) -> None:
        """Stop the worker and free models."""
        if self.started:
            self.queue.stop(timeout=10)
            self.started = False
        if self.extensions is not None:
            self.extensions.unload_all()
        if self.model_upscalers is not None:
            self.model_upscalers.cache.clear()
        self.models.close()

    def refresh_upscalers(self) -> list[str]:
        """Rescan ``models/ESRGAN`` (and the other upscaler folders); returns the model upscalers' names."""
        if self.model_upscalers is None:
            return []
        return self.model_upscalers.refresh(self.upscalers)


def build_context(
    flags: Flags, root: Path, *, options: Options | None = None, load_extensions: bool = True
) -> AppContext:
    """Compose the application from parsed flags; ``root`` is the repository (default data dir)."""
    paths = Paths.from_flags(flags, root).ensure()
    opts = options or Options(paths.config_file)
    policy = choose_policy(flags)
    extra = tuple(p for p in (resolve_path(flags.ckpt, paths.data_dir),) if p is not None and p.exists())
    vae_path = resolve_path(flags.vae_path, paths.data_dir)
    limits = CacheLimits(
        on_device=int(opts.get("sd_checkpoints_limit", 1)), in_ram=int(opts.get("sd_checkpoint_cache", 0))
    )
    models = ModelManager(paths, policy, extra_checkpoints=extra, limits=limits, vae_path=vae_path)
    samplers, schedules = create_registries()
    queue = JobQueue(
        preview_every_n_steps=lambda: (
            int(opts.get("show_progress_every_n_steps", 10)) if opts.get("live_previews_enable", True) else 0
        )
    )
    ctx = AppContext(
        flags, paths, opts, policy, models, samplers, schedules, UpscalerRegistry.with_builtins(), queue
    )
    ctx.model_upscalers = ModelUpscalers(
        paths.models_dir,
        UpscaleModelCache(policy.device, policy.dtype),
        lambda: TileSettings.from_options(opts),
    )
    ctx.refresh_upscalers()
    if load_extensions:
        host = ExtensionHost.from_context(ctx)
        ctx.extensions = host
        models.on_loaded = lambda model: host.fire("model_loaded", model=model)
        host.load_all()
    return ctx
