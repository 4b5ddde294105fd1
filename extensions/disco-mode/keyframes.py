"""Disco Diffusion's animation settings: keyframe strings, their in-betweens, and the settings record.

Keyframe strings use Disco's syntax, ``"0: (1.0), 10: (1.05)"``: a frame number, a colon and a value,
entries separated by commas (or whitespace). Parentheses around a value are optional. Values are plain
numbers only: Disco evaluates each value as a Python expression of ``t`` (its default translation is
``"0: (10*sin(2*3.14*t/10))"``); this port never evaluates text, so such strings are rejected with an
error that names the setting, and the default translations here are ``"0: (0)"``.

In-betweens are linear between keys and constant before the first key and after the last, as Disco's
``pandas`` interpolation with ``limit_direction="both"``. One deliberate difference: a key at or beyond
``max_frames`` still shapes the slope of the last frames (Disco clips it onto the last frame instead).
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from webui.extensions.api import InvalidParameter

ANIMATION_MODES = ("None", "2D")
RESERVED_MODES = ("3D", "Video Input")
KEYFRAME_FIELDS = ("angle", "zoom", "translation_x", "translation_y")
MAX_FRAMES_LIMIT = 100_000

_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
_ENTRY = re.compile(r"\s*(?P<frame>\d+)\s*:\s*(?P<value>\([^()]*\)|[^,()\s]+)\s*,?")
_LOOSE_KEY = re.compile(r"(?P<frame>[^:,()\s]+)\s*:")


def parse_keyframes(text: str, name: str) -> dict[int, float]:
    """Parse a keyframe string such as ``"0: (1.0), 10: (1.05)"`` into ``{frame: value}``.

    ``name`` is the setting's name, used in every error. Raises :class:`InvalidParameter` for an empty
    string, text that is not ``frame: value`` entries, a value that is not a finite plain number
    (expressions are not evaluated), or a frame listed twice.
    """
    if not isinstance(text, str):
        raise InvalidParameter(name, f"keyframes must be text like '0: (1.0), 10: (1.05)', got {text!r}")
    if not text.strip():
        raise InvalidParameter(name, "keyframes are empty; write at least one entry such as '0: (0)'")
    keys: dict[int, float] = {}
    pos = 0
    while pos < len(text):
        if not text[pos:].strip():
            break
        match = _ENTRY.match(text, pos)
        if match is None:
            rest = text[pos:].strip()
            key = _LOOSE_KEY.match(rest)
            if key is not None and not key["frame"].isdigit():
                raise InvalidParameter(
                    name, f"frame {key['frame']!r} is not a non-negative whole number (in {rest[:40]!r})"
                )
            raise InvalidParameter(
                name,
                f"cannot read keyframes at {rest[:40]!r}: expected 'frame: (number)' entries separated by "
                "commas; expressions such as sin(t) are not supported",
            )
        frame = int(match["frame"])
        raw = match["value"].strip()
        value_text = raw[1:-1].strip() if raw.startswith("(") else raw
        if not _NUMBER.fullmatch(value_text):
            raise InvalidParameter(
                name,
                f"value {value_text!r} at frame {frame} is not a plain number; expressions are not "
                "supported, write the number for each keyframe",
            )
        value = float(value_text)
        if not math.isfinite(value):
            raise InvalidParameter(name, f"value {value_text!r} at frame {frame} is not finite")
        if frame in keys:
            raise InvalidParameter(name, f"frame {frame} is listed twice")
        keys[frame] = value
        pos = match.end()
    return keys


def interpolate_keyframes(keys: Mapping[int, float], max_frames: int) -> np.ndarray:
    """Return the per-frame values (float64, length ``max_frames``) for ``keys``.

    Linear between keys, constant before the first key and after the last.
    """
    if not keys:
        raise InvalidParameter("keyframes", "need at least one keyframe")
    if not isinstance(max_frames, int) or isinstance(max_frames, bool) or max_frames < 1:
        raise InvalidParameter("max_frames", f"must be a positive integer, got {max_frames!r}")
    frames = sorted(keys)
    if frames[0] < 0:
        raise InvalidParameter("keyframes", f"frame numbers must be non-negative, got {frames[0]}")
    values = [float(keys[f]) for f in frames]
    return np.interp(np.arange(max_frames, dtype=np.float64), np.asarray(frames, np.float64), values)


def _parse_skip(value: Any) -> float:
    """``"60%"`` -> 0.6; a number in [0, 1) is taken as a fraction."""
    if isinstance(value, str):
        text = value.strip()
        if not text.endswith("%") or not _NUMBER.fullmatch(text[:-1].strip()):
            raise InvalidParameter("frames_skip_steps", f"must be a percentage such as '60%', got {value!r}")
        fraction = float(text[:-1]) / 100.0
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        fraction = float(value)
    else:
        raise InvalidParameter("frames_skip_steps", f"must be a percentage such as '60%', got {value!r}")
    if not 0.0 <= fraction < 1.0:
        raise InvalidParameter("frames_skip_steps", f"must be at least 0% and below 100%, got {value!r}")
    return fraction


def _as_int(value: Any, name: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value):
        raise InvalidParameter(name, f"must be a whole number, got {value!r}")
    number = int(value)
    if not low <= number <= high:
        raise InvalidParameter(name, f"must be between {low} and {high}, got {number}")
    return number


def _as_float(value: Any, name: str, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InvalidParameter(name, f"must be a finite number, got {value!r}")
    if not low <= value <= high:
        raise InvalidParameter(name, f"must be between {low:g} and {high:g}, got {value!r}")
    return float(value)


@dataclasses.dataclass(frozen=True)
class AnimationSettings:
    """Disco's animation settings (2D mode). Construction validates every field.

    ``frames_scale`` is the init-image loss scale for frames after the first; ``frames_skip_steps`` the
    share of steps skipped when re-diffusing a warped frame (``"60%"``). ``fps`` is the video rate.
    ``resume`` continues after the last complete frame already saved.
    """

    animation_mode: str = "None"
    max_frames: int = 10_000
    angle: str = "0: (0)"
    zoom: str = "0: (1.04)"
    translation_x: str = "0: (0)"
    translation_y: str = "0: (0)"
    frames_scale: float = 1500.0
    frames_skip_steps: str = "60%"
    fps: float = 12.0
    resume: bool = False

    def __post_init__(self) -> None:
        if self.animation_mode in RESERVED_MODES:
            raise InvalidParameter(
                "animation_mode", f"{self.animation_mode!r} is not supported yet; choose 'None' or '2D'"
            )
        if self.animation_mode not in ANIMATION_MODES:
            raise InvalidParameter(
                "animation_mode", f"must be one of {', '.join(ANIMATION_MODES)}, got {self.animation_mode!r}"
            )
        object.__setattr__(self, "max_frames", _as_int(self.max_frames, "max_frames", 1, MAX_FRAMES_LIMIT))
        for field in KEYFRAME_FIELDS:
            keys = parse_keyframes(getattr(self, field), field)
            if field == "zoom" and min(keys.values()) <= 0:
                raise InvalidParameter("zoom", "every zoom value must be greater than 0")
        object.__setattr__(self, "frames_scale", _as_float(self.frames_scale, "frames_scale", 0.0, 1e9))
        fraction = _parse_skip(self.frames_skip_steps)
        object.__setattr__(self, "frames_skip_steps", f"{round(fraction * 100, 6):g}%")
        object.__setattr__(self, "fps", _as_float(self.fps, "fps", 0.1, 120.0))
        if not isinstance(self.resume, bool):
            raise InvalidParameter("resume", f"must be true or false, got {self.resume!r}")

    @property
    def skip_fraction(self) -> float:
        """``frames_skip_steps`` as a fraction (``"60%"`` -> 0.6)."""
        return _parse_skip(self.frames_skip_steps)

    def keyframes(self) -> dict[str, dict[int, float]]:
        """The parsed keyframes of every motion setting, by setting name."""
        return {field: parse_keyframes(getattr(self, field), field) for field in KEYFRAME_FIELDS}

    def motion_series(self) -> dict[str, np.ndarray]:
        """Per-frame values (length ``max_frames``) of every motion setting, by setting name."""
        return {
            field: interpolate_keyframes(keys, self.max_frames) for field, keys in self.keyframes().items()
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AnimationSettings:
        """Build from a mapping (UI or API values); unknown keys and bad values raise InvalidParameter."""
        if not isinstance(data, Mapping):
            raise InvalidParameter("animation", f"expected a mapping of settings, got {type(data).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise InvalidParameter(
                unknown[0], f"unknown animation setting; valid: {', '.join(sorted(names))}"
            )
        return cls(**dict(data))

    def to_dict(self) -> dict[str, Any]:
        """Plain values (JSON-friendly) that :meth:`from_dict` reads back to an equal record."""
        return dataclasses.asdict(self)
