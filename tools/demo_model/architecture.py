"""The demo model's architecture: Stable Diffusion 1.x components, only much smaller.

The configs obey the rules the model manager's shape-based detection relies on (32 norm groups, widths
that are multiples of 32, SD1's 8 attention heads, a text width that is a multiple of 64, the real CLIP
vocabulary), so the exported single file loads like any community SD1 checkpoint. Weights are initialised
from an explicit ``torch.Generator``, never from torch's global random state.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from webui.models.tokenizer_files import write_clip_tokenizer

SD_SCALING_FACTOR = 0.18215
CLIP_VOCAB_SIZE = 49408
CONTEXT_LENGTH = 77
BOS_ID = 49406
EOS_ID = 49407


@dataclass(frozen=True)
class DemoArchitecture:
    """Sizes of the three components (defaults: 64x64 pictures, 16x16x4 latents)."""

    image_size: int = 64
    vae_widths: tuple[int, ...] = (32, 64, 64)
    unet_widths: tuple[int, ...] = (64, 96, 96)
    # cross-attention at the 8x8 and 4x4 latent levels (as SDXL); the 16x16 level has none (CPU cost)
    unet_attention: tuple[bool, ...] = (False, True, True)
    text_width: int = 64
    text_layers: int = 3

    @property
    def latent_factor(self) -> int:
        """Pixels per latent cell along each side."""
        return 2 ** (len(self.vae_widths) - 1)

    @property
    def latent_size(self) -> int:
        """Latent side length at the native picture size."""
        return self.image_size // self.latent_factor


def build_vae(arch: DemoArchitecture) -> AutoencoderKL:
    """A small ``AutoencoderKL`` (4 latent channels, SD's scaling factor)."""
    levels = len(arch.vae_widths)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels,
        block_out_channels=arch.vae_widths,
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=32,
        sample_size=arch.image_size,
        scaling_factor=SD_SCALING_FACTOR,
    )


def build_unet(arch: DemoArchitecture) -> UNet2DConditionModel:
    """A small SD1-style ``UNet2DConditionModel`` with cross-attention on the text encoder's states."""
    return UNet2DConditionModel(
        sample_size=arch.latent_size,
        in_channels=4,
        out_channels=4,
        down_block_types=tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in arch.unet_attention),
        up_block_types=tuple(
            "CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(arch.unet_attention)
        ),
        block_out_channels=arch.unet_widths,
        layers_per_block=1,
        norm_num_groups=32,
        cross_attention_dim=arch.text_width,
        attention_head_dim=8,
        use_linear_projection=False,
    )


def build_text_encoder(arch: DemoArchitecture) -> CLIPTextModel:
    """A small CLIP-L-style text encoder over the real 49408-token vocabulary."""
    config = CLIPTextConfig(
        vocab_size=CLIP_VOCAB_SIZE,
        hidden_size=arch.text_width,
        intermediate_size=4 * arch.text_width,
        num_hidden_layers=arch.text_layers,
        num_attention_heads=arch.text_width // 64,
        max_position_embeddings=CONTEXT_LENGTH,
        hidden_act="quick_gelu",
        pad_token_id=EOS_ID,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
    )
    return CLIPTextModel(config)


def seeded_init(module: torch.nn.Module, generator: torch.Generator) -> None:
    """Re-initialise every parameter of ``module`` from ``generator`` (deterministic on any device).

    Linear/conv weights get a uniform fan-in init (as torch's default), embeddings N(0, 0.02), norm
    scales 1 and biases 0.
    """
    with torch.no_grad():
        for name, parameter in module.named_parameters():
            values = torch.empty(parameter.shape, dtype=torch.float32)
            if "embedding" in name and parameter.ndim == 2:
                values.normal_(0.0, 0.02, generator=generator)
            elif parameter.ndim >= 2:
                bound = 1.0 / math.sqrt(parameter[0].numel())
                values.uniform_(-bound, bound, generator=generator)
            elif name.endswith("weight") and "norm" in name:
                values.fill_(1.0)
            else:
                values.zero_()
            parameter.copy_(values.to(parameter.dtype))


def load_tokenizer(folder: Path) -> CLIPTokenizer:
    """The real CLIP tokenizer, written offline into ``folder`` on first use."""
    return CLIPTokenizer.from_pretrained(str(write_clip_tokenizer(folder)))


def frame_token_ids(tokenizer: CLIPTokenizer, texts: Sequence[str]) -> torch.Tensor:
    """Token ids ``[len(texts), 77]`` framed as the engine frames one prompt chunk for SD1:
    ``BOS tokens EOS`` then ``EOS`` padding (no attention mask)."""
    encoded = tokenizer(list(texts), add_special_tokens=False, truncation=False, verbose=False)["input_ids"]
    rows = []
    for ids in encoded:
        ids = list(ids)[: CONTEXT_LENGTH - 2]
        row = [BOS_ID, *ids, EOS_ID]
        rows.append(row + [EOS_ID] * (CONTEXT_LENGTH - len(row)))
    return torch.tensor(rows, dtype=torch.long)


def parameter_count(module: torch.nn.Module) -> int:
    """Number of parameters of ``module``."""
    return sum(p.numel() for p in module.parameters())
