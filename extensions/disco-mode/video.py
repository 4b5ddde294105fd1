"""Animation frames to video: an H.264 mp4 (imageio + imageio-ffmpeg, which bundles ffmpeg) and a GIF.

H.264 in yuv420p needs even widths and heights: a frame with an odd size is padded by one row and/or
column, repeating its last row/column (the video is then one pixel wider/taller than the frames).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

import numpy as np
from PIL import Image

from webui.extensions.api import InvalidParameter

MP4_CRF = 17  # x264 quality (0 lossless .. 51 worst), as in Disco's notebook


def _check_inputs(frame_paths: Sequence[Path | str], fps: float) -> list[Path]:
    paths = [Path(p) for p in frame_paths]
    if not paths:
        raise InvalidParameter("frames", "there are no frames to write")
    if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not math.isfinite(fps) or fps <= 0:
        raise InvalidParameter("fps", f"must be a positive number, got {fps!r}")
    return paths


def _load_rgb(path: Path, size: tuple[int, int] | None) -> Image.Image:
    with Image.open(path) as opened:
        image = opened.convert("RGB")
    if size is not None and image.size != size:
        raise InvalidParameter("frames", f"{path.name} is {image.size}, the first frame is {size}")
    return image


def pad_to_even(frame: np.ndarray) -> np.ndarray:
    """Pad an H x W x C array to even H and W by repeating its last row/column."""
    h, w = frame.shape[:2]
    if h % 2 == 0 and w % 2 == 0:
        return frame
    return np.pad(frame, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")


def _imageio() -> ModuleType:
    try:
        import imageio.v2 as imageio
    except ImportError as exc:  # declared in the manifest; reported clearly if missing
        raise ImportError(
            "disco-mode videos need imageio and imageio-ffmpeg: pip install imageio imageio-ffmpeg"
        ) from exc
    return imageio


def write_mp4(frame_paths: Sequence[Path | str], path: Path | str, fps: float) -> Path:
    """Write the frames (same size, any PIL format) to an H.264 yuv420p mp4 at ``fps``; return its path."""
    paths = _check_inputs(frame_paths, fps)
    imageio = _imageio()
    out = Path(path)
    first = _load_rgb(paths[0], None)
    writer = imageio.get_writer(
        out,
        format="FFMPEG",
        mode="I",
        fps=float(fps),
        codec="libx264",
        pixelformat="yuv420p",
        quality=None,
        macro_block_size=1,
        output_params=["-crf", str(MP4_CRF)],
        ffmpeg_log_level="error",
    )
    try:
        for index, frame_path in enumerate(paths):
            image = first if index == 0 else _load_rgb(frame_path, first.size)
            writer.append_data(pad_to_even(np.asarray(image)))
    finally:
        writer.close()
    return out


def write_gif(frame_paths: Sequence[Path | str], path: Path | str, fps: float) -> Path:
    """Write the frames to a looping GIF at ``fps`` (delays rounded to GIF's 10 ms units); return its path.

    Pillow merges consecutive identical frames into one frame showing for their summed delay.
    """
    paths = _check_inputs(frame_paths, fps)
    out = Path(path)
    first = _load_rgb(paths[0], None)
    rest = [_load_rgb(p, first.size) for p in paths[1:]]
    delay_ms = max(2, round(100 / fps)) * 10
    first.save(out, format="GIF", save_all=True, append_images=rest, duration=delay_ms, loop=0)
    return out


def count_video_frames(path: Path | str) -> int:
    """The number of frames in a video file (decoded by ffmpeg through imageio) or a GIF."""
    source = Path(path)
    if source.suffix.lower() == ".gif":
        with Image.open(source) as gif:
            return int(gif.n_frames)
    reader = _imageio().get_reader(source, format="FFMPEG")
    try:
        return int(reader.count_frames())
    finally:
        reader.close()
