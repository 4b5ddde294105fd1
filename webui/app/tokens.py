"""The ``N/75`` token counters of the prompt boxes, counted with the loaded model's first tokenizer.

Tokenizing is CPU work, so the counter runs on the request thread, never on the GPU worker.
"""

from __future__ import annotations

from typing import Any

from webui.engine.prompts.chunking import CLIP_L_SPEC, OPEN_CLIP_SPEC, count_prompt_tokens

UNKNOWN_COUNT = "?/75"


def token_count_text(models: Any, text: str, steps: Any = 20, *, is_positive: bool = True) -> str:
    """``"N/T"`` for a prompt box (T grows by 75 per chunk); ``"?/75"`` while no model is loaded."""
    model = getattr(models, "current", None)
    tokenizers = getattr(model, "tokenizers", None) if model is not None else None
    if not tokenizers:
        return UNKNOWN_COUNT
    tokenizer = tokenizers[0]
    spec = OPEN_CLIP_SPEC if getattr(tokenizer, "pad_token_id", None) == 0 else CLIP_L_SPEC

    def tokenize(texts: list[str]) -> list[list[int]]:
        out = tokenizer(texts, add_special_tokens=False, truncation=False, verbose=False)
        return [list(ids) for ids in out["input_ids"]]

    try:
        steps = max(1, int(steps))
    except (TypeError, ValueError):
        steps = 20
    try:
        count, target = count_prompt_tokens(text or "", steps, tokenize, spec, is_positive=is_positive)
    except Exception:  # a half-typed prompt the parser rejects must not break typing
        return UNKNOWN_COUNT
    return f"{count}/{target}"
