"""Emphasis modes: how the ``(word:1.2)`` multipliers act on the text encoder's output.

- ``"Original"``: multiply each token's vector by its multiplier, then rescale so that the mean of the
  whole output is unchanged (A1111's default).
- ``"No norm"``: multiply, no rescaling (often better for SDXL).
- ``"Ignore"``: brackets are parsed (and removed from the text) but the multipliers are not applied.
- ``"None"``: brackets are not parsed at all; the prompt is encoded literally with weight 1.
"""

from __future__ import annotations

import torch

from webui.engine.errors import InvalidParameter

EMPHASIS_MODES: tuple[str, ...] = ("None", "Ignore", "Original", "No norm")
DEFAULT_EMPHASIS = "Original"


def validate_emphasis(mode: str) -> str:
    """Return ``mode`` if it is a known emphasis mode, else raise ``InvalidParameter("emphasis", ...)``."""
    if mode not in EMPHASIS_MODES:
        valid = ", ".join(repr(name) for name in EMPHASIS_MODES)
        raise InvalidParameter("emphasis", f"unknown emphasis mode {mode!r}; valid modes: {valid}")
    return mode


def brackets_are_parsed(mode: str) -> bool:
    """Whether the prompt's brackets are parsed as emphasis in ``mode`` (all modes but ``"None"``)."""
    return validate_emphasis(mode) != "None"


def apply_emphasis(z: torch.Tensor, multipliers: torch.Tensor, mode: str = DEFAULT_EMPHASIS) -> torch.Tensor:
    """Apply per-token multipliers ``[B, T]`` to encoder output ``z`` ``[B, T, C]`` as ``mode`` says."""
    validate_emphasis(mode)
    if mode in ("None", "Ignore"):
        return z
    if multipliers.shape != z.shape[:2]:
        raise InvalidParameter(
            "emphasis",
            f"multipliers of shape {tuple(multipliers.shape)} do not fit z of shape {tuple(z.shape)}",
        )
    scaled = z * multipliers.to(dtype=z.dtype, device=z.device).unsqueeze(-1)
    if mode == "No norm":
        return scaled
    ratio = z.float().mean() / scaled.float().mean()
    return scaled * ratio.to(z.dtype)
