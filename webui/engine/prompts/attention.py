"""Emphasis syntax: ``(text)``, ``[text]``, ``(text:1.3)``, escapes and ``BREAK``.

The rules are those users know from A1111:

- ``(x)`` multiplies the attention of ``x`` by 1.1, ``[x]`` divides it by 1.1, ``(x:w)`` multiplies it by
  ``w``; brackets nest and their factors multiply.
- ``\\(`` ``\\)`` ``\\[`` ``\\]`` and ``\\\\`` stand for the literal character; a lone backslash is dropped.
- A closing bracket with no opening partner is literal text; an opening bracket that is never closed
  applies its factor to everything after it.
- ``BREAK`` (a whole word, upper case) becomes the marker ``["BREAK", -1]``, which starts a new chunk.
- Adjacent runs with equal weights are merged; an empty prompt gives ``[["", 1.0]]``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

ROUND_FACTOR = 1.1
SQUARE_FACTOR = 1 / 1.1
BREAK_MARKER = "BREAK"
BREAK_WEIGHT = -1.0

_ESCAPABLE = "()[]\\"
_SPECIAL = "()[]:\\"
_BREAK_SPLIT = re.compile(r"\s*\bBREAK\b\s*", re.S)
_WEIGHT_CLOSE = re.compile(r":\s*([+-]?[.\d]+)\s*\)")


@dataclass(frozen=True)
class _Token:
    kind: str  # "text", "open_round", "open_square", "close_round", "close_square", "weight"
    text: str
    weight: float | None = None


def _scan(text: str) -> Iterator[_Token]:
    """Split ``text`` into bracket tokens and literal runs."""
    pos, end = 0, len(text)
    while pos < end:
        char = text[pos]
        if char == "\\":
            nxt = text[pos + 1] if pos + 1 < end else ""
            if nxt and nxt in _ESCAPABLE:
                yield _Token("escaped", nxt)
                pos += 2
            else:
                yield _Token("escaped", "")
                pos += 1
        elif char == "(":
            yield _Token("open_round", char)
            pos += 1
        elif char == "[":
            yield _Token("open_square", char)
            pos += 1
        elif char == ")":
            yield _Token("close_round", char)
            pos += 1
        elif char == "]":
            yield _Token("close_square", char)
            pos += 1
        elif char == ":":
            match = _WEIGHT_CLOSE.match(text, pos)
            weight = _to_float(match.group(1)) if match else None
            if match and weight is not None:
                yield _Token("weight", match.group(0), weight)
                pos = match.end()
            else:
                yield _Token("text", char)
                pos += 1
        else:
            stop = pos
            while stop < end and text[stop] not in _SPECIAL:
                stop += 1
            yield _Token("text", text[pos:stop])
            pos = stop


def _to_float(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def parse_prompt_attention(text: str) -> list[list[str | float]]:
    """Parse emphasis brackets into ``[[text, weight], ...]``.

    ``BREAK`` markers come out as ``["BREAK", -1]``. Example::

        >>> parse_prompt_attention("an (important) word")
        [['an ', 1.0], ['important', 1.1], [' word', 1.0]]
    """
    runs: list[list[str | float]] = []
    open_round: list[int] = []
    open_square: list[int] = []

    def scale_from(start: int, factor: float) -> None:
        for run in runs[start:]:
            if run[1] != BREAK_WEIGHT or run[0] != BREAK_MARKER:
                run[1] = float(run[1]) * factor

    def add_literal(literal: str) -> None:
        for index, part in enumerate(_BREAK_SPLIT.split(literal)):
            if index > 0:
                runs.append([BREAK_MARKER, BREAK_WEIGHT])
            runs.append([part, 1.0])

    for token in _scan(text):
        if token.kind == "escaped":
            runs.append([token.text, 1.0])
        elif token.kind == "open_round":
            open_round.append(len(runs))
        elif token.kind == "open_square":
            open_square.append(len(runs))
        elif token.kind == "weight" and open_round:
            scale_from(open_round.pop(), float(token.weight or 0.0))
        elif token.kind == "close_round" and open_round:
            scale_from(open_round.pop(), ROUND_FACTOR)
        elif token.kind == "close_square" and open_square:
            scale_from(open_square.pop(), SQUARE_FACTOR)
        else:
            add_literal(token.text)

    for start in open_round:
        scale_from(start, ROUND_FACTOR)
    for start in open_square:
        scale_from(start, SQUARE_FACTOR)

    if not runs:
        return [["", 1.0]]
    merged: list[list[str | float]] = [runs[0]]
    for run in runs[1:]:
        if run[1] == merged[-1][1]:
            merged[-1][0] = str(merged[-1][0]) + str(run[0])
        else:
            merged.append(run)
    return merged


def is_break(run: list[str | float]) -> bool:
    """True when a parsed run is the ``BREAK`` marker."""
    return run[0] == BREAK_MARKER and run[1] == BREAK_WEIGHT
