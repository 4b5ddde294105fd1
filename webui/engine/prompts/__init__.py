"""A1111 prompt syntax: emphasis, editing and alternation, AND, BREAK, extra-network tags, chunking.

Pure Python apart from :mod:`webui.engine.prompts.emphasis`, which applies multipliers to tensors.
"""

from webui.engine.prompts.attention import parse_prompt_attention
from webui.engine.prompts.chunking import (
    CLIP_L_SPEC,
    OPEN_CLIP_SPEC,
    ChunkFix,
    EmbeddingMatch,
    PromptChunk,
    TokenizerSpec,
    count_prompt_tokens,
    count_tokens,
    target_token_count,
    tokenize_prompt,
)
from webui.engine.prompts.composable import get_multicond_prompt_list, split_and_prompts
from webui.engine.prompts.emphasis import (
    DEFAULT_EMPHASIS,
    EMPHASIS_MODES,
    apply_emphasis,
    brackets_are_parsed,
    validate_emphasis,
)
from webui.engine.prompts.extra_networks import (
    ExtraNetworkParams,
    LoraArgs,
    lora_args,
    parse_extra_network_prompts,
    parse_extra_networks,
)
from webui.engine.prompts.scheduling import get_learned_conditioning_prompt_schedules, prompt_at_step

__all__ = [
    "CLIP_L_SPEC",
    "DEFAULT_EMPHASIS",
    "EMPHASIS_MODES",
    "OPEN_CLIP_SPEC",
    "ChunkFix",
    "EmbeddingMatch",
    "ExtraNetworkParams",
    "LoraArgs",
    "PromptChunk",
    "TokenizerSpec",
    "apply_emphasis",
    "brackets_are_parsed",
    "count_prompt_tokens",
    "count_tokens",
    "get_learned_conditioning_prompt_schedules",
    "get_multicond_prompt_list",
    "lora_args",
    "parse_extra_network_prompts",
    "parse_extra_networks",
    "parse_prompt_attention",
    "prompt_at_step",
    "split_and_prompts",
    "target_token_count",
    "tokenize_prompt",
    "validate_emphasis",
]
