"""Text conditioning: A1111 prompt syntax -> text-encoder outputs, scheduled per sampling step.

A prompt becomes, per image, a list of AND sub-prompts with weights; each sub-prompt has a schedule
of ``(end_at_step, text)`` from prompt editing and alternation; each text is split into 75-token chunks
(emphasis multipliers, BREAK, comma backtracking), encoded chunk by chunk and concatenated. Encodings are
cached per text for the life of one :class:`TextConditioner` (one job and one model).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from webui.engine.prompts.chunking import CLIP_L_SPEC, OPEN_CLIP_SPEC, PromptChunk, tokenize_prompt
from webui.engine.prompts.composable import split_and_prompts
from webui.engine.prompts.emphasis import apply_emphasis, validate_emphasis
from webui.engine.prompts.extra_networks import parse_extra_networks
from webui.engine.prompts.scheduling import get_learned_conditioning_prompt_schedules


@dataclass(frozen=True)
class CondTensors:
    """One encoded text: token states ``[T, C]`` and, for SDXL, the pooled embedding ``[P]``."""

    context: torch.Tensor
    pooled: torch.Tensor | None = None


@dataclass(frozen=True)
class ScheduledCond:
    """The conditioning of one (sub)prompt over the sampling steps (prompt editing)."""

    steps: tuple[tuple[int, CondTensors], ...]

    def at(self, step: int) -> CondTensors:
        """The conditioning in force at sampling step ``step`` (0-based).

        As in A1111, an entry covers steps up to and *including* its ``end_at`` on the 0-based counter, so
        ``[a:b:5]`` uses ``a`` for steps 0..5; images then match A1111's for the same seed.
        """
        for end_at, cond in self.steps:
            if step <= end_at:
                return cond
        return self.steps[-1][1]


@dataclass(frozen=True)
class ImageCond:
    """Per image: AND sub-prompts with their weights."""

    parts: tuple[tuple[ScheduledCond, float], ...]


@dataclass
class TextConditioner:
    """Encodes prompts with a loaded model's tokenizer(s) and text encoder(s)."""

    model: object  # webui.models.loader.LoadedModel (duck-typed to keep the layer boundary thin)
    clip_skip: int = 1
    emphasis: str = "Original"
    _cache: dict[str, CondTensors] = field(default_factory=dict)

    def __post_init__(self) -> None:
        validate_emphasis(self.emphasis)
        self.clip_skip = max(1, int(self.clip_skip))

    @property
    def family(self) -> str:
        """The model family (``sd1``, ``sd2``, ``sdxl``, ``sdxl_refiner``)."""
        return self.model.spec.family  # type: ignore[attr-defined]

    def _tokenize(self, tokenizer: object, texts: list[str]) -> list[list[int]]:
        out = tokenizer(texts, add_special_tokens=False, truncation=False, verbose=False)  # type: ignore[operator]
        return [list(ids) for ids in out["input_ids"]]

    def chunks(self, text: str, encoder_index: int = 0) -> tuple[list[PromptChunk], int]:
        """The 77-token chunks of ``text`` for one encoder, and its token count."""
        tokenizer = self.model.tokenizers[encoder_index]  # type: ignore[attr-defined]
        spec = OPEN_CLIP_SPEC if tokenizer.pad_token_id == 0 else CLIP_L_SPEC
        return tokenize_prompt(text, lambda t: self._tokenize(tokenizer, t), spec, emphasis=self.emphasis)

    def count_tokens(self, text: str) -> int:
        """Tokens of a prompt as the UI counter shows them (extra-network tags removed)."""
        clean, _ = parse_extra_networks(text)
        return max(self.chunks(part, 0)[1] for part, _w in split_and_prompts(clean) or [("", 1.0)])

    @torch.no_grad()
    def encode(self, text: str) -> CondTensors:
        """Encode one plain text (no AND / editing left), cached."""
        hit = self._cache.get(text)
        if hit is not None:
            return hit
        contexts: list[torch.Tensor] = []
        pooled: torch.Tensor | None = None
        for index, encoder in enumerate(self.model.text_encoders):  # type: ignore[attr-defined]
            chunks, _count = self.chunks(text, index)
            z, pool = self._encode_chunks(encoder, chunks, index)
            contexts.append(z)
            if pool is not None:
                pooled = pool
        result = CondTensors(torch.cat(contexts, dim=-1), pooled)
        self._cache[text] = result
        return result

    def _encode_chunks(
        self, encoder: torch.nn.Module, chunks: list[PromptChunk], index: int
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        device = next(encoder.parameters()).device
        ids = torch.tensor([c.tokens for c in chunks], dtype=torch.long, device=device)
        multipliers = torch.tensor([c.multipliers for c in chunks], dtype=torch.float32, device=device)
        sdxl = self.family in ("sdxl", "sdxl_refiner")
        out = encoder(input_ids=ids, output_hidden_states=True)
        # A1111 applies clip skip to SD1 only: SD2 always uses its (already penultimate) last layer and
        # SDXL the penultimate layer of each encoder.
        if sdxl:
            z = out.hidden_states[-2]
        elif self.clip_skip > 1 and self.family == "sd1":
            z = out.hidden_states[-self.clip_skip]
            z = getattr(encoder, "text_model", encoder).final_layer_norm(z)
        else:
            z = out.last_hidden_state
        # the "Original" emphasis keeps the mean of each 77-token chunk, as A1111 encodes chunk by chunk
        z = torch.cat(
            [apply_emphasis(z[i : i + 1], multipliers[i : i + 1], self.emphasis) for i in range(len(chunks))]
        )
        pooled = None
        if sdxl and hasattr(out, "text_embeds"):
            pooled = out.text_embeds[0]
        return z.reshape(-1, z.shape[-1]), pooled

    def scheduled(self, prompt: str, steps: int, hires_steps: int | None = None) -> ScheduledCond:
        """A prompt without AND, with prompt editing resolved over ``steps``."""
        schedule = get_learned_conditioning_prompt_schedules([prompt], steps, hires_steps)[0]
        return ScheduledCond(tuple((int(end), self.encode(str(text))) for end, text in schedule))

    def image_conds(self, prompts: list[str], steps: int, hires_steps: int | None = None) -> list[ImageCond]:
        """Per-image positive conditioning with AND sub-prompts (composable diffusion)."""
        result = []
        for prompt in prompts:
            clean, _networks = parse_extra_networks(prompt)
            parts = split_and_prompts(clean) or [("", 1.0)]
            result.append(
                ImageCond(tuple((self.scheduled(text, steps, hires_steps), float(w)) for text, w in parts))
            )
        return result

    def negative_conds(
        self, prompts: list[str], steps: int, hires_steps: int | None = None
    ) -> list[ScheduledCond]:
        """Per-image negative conditioning (no AND, as in A1111)."""
        out = []
        for prompt in prompts:
            clean, _networks = parse_extra_networks(prompt)
            out.append(self.scheduled(clean, steps, hires_steps))
        return out
