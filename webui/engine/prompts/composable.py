"""Composable diffusion: ``a cat AND a dog:0.5`` splits one prompt into weighted sub-prompts.

Sub-prompts are separated by the word ``AND`` (upper case, whole word); each may end in ``:weight``
(default 1). Trailing whitespace before the weight is dropped, leading whitespace is kept, as in A1111.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

_AND = re.compile(r"\bAND\b")
_TRAILING_WEIGHT = re.compile(r"\s*:\s*([-+]?(?:\d+\.?|\d*\.\d+))\s*$")


def split_and_prompts(text: str) -> list[tuple[str, float]]:
    """Split a prompt on ``AND`` into ``(sub_prompt, weight)`` pairs.

    >>> split_and_prompts("a cat AND a dog:0.5")
    [('a cat', 1.0), (' a dog', 0.5)]
    """
    result: list[tuple[str, float]] = []
    for part in _AND.split(text):
        match = _TRAILING_WEIGHT.search(part)
        if match is not None:
            result.append((part[: match.start()], float(match.group(1))))
        else:
            result.append((part.rstrip(), 1.0))
    return result


def get_multicond_prompt_list(
    prompts: Sequence[str],
) -> tuple[list[list[tuple[int, float]]], list[str], dict[str, int]]:
    """A1111's flattening of AND prompts for a batch.

    Returns ``(res_indexes, prompt_flat_list, prompt_indexes)``: for every prompt the list of
    ``(index into prompt_flat_list, weight)``; the distinct sub-prompts in first-seen order; and the map
    from sub-prompt text to its index.
    """
    res_indexes: list[list[tuple[int, float]]] = []
    flat: list[str] = []
    indexes: dict[str, int] = {}
    for prompt in prompts:
        entry: list[tuple[int, float]] = []
        for text, weight in split_and_prompts(prompt):
            if text not in indexes:
                indexes[text] = len(flat)
                flat.append(text)
            entry.append((indexes[text], weight))
        res_indexes.append(entry)
    return res_indexes, flat, indexes
