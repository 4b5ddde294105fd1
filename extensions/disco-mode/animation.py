"""The animation frame loop, independent of how one frame is rendered.

Frame 0 is rendered from scratch. Every later frame warps the previous SAVED frame (the 8-bit PNG, as
Disco reads back its ``prevFrame.png``) with that frame's motion values, and asks the renderer to
re-diffuse it with ``frames_skip_steps`` skipped and ``frames_scale`` as the init-image loss scale.
Frame ``n`` uses seed ``base_seed + n`` and the prompts of the largest prompt key ``<= n`` (before the
first key, the first key's prompts, as Disco's back-fill).

Files, in ``out_dir``: frames ``<batch_name>_<frame:04d>.png`` (wider numbers past 9999), then
``<batch_name>.mp4`` and ``<batch_name>.gif`` once every frame exists. Each PNG is written to a
temporary name and renamed, so a frame file is either complete or absent after an interrupt.

Resume (``settings.resume``): the longest run of frames 0, 1, 2 ... that open as images is kept and the
loop continues after it; a damaged frame and everything after it is rendered again. Without resume, a
folder that already holds frames of the batch is an error (nothing is overwritten silently).
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, PngImagePlugin

from webui.extensions.api import InvalidParameter

from .keyframes import AnimationSettings
from .video import write_gif, write_mp4
from .warp import FrameWarp, Warp2D, check_image, from_pil, to_pil

_BATCH_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9 _.-]{0,99}")


@dataclasses.dataclass(frozen=True)
class FrameRequest:
    """What the renderer needs for one frame.

    ``init_image`` is ``None`` for frame 0 (the renderer then uses the run's own init settings, and
    ``skip_fraction`` and ``init_scale`` are 0); for later frames it is the warped previous frame,
    ``skip_fraction`` is ``frames_skip_steps`` and ``init_scale`` is ``frames_scale``. ``motion`` holds
    the frame's motion values (``angle``, ``zoom``, ``translation_x``, ``translation_y``).
    """

    frame: int
    seed: int
    prompts: tuple[str, ...]
    init_image: Image.Image | None
    skip_fraction: float
    init_scale: float
    motion: Mapping[str, float] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class AnimationResult:
    """The saved frames, the two videos, and the first frame rendered by this run if it resumed."""

    frame_paths: tuple[Path, ...]
    mp4_path: Path
    gif_path: Path
    resumed_from: int | None


def frame_path(out_dir: Path, batch_name: str, frame: int) -> Path:
    """Where frame ``frame`` of ``batch_name`` is saved."""
    return Path(out_dir) / f"{batch_name}_{frame:04d}.png"


def prompts_for_frame(text_prompts: Mapping[int, Sequence[str]], frame: int) -> tuple[str, ...]:
    """The prompts of the largest key ``<= frame`` (the first key's prompts before it)."""
    earlier = [key for key in text_prompts if key <= frame]
    key = max(earlier) if earlier else min(text_prompts)
    return tuple(text_prompts[key])


def _check_prompts(text_prompts: Mapping[int, Sequence[str]]) -> None:
    if not isinstance(text_prompts, Mapping) or not text_prompts:
        raise InvalidParameter(
            "text_prompts", "need a mapping {frame: [prompt, ...]} with at least one entry"
        )
    for key, prompts in text_prompts.items():
        if isinstance(key, bool) or not isinstance(key, int) or key < 0:
            raise InvalidParameter("text_prompts", f"keys must be non-negative frame numbers, got {key!r}")
        if isinstance(prompts, str) or not all(isinstance(p, str) for p in prompts):
            raise InvalidParameter(
                "text_prompts", f"frame {key}: expected a list of prompt strings, got {prompts!r}"
            )


def _is_complete(path: Path) -> bool:
    if not path.is_file():
        return False
    try:
        with Image.open(path) as image:
            image.load()
    except (OSError, SyntaxError, ValueError):
        return False
    return True


def _existing_frames(out_dir: Path, batch_name: str, max_frames: int) -> int:
    """How many frames 0, 1, ... in a row are complete."""
    count = 0
    while count < max_frames and _is_complete(frame_path(out_dir, batch_name, count)):
        count += 1
    return count


def _save_frame(image: Image.Image, path: Path) -> None:
    info = PngImagePlugin.PngInfo()
    parameters = image.info.get("parameters")
    if isinstance(parameters, str):
        info.add_text("parameters", parameters)
    temporary = path.with_name(path.name + ".tmp")
    image.convert("RGB").save(temporary, format="PNG", pnginfo=info)
    os.replace(temporary, path)


def _load_frame(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return from_pil(image)


def run_animation(
    settings: AnimationSettings,
    render_frame: Callable[[FrameRequest], Image.Image],
    out_dir: Path,
    base_seed: int,
    text_prompts: Mapping[int, Sequence[str]],
    warp: FrameWarp | None = None,
    callback: Callable[[int, int], None] | None = None,
    *,
    batch_name: str = "frame",
) -> AnimationResult:
    """Render ``settings.max_frames`` frames into ``out_dir``, then write the mp4 and the GIF.

    ``warp`` defaults to :class:`Warp2D`. ``callback(frame, max_frames)`` runs before each frame is
    rendered and may raise (e.g. ``JobCancelled``) to stop: the exception propagates, frames already
    saved stay, and no video is written.
    """
    if not isinstance(settings, AnimationSettings):
        raise InvalidParameter("animation", f"expected AnimationSettings, got {type(settings).__name__}")
    if settings.animation_mode != "2D":
        raise InvalidParameter("animation_mode", f"run_animation needs '2D', got {settings.animation_mode!r}")
    if isinstance(base_seed, bool) or not isinstance(base_seed, int) or base_seed < 0:
        raise InvalidParameter("seed", f"must be a non-negative integer, got {base_seed!r}")
    if not isinstance(batch_name, str) or not _BATCH_NAME.fullmatch(batch_name):
        raise InvalidParameter(
            "batch_name", f"use letters, digits, spaces, '_', '-' or '.', got {batch_name!r}"
        )
    _check_prompts(text_prompts)
    warp = Warp2D() if warp is None else warp
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    max_frames = settings.max_frames

    done = _existing_frames(out_dir, batch_name, max_frames)
    if done and not settings.resume:
        raise InvalidParameter(
            "resume",
            f"{out_dir} already holds frames of batch {batch_name!r}; turn resume on or use another folder",
        )
    resumed_from = done if done else None

    series = settings.motion_series()
    skip_fraction = settings.skip_fraction
    for frame in range(done, max_frames):
        if callback is not None:
            callback(frame, max_frames)
        motion = {name: float(values[frame]) for name, values in series.items()}
        if frame == 0:
            init_image, skip, scale = None, 0.0, 0.0
        else:
            previous = _load_frame(frame_path(out_dir, batch_name, frame - 1))
            warped = check_image(warp(previous, frame, motion), "warp output")
            if warped.shape != previous.shape:
                raise InvalidParameter("warp output", f"shape {warped.shape} differs from {previous.shape}")
            init_image, skip, scale = to_pil(warped), skip_fraction, settings.frames_scale
        request = FrameRequest(
            frame=frame,
            seed=base_seed + frame,
            prompts=prompts_for_frame(text_prompts, frame),
            init_image=init_image,
            skip_fraction=skip,
            init_scale=scale,
            motion=motion,
        )
        image = render_frame(request)
        if not isinstance(image, Image.Image):
            raise InvalidParameter("render_frame", f"must return a PIL image, got {type(image).__name__}")
        _save_frame(image, frame_path(out_dir, batch_name, frame))

    paths = tuple(frame_path(out_dir, batch_name, f) for f in range(max_frames))
    mp4_path = write_mp4(paths, out_dir / f"{batch_name}.mp4", settings.fps)
    gif_path = write_gif(paths, out_dir / f"{batch_name}.gif", settings.fps)
    return AnimationResult(frame_paths=paths, mp4_path=mp4_path, gif_path=gif_path, resumed_from=resumed_from)
