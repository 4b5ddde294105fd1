"""A small CLIP (ViT image tower + text tower) for the demo scenes, stored as a transformers folder.

The folder holds ``config.json`` + ``model.safetensors`` (``CLIPModel``, float16) and a
``preprocessor_config.json``, so ``CLIPModel.from_pretrained`` / ``CLIPImageProcessor`` load it like any CLIP
from the hub, offline. The tokenizer is the real CLIP one; its files (1.5 MB) are not shipped but rebuilt
offline by ``write_clip_tokenizer`` (pass ``with_tokenizer=True`` to :func:`save_clip` to include them).
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPTokenizer

from tools.demo_model.architecture import (
    BOS_ID,
    CLIP_VOCAB_SIZE,
    CONTEXT_LENGTH,
    EOS_ID,
    frame_token_ids,
    load_tokenizer,
    seeded_init,
)
from webui.models.tokenizer_files import write_clip_tokenizer

DEFAULT_CLIP_DIR = Path("models/demo/demo-clip-v1")
CLIP_IMAGE_SIZE = 64
# OpenAI CLIP's pixel normalisation, kept so that standard CLIP preprocessing applies unchanged.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def clip_config(image_size: int = CLIP_IMAGE_SIZE, width: int = 64, projection: int = 64) -> CLIPConfig:
    """The config of the small CLIP: two 3-layer towers of ``width`` channels."""
    text = {
        "vocab_size": CLIP_VOCAB_SIZE,
        "hidden_size": width,
        "intermediate_size": 4 * width,
        "num_hidden_layers": 3,
        "num_attention_heads": 2,
        "max_position_embeddings": CONTEXT_LENGTH,
        "hidden_act": "quick_gelu",
        "pad_token_id": EOS_ID,
        "bos_token_id": BOS_ID,
        "eos_token_id": EOS_ID,
    }
    vision = {
        "image_size": image_size,
        "patch_size": 8,
        "hidden_size": width,
        "intermediate_size": 4 * width,
        "num_hidden_layers": 3,
        "num_attention_heads": 2,
        "num_channels": 3,
        "hidden_act": "quick_gelu",
    }
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=projection)


def build_clip(generator: torch.Generator, config: CLIPConfig | None = None) -> CLIPModel:
    """A freshly initialised small CLIP (weights from ``generator``, logit scale log(1/0.07))."""
    model = CLIPModel(config or clip_config())
    seeded_init(model, generator)
    with torch.no_grad():
        model.logit_scale.fill_(float(np.log(1 / 0.07)))
    return model


def pixel_values(images: Sequence[Image.Image], image_size: int = CLIP_IMAGE_SIZE) -> torch.Tensor:
    """CLIP-normalised ``[N, 3, S, S]`` tensors of ``images`` (resized to ``image_size`` if needed)."""
    arrays = []
    for image in images:
        rgb = image.convert("RGB")
        if rgb.size != (image_size, image_size):
            rgb = rgb.resize((image_size, image_size), Image.Resampling.BICUBIC)
        arrays.append(np.asarray(rgb, dtype=np.float32) / 255.0)
    x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)
    mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def save_clip(model: CLIPModel, folder: Path, half: bool = True, with_tokenizer: bool = False) -> Path:
    """Write the model (float16 unless ``half`` is False) and image-processor files (and the tokenizer's)."""
    folder.mkdir(parents=True, exist_ok=True)
    to_save = CLIPModel(model.config)
    to_save.load_state_dict(model.state_dict())
    if half:
        to_save = to_save.half()
    to_save.save_pretrained(folder, safe_serialization=True)
    if with_tokenizer:
        write_clip_tokenizer(folder)
    size = model.config.vision_config.image_size
    CLIPImageProcessor(
        size={"shortest_edge": size},
        crop_size={"height": size, "width": size},
        image_mean=list(CLIP_MEAN),
        image_std=list(CLIP_STD),
    ).save_pretrained(folder)
    return folder


def load_clip(folder: Path, tokenizer_dir: Path | None = None) -> tuple[CLIPModel, CLIPTokenizer]:
    """The saved CLIP (float32, eval mode) and its tokenizer.

    The tokenizer comes from ``folder`` when it holds one, else it is built in ``tokenizer_dir`` (default:
    a folder under the system's temporary directory).
    """
    model = CLIPModel.from_pretrained(str(folder), dtype=torch.float32).eval()
    if (folder / "tokenizer_config.json").is_file():
        return model, CLIPTokenizer.from_pretrained(str(folder))
    return model, load_tokenizer(tokenizer_dir or Path(tempfile.gettempdir()) / "demo-clip-tokenizer")


@torch.no_grad()
def similarity(
    model: CLIPModel, tokenizer: CLIPTokenizer, images: Sequence[Image.Image], captions: Sequence[str]
) -> torch.Tensor:
    """Cosine similarities ``[len(images), len(captions)]`` of image and caption embeddings."""
    device = next(model.parameters()).device
    image_embeds = model.get_image_features(pixel_values=pixel_values(images).to(device))
    text_embeds = model.get_text_features(input_ids=frame_token_ids(tokenizer, captions).to(device))
    image_embeds = _as_tensor(image_embeds)
    text_embeds = _as_tensor(text_embeds)
    image_embeds = image_embeds / image_embeds.norm(dim=-1, keepdim=True)
    text_embeds = text_embeds / text_embeds.norm(dim=-1, keepdim=True)
    return image_embeds @ text_embeds.T


def _as_tensor(features: object) -> torch.Tensor:
    """``get_*_features`` return a tensor, or (newer transformers) an output object with ``pooler_output``."""
    if isinstance(features, torch.Tensor):
        return features
    return features.pooler_output  # type: ignore[attr-defined]
