"""Disco Diffusion's per-step schedules (``"[12]*400+[4]*600"``), parsed without ``eval``, and cut presets.

A schedule is a list of 1000 values, one per diffusion timestep on Disco's 1000-step scale: ``[v]*n`` terms
joined by ``+`` whose counts add up to 1000, or a bare number meaning the same value everywhere. A run of
``steps`` sampling steps reads entry ``1000 * step / steps`` at step ``step`` (see :func:`schedule_value`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from types import MappingProxyType

from webui.extensions.api import InvalidParameter

SCHEDULE_LENGTH = 1000
SCHEDULE_KINDS = (int, float, bool)

_INT = r"[-+]?\d+"
_FLOAT = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_BOOL = r"True|False|true|false|1|0"
_VALUE_PATTERNS = {int: _INT, float: _FLOAT, bool: _BOOL}
_MAX_TEXT = 10_000
_KIND_NAMES = {int: "a whole number", float: "a number", bool: "True or False"}

_CUT_FIELDS = ("cut_overview", "cut_innercut", "cut_ic_pow", "cut_icgray_p")


def _preset(overview: str, innercut: str, ic_pow: str, icgray_p: str) -> Mapping[str, str]:
    return MappingProxyType(dict(zip(_CUT_FIELDS, (overview, innercut, ic_pow, icgray_p), strict=True)))


# Cut schedules by preset name. "default" is Disco's notebook default; "watercolor" and "pulp" are the
# schedules Disco ships for its KaliYuga models; the others trade cost and detail against each other.
SCHEDULE_PRESETS: Mapping[str, Mapping[str, str]] = MappingProxyType(
    {
        "default": _preset("[12]*400+[4]*600", "[4]*400+[12]*600", "[1]*1000", "[0.2]*400+[0]*600"),
        # Fewer cuts: about half the CLIP cost of the default.
        "fast": _preset("[6]*400+[2]*600", "[2]*400+[6]*600", "[1]*1000", "[0.2]*400+[0]*600"),
        # 20 cuts a step, more and smaller inner cuts late in the run (ic_pow > 1 favours small crops): finer
        # texture at 1.25x the default's CLIP cost.
        "detailed": _preset(
            "[12]*300+[6]*300+[2]*400", "[8]*300+[14]*300+[18]*400", "[1]*300+[2]*700", "[0.2]*300+[0]*700"
        ),
        # Whole-image cuts dominate throughout and inner cuts stay large: composition over detail.
        "coherent": _preset("[14]*500+[8]*500", "[2]*500+[8]*500", "[0.5]*1000", "[0.1]*500+[0]*500"),
        "watercolor": _preset(
            "[14]*200+[12]*200+[4]*400+[0]*200",
            "[2]*200+[4]*200+[12]*400+[12]*200",
            "[12]*300+[12]*100+[12]*50+[12]*50+[10]*100+[10]*100+[10]*300",
            "[0.7]*100+[0.6]*100+[0.45]*100+[0.3]*100+[0]*600",
        ),
        "pulp": _preset(
            "[15]*100+[15]*100+[12]*100+[12]*100+[6]*100+[4]*100+[2]*200+[0]*200",
            "[1]*100+[1]*100+[4]*100+[4]*100+[8]*100+[8]*100+[10]*200+[10]*200",
            "[12]*300+[12]*100+[12]*50+[12]*50+[10]*100+[10]*100+[10]*300",
            "[0.87]*100+[0.78]*50+[0.73]*50+[0.64]*60+[0.56]*40+[0.50]*50+[0.33]*100+[0.19]*150+[0]*400",
        ),
    }
)


def cut_preset(name: str) -> Mapping[str, str]:
    """The four cut schedules of preset ``name`` (a key of :data:`SCHEDULE_PRESETS`)."""
    preset = SCHEDULE_PRESETS.get(name.strip().lower()) if isinstance(name, str) else None
    if preset is None:
        raise InvalidParameter("cut_preset", f"unknown preset {name!r}; valid: {', '.join(SCHEDULE_PRESETS)}")
    return preset


def _convert(token: str, kind: type, text: str, field: str) -> int | float | bool:
    if kind is bool:
        return token in ("True", "true", "1")
    if kind is int:
        return int(token)
    value = float(token)
    if not math.isfinite(value):
        raise InvalidParameter(field, f"{token!r} in {text!r} is not a finite number")
    return value


def _expected(kind: type, length: int) -> str:
    return (
        f"expected Disco's schedule syntax: [value]*count terms joined by '+' with counts adding up to "
        f"{length} (e.g. '[12]*400+[4]*600'), or a single value; each value {_KIND_NAMES[kind]}"
    )


def parse_schedule(
    text: str, length: int = SCHEDULE_LENGTH, kind: type = int, field: str = "schedule"
) -> tuple:
    """Parse ``"[12]*400+[4]*600"`` (or a bare ``"12"``) into a tuple of ``length`` values of type ``kind``.

    Only the syntax above is accepted (whitespace is ignored); names, calls, nested lists, signs on counts
    and totals other than ``length`` raise :class:`InvalidParameter` naming ``field``.
    """
    if kind not in SCHEDULE_KINDS:
        raise InvalidParameter(field, f"kind must be int, float or bool, got {kind!r}")
    if isinstance(length, bool) or not isinstance(length, int) or length < 1:
        raise InvalidParameter(field, f"length must be a positive whole number, got {length!r}")
    if isinstance(text, (int, float)) and not isinstance(text, bool) and kind is not bool:
        text = str(text)
    if not isinstance(text, str):
        raise InvalidParameter(
            field, f"must be a string, got {type(text).__name__}; {_expected(kind, length)}"
        )
    if len(text) > _MAX_TEXT:
        raise InvalidParameter(field, f"is {len(text)} characters long; at most {_MAX_TEXT} are accepted")
    compact = re.sub(r"\s+", "", text)
    value_pattern = _VALUE_PATTERNS[kind]
    if re.fullmatch(value_pattern, compact, re.ASCII):
        return (_convert(compact, kind, text, field),) * length
    term = rf"\[({value_pattern})\]\*(\d+)"
    if not compact or not re.fullmatch(rf"{term}(?:\+{term})*", compact, re.ASCII):
        raise InvalidParameter(field, f"{text!r} is not a schedule; {_expected(kind, length)}")
    terms = [(match.group(1), int(match.group(2))) for match in re.finditer(term, compact, re.ASCII)]
    if any(count < 1 for _, count in terms):
        raise InvalidParameter(field, f"every count in {text!r} must be at least 1")
    total = sum(count for _, count in terms)
    if total != length:
        raise InvalidParameter(
            field, f"the counts in {text!r} add up to {total}; Disco's schedules have {length} entries"
        )
    values: list = []
    for token, count in terms:
        values.extend([_convert(token, kind, text, field)] * count)
    return tuple(values)


def schedule_index(step: int, steps: int, length: int = SCHEDULE_LENGTH) -> int:
    """Index into a ``length``-entry schedule for sampling step ``step`` of ``steps`` (0-based).

    Disco evaluates entry ``1000 - t`` where the model's timestep ``t`` runs from 1000 down to 0 over the run;
    with ``t = 1000 * (1 - step / steps)`` that is ``1000 * step / steps``, kept inside the list.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise InvalidParameter("steps", f"must be a positive whole number, got {steps!r}")
    if isinstance(step, bool) or not isinstance(step, int) or not 0 <= step <= steps:
        raise InvalidParameter("step", f"must be a whole number from 0 to {steps}, got {step!r}")
    return min(length - 1, (length * step) // steps)


def schedule_value(schedule: Sequence, step: int, steps: int):
    """The value of a parsed ``schedule`` at sampling step ``step`` of ``steps`` (see :func:`schedule_index`)."""
    if isinstance(schedule, str) or len(schedule) == 0:
        raise InvalidParameter("schedule", "expected a parsed, non-empty schedule (use parse_schedule first)")
    return schedule[schedule_index(step, steps, len(schedule))]
