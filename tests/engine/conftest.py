"""Fixtures of the engine's end-to-end tests: one application context over tiny checkpoints.

The checkpoints are written once per session into ``<tmp>/models/Stable-diffusion`` and the context is
built the way ``launch.py`` builds it (flags -> paths -> model manager -> registries -> job queue). Tests
that change settings or need a clean outputs folder get their own :class:`EngineServices` from
:func:`engine_services`, so the shared context is never mutated.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest
import torch

from tests.factories import write_tiny_checkpoint
from webui.config.flags import parse_flags
from webui.config.options import Options
from webui.context import AppContext, build_context
from webui.engine.outputs import OutputSaver
from webui.engine.processing import EngineServices

# checkpoint stem -> (family, factory keyword arguments)
TINY_MODELS: Mapping[str, tuple[str, Mapping[str, Any]]] = MappingProxyType(
    {
        "tiny-sd1": ("sd1", MappingProxyType({})),
        "tiny-sd2-v": ("sd2", MappingProxyType({"prediction_type": "v"})),
        "tiny-sdxl": ("sdxl", MappingProxyType({})),
        "tiny-sdxl-refiner": ("sdxl_refiner", MappingProxyType({})),
        "tiny-sd1-inpainting": ("sd1", MappingProxyType({"inpaint": True})),
    }
)
SD1 = "tiny-sd1"


@pytest.fixture(scope="session")
def app_context(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AppContext]:
    """An :class:`AppContext` over the tiny checkpoints of :data:`TINY_MODELS` (worker not started)."""
    # Tiny models are dominated by per-op overhead, where extra threads only contend (badly so on a
    # busy 2-core runner); one thread is both faster and reproducible.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("engine-data")
    checkpoints = root / "models" / "Stable-diffusion"
    checkpoints.mkdir(parents=True)
    for stem, (family, kwargs) in TINY_MODELS.items():
        write_tiny_checkpoint(checkpoints / f"{stem}.safetensors", family, **kwargs)
    # keep every tiny model in RAM so that switching between them costs nothing; preview every step
    settings = {"sd_checkpoint_cache": len(TINY_MODELS), "show_progress_every_n_steps": 1}
    options = Options(root / "config.json", settings)
    ctx = build_context(parse_flags(["--data-dir", str(root)]), root, options=options)
    ctx.models.refresh()
    try:
        yield ctx
    finally:
        ctx.close()
        torch.set_num_threads(threads)


@pytest.fixture()
def sd1_context(app_context: AppContext) -> AppContext:
    """The shared context with the tiny SD1 model active."""
    app_context.models.load(SD1)
    return app_context


@pytest.fixture()
def queue_context(sd1_context: AppContext) -> Iterator[AppContext]:
    """The shared context on tiny SD1 with its GPU worker running for this test only (other tests check
    that no worker thread is left behind)."""
    sd1_context.queue.start()
    try:
        yield sd1_context
    finally:
        sd1_context.queue.stop(timeout=30)


def engine_services(ctx: AppContext, outputs: Path | None = None, **option_changes: Any) -> EngineServices:
    """Engine services over ``ctx``'s models with private options and, optionally, an outputs folder.

    Without ``outputs`` nothing is saved; ``option_changes`` override settings for this services object
    only.
    """
    options = Options(None, {**ctx.options.as_dict(), **option_changes})
    saver = OutputSaver(outputs, options.as_dict()) if outputs is not None else None
    return EngineServices(ctx.models, ctx.samplers, options, saver, ctx.upscalers, ctx.version)
