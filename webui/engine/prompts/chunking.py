"""Turn a prompt into CLIP-sized chunks of token ids with per-token emphasis multipliers.

Rules (A1111's):

- Each chunk holds up to ``chunk_length`` (75) tokens, framed as ``BOS tokens EOS padding`` = 77 ids.
- When a chunk is full and the last comma lies within ``comma_backtrack`` (20) tokens of its end, the
  tokens after that comma move to the next chunk, so phrases are not cut in half.
- ``BREAK`` closes the current chunk (even an empty one) and starts a new one.
- An empty prompt gives one chunk of padding.

The tokenizer is passed in as ``tokenize(texts) -> ids per text`` without BOS/EOS, so this module needs
no model files; the ids and lengths of the tokenizer come in a :class:`TokenizerSpec`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from webui.engine.prompts.attention import is_break, parse_prompt_attention
from webui.engine.prompts.composable import get_multicond_prompt_list
from webui.engine.prompts.emphasis import brackets_are_parsed
from webui.engine.prompts.extra_networks import parse_extra_networks
from webui.engine.prompts.scheduling import get_learned_conditioning_prompt_schedules

Tokenize = Callable[[list[str]], list[list[int]]]


@dataclass(frozen=True)
class TokenizerSpec:
    """Token ids and lengths of one text encoder's tokenizer."""

    bos_id: int = 49406
    eos_id: int = 49407
    pad_id: int = 49407
    comma_id: int = 267
    chunk_length: int = 75
    comma_backtrack: int = 20


CLIP_L_SPEC = TokenizerSpec()
OPEN_CLIP_SPEC = TokenizerSpec(pad_id=0)


@dataclass(frozen=True)
class EmbeddingMatch:
    """A textual-inversion embedding found in the token stream."""

    name: str
    vectors: int
    length_in_tokens: int
    embedding: object = None


FindEmbedding = Callable[[Sequence[int], int], EmbeddingMatch | None]


@dataclass(frozen=True)
class ChunkFix:
    """Embedding vectors to write over placeholder ids, starting at ``offset`` in the 77 positions."""

    offset: int
    embedding: EmbeddingMatch


@dataclass(frozen=True)
class PromptChunk:
    """One encoder input: ``chunk_length + 2`` token ids and as many multipliers."""

    tokens: tuple[int, ...]
    multipliers: tuple[float, ...]
    fixes: tuple[ChunkFix, ...] = ()


@dataclass
class _Draft:
    tokens: list[int] = field(default_factory=list)
    multipliers: list[float] = field(default_factory=list)
    fixes: list[tuple[int, EmbeddingMatch]] = field(default_factory=list)

    def split_at(self, index: int) -> _Draft:
        """Cut the draft at ``index``; return the tail as a new draft."""
        tail = _Draft(self.tokens[index:], self.multipliers[index:])
        tail.fixes = [(offset - index, emb) for offset, emb in self.fixes if offset >= index]
        self.fixes = [(offset, emb) for offset, emb in self.fixes if offset < index]
        del self.tokens[index:], self.multipliers[index:]
        return tail


def _close(draft: _Draft, spec: TokenizerSpec) -> PromptChunk:
    padding = spec.chunk_length - len(draft.tokens)
    tokens = [spec.bos_id, *draft.tokens, spec.eos_id] + [spec.pad_id] * padding
    multipliers = [1.0, *draft.multipliers, 1.0] + [1.0] * padding
    fixes = tuple(ChunkFix(offset + 1, emb) for offset, emb in draft.fixes)
    return PromptChunk(tuple(tokens), tuple(multipliers), fixes)


def tokenize_prompt(
    text: str,
    tokenize: Tokenize,
    spec: TokenizerSpec = CLIP_L_SPEC,
    *,
    emphasis: str = "Original",
    find_embedding: FindEmbedding | None = None,
) -> tuple[list[PromptChunk], int]:
    """Split one prompt (no AND, no scheduling left) into chunks; also return its token count.

    The count is what the UI shows: full chunks count ``chunk_length`` each, the last one its real
    length. ``find_embedding(tokens, position)`` lets textual-inversion embeddings replace their
    placeholder tokens (their vectors are recorded as :class:`ChunkFix`, the ids set to 0).
    """
    runs = parse_prompt_attention(text) if brackets_are_parsed(emphasis) else [[text, 1.0]]
    texts = [str(run[0]) for run in runs if not is_break(run)]
    token_lists = iter(tokenize(texts) if texts else [])

    chunks: list[PromptChunk] = []
    draft = _Draft()
    token_count = 0
    last_comma = -1

    def next_chunk(is_last: bool = False) -> None:
        nonlocal draft, token_count, last_comma
        token_count += len(draft.tokens) if is_last else spec.chunk_length
        chunks.append(_close(draft, spec))
        draft = _Draft()
        last_comma = -1

    for run in runs:
        if is_break(run):
            next_chunk()
            continue
        weight = float(run[1])
        tokens = next(token_lists)
        position = 0
        while position < len(tokens):
            token = tokens[position]
            full = len(draft.tokens) == spec.chunk_length
            if token == spec.comma_id:
                last_comma = len(draft.tokens)
            elif (
                spec.comma_backtrack != 0
                and full
                and last_comma != -1
                and len(draft.tokens) - last_comma <= spec.comma_backtrack
            ):
                tail = draft.split_at(last_comma + 1)
                next_chunk()
                draft = tail
            if len(draft.tokens) == spec.chunk_length:
                next_chunk()

            match = find_embedding(tokens, position) if find_embedding is not None else None
            if match is None:
                draft.tokens.append(token)
                draft.multipliers.append(weight)
                position += 1
                continue
            if len(draft.tokens) + match.vectors > spec.chunk_length:
                next_chunk()
            draft.fixes.append((len(draft.tokens), match))
            draft.tokens.extend([0] * match.vectors)
            draft.multipliers.extend([weight] * match.vectors)
            position += max(1, match.length_in_tokens)

    if draft.tokens or not chunks:
        next_chunk(is_last=True)
    return chunks, token_count


def target_token_count(token_count: int, chunk_length: int = 75) -> int:
    """The length the counter shows after the slash: 75, 150, ... (at least one chunk)."""
    return math.ceil(max(token_count, 1) / chunk_length) * chunk_length


def count_tokens(text: str, tokenize: Tokenize, spec: TokenizerSpec = CLIP_L_SPEC) -> tuple[int, int]:
    """``(token_count, target_length)`` of one prompt for the UI's ``N/75`` counter."""
    _, token_count = tokenize_prompt(text, tokenize, spec)
    return token_count, target_token_count(token_count, spec.chunk_length)


def count_prompt_tokens(
    text: str,
    steps: int,
    tokenize: Tokenize,
    spec: TokenizerSpec = CLIP_L_SPEC,
    *,
    is_positive: bool = True,
) -> tuple[int, int]:
    """The counter for a whole prompt box: the longest text over AND parts and scheduled steps.

    Extra-network tags are removed first; positive prompts are split on ``AND``.
    """
    stripped, _ = parse_extra_networks(text)
    parts = get_multicond_prompt_list([stripped])[1] if is_positive else [stripped]
    schedules = get_learned_conditioning_prompt_schedules(parts, steps)
    texts = [str(entry[1]) for schedule in schedules for entry in schedule]
    return max((count_tokens(candidate, tokenize, spec) for candidate in texts), key=lambda pair: pair[0])
