"""Disco Diffusion's prompt syntax: ``text:weight`` lines, keyed by animation frame.

A line's weight is the number after its LAST colon (``"a cat:-0.5"``); a colon not followed by a number is
part of the text (``"style: ukiyo-e"`` has weight 1). Negative weights push the image away from a prompt.
Prompts change over an animation: ``{0: [...], 100: [...]}`` uses the entry with the largest frame key that
is not after the current frame.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Iterable, Mapping, Sequence

from webui.extensions.api import InvalidParameter

# Weights whose sum is closer to zero than this cannot be normalised (Disco's threshold).
MIN_WEIGHT_SUM = 1e-3

_WEIGHTED = re.compile(r"(.*):\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*", re.DOTALL | re.ASCII)
_FRAME_KEY = re.compile(r"\s*(\d+)\s*:(.*)", re.DOTALL | re.ASCII)


@dataclasses.dataclass(frozen=True)
class WeightedPrompt:
    """One prompt and its weight (negative: push away)."""

    text: str
    weight: float = 1.0


def parse_prompt(line: str, field: str = "text_prompts") -> WeightedPrompt:
    """Split ``"text:weight"`` at the last colon followed by a number; otherwise the weight is 1."""
    if not isinstance(line, str):
        raise InvalidParameter(field, f"a prompt must be a string, got {type(line).__name__}")
    match = _WEIGHTED.fullmatch(line)
    text, weight = (match.group(1), float(match.group(2))) if match else (line, 1.0)
    text = text.strip()
    if not text:
        raise InvalidParameter(field, f"prompt {line!r} has no text")
    if not math.isfinite(weight):
        raise InvalidParameter(field, f"prompt {line!r} has a weight that is not a finite number")
    return WeightedPrompt(text, weight)


def check_weights(weights: Iterable[float], field: str = "text_prompts") -> float:
    """The sum of ``weights``; raises when there are none or they sum to (about) zero."""
    weights = list(weights)
    if not weights:
        raise InvalidParameter(field, "no prompts given")
    total = math.fsum(weights)
    if abs(total) < MIN_WEIGHT_SUM:
        raise InvalidParameter(
            field, f"the prompt weights sum to {total:g}; they must not sum to zero (they are divided by it)"
        )
    return total


def parse_prompts(lines: Sequence[str], field: str = "text_prompts") -> list[WeightedPrompt]:
    """Parse every line with :func:`parse_prompt`; no prompts or weights summing to zero raise."""
    if isinstance(lines, str):
        raise InvalidParameter(field, "expected a list of prompt lines, got a single string")
    prompts = [parse_prompt(line, field) for line in lines]
    check_weights((prompt.weight for prompt in prompts), field)
    return prompts


def prompts_for_frame(
    text_prompts: Mapping[int, Sequence[str]], frame: int, field: str = "text_prompts"
) -> list[str]:
    """The prompt lines in force at ``frame``: the entry with the largest key not after ``frame``."""
    keys = [key for key in text_prompts if key <= frame]
    if not keys:
        first = min(text_prompts) if text_prompts else None
        where = f"the first entry is at frame {first}" if first is not None else "there are none"
        raise InvalidParameter(field, f"no prompts for frame {frame}: {where}")
    return list(text_prompts[max(keys)])


def parse_frame_prompts(text: str, field: str = "text_prompts") -> dict[int, list[str]]:
    """Turn a textbox into ``{frame: [lines]}``.

    A line that starts with a whole number and a colon (``"100: a forest"``) belongs to that frame; any
    other non-blank line belongs to frame 0. Repeated keys add lines to the same frame. Each line keeps its
    own ``:weight`` suffix (``"0: a castle:2"`` -> frame 0, ``"a castle:2"``).
    """
    if not isinstance(text, str):
        raise InvalidParameter(field, f"expected text, got {type(text).__name__}")
    frames: dict[int, list[str]] = {}
    for raw in text.splitlines():
        if not raw.strip():
            continue
        match = _FRAME_KEY.fullmatch(raw)
        frame, line = (int(match.group(1)), match.group(2).strip()) if match else (0, raw.strip())
        if not line:
            raise InvalidParameter(field, f"line {raw.strip()!r} names frame {frame} but has no prompt")
        parse_prompt(line, field)
        frames.setdefault(frame, []).append(line)
    if not frames:
        raise InvalidParameter(field, "no prompts given")
    return dict(sorted(frames.items()))
