"""OpenAI / OpenCLIP CLIP state dicts -> ``transformers.CLIPModel`` weights and config.

OpenAI's CLIP and OpenCLIP's ViT models share one key layout (``visual.conv1.weight``,
``visual.transformer.resblocks.N.attn.in_proj_weight``, ``token_embedding.weight``, ``ln_final.*``,
``text_projection``, ``logit_scale`` ...). The config is read off the tensor shapes; the only things shapes
cannot tell are the head counts and the activation, which come from the caller (an ``open_clip_config.json``
beside the file, or the conventions of the known model families).
"""

from __future__ import annotations

import re
import types
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from webui.models.errors import CorruptCheckpoint, UnknownArchitecture

CLIP_VOCAB_SIZE = 49408
BOS_ID = 49406
EOS_ID = 49407
# Vision widths of the big OpenCLIP towers whose heads are not 64 channels wide (H/14, g/14, bigG/14).
_VISION_HEAD_WIDTHS = types.MappingProxyType({1280: 80, 1408: 88, 1664: 104})
# Entries that hold no weights the transformers model needs (OpenAI's JIT bookkeeping, causal masks).
_IGNORED = re.compile(r"^(input_resolution|context_length|vocab_size)$|(^|\.)attn_mask$")
_BLOCK = re.compile(r"^(visual\.)?transformer\.resblocks\.(\d+)\.(.+)$")
_BLOCK_NAMES = types.MappingProxyType(
    {
        "ln_1.weight": "layer_norm1.weight",
        "ln_1.bias": "layer_norm1.bias",
        "ln_2.weight": "layer_norm2.weight",
        "ln_2.bias": "layer_norm2.bias",
        "attn.out_proj.weight": "self_attn.out_proj.weight",
        "attn.out_proj.bias": "self_attn.out_proj.bias",
        "mlp.c_fc.weight": "mlp.fc1.weight",
        "mlp.c_fc.bias": "mlp.fc1.bias",
        "mlp.c_proj.weight": "mlp.fc2.weight",
        "mlp.c_proj.bias": "mlp.fc2.bias",
    }
)
_PLAIN_NAMES = types.MappingProxyType(
    {
        "visual.class_embedding": "vision_model.embeddings.class_embedding",
        "visual.conv1.weight": "vision_model.embeddings.patch_embedding.weight",
        "visual.positional_embedding": "vision_model.embeddings.position_embedding.weight",
        "visual.ln_pre.weight": "vision_model.pre_layrnorm.weight",
        "visual.ln_pre.bias": "vision_model.pre_layrnorm.bias",
        "visual.ln_post.weight": "vision_model.post_layernorm.weight",
        "visual.ln_post.bias": "vision_model.post_layernorm.bias",
        "token_embedding.weight": "text_model.embeddings.token_embedding.weight",
        "positional_embedding": "text_model.embeddings.position_embedding.weight",
        "ln_final.weight": "text_model.final_layer_norm.weight",
        "ln_final.bias": "text_model.final_layer_norm.bias",
        "text_projection.weight": "text_projection.weight",  # OpenCLIP's Linear variant, already [out, in]
        "logit_scale": "logit_scale",
    }
)
_TRANSPOSED = types.MappingProxyType(
    {"visual.proj": "visual_projection.weight", "text_projection": "text_projection.weight"}
)
_REQUIRED = (
    "visual.conv1.weight",
    "visual.class_embedding",
    "visual.positional_embedding",
    "visual.proj",
    "token_embedding.weight",
    "positional_embedding",
    "ln_final.weight",
)


@dataclass(frozen=True)
class ClipHints:
    """What shapes cannot tell: head counts (None: the family convention) and the activation."""

    quick_gelu: bool
    vision_heads: int | None = None
    text_heads: int | None = None


def strip_wrappers(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop a DDP ``module.`` prefix (OpenCLIP training checkpoints) from every key."""
    if state and all(k.startswith("module.") for k in state):
        return {k[len("module.") :]: v for k, v in state.items()}
    return dict(state)


def check_clip_vit(shapes: Mapping[str, tuple[int, ...]], name: str) -> None:
    """Raise :class:`UnknownArchitecture` unless the keys are an OpenAI/OpenCLIP CLIP with a ViT tower."""
    keys = set(shapes)
    if any(k.startswith(("visual.layer1.", "visual.attnpool.")) for k in keys):
        raise UnknownArchitecture(
            f"{name}: ResNet image towers (CLIP RN50/RN101/RN50x4 ...) are not supported; use a ViT CLIP"
        )
    if any(k.startswith("visual.trunk.") for k in keys):
        raise UnknownArchitecture(f"{name}: OpenCLIP models with timm image towers are not supported")
    if any(k.startswith(("vision_model.", "text_model.")) for k in keys):
        raise UnknownArchitecture(
            f"{name}: a transformers CLIP state dict; put it in a folder with its config.json instead"
        )
    missing = [k for k in _REQUIRED if k not in keys]
    if missing or "visual.transformer.resblocks.0.attn.in_proj_weight" not in keys:
        raise UnknownArchitecture(
            f"{name}: not a CLIP ViT checkpoint (missing {', '.join(missing) or 'visual transformer blocks'})"
        )
    if "text_projection" not in keys and "text_projection.weight" not in keys:
        raise UnknownArchitecture(f"{name}: not a CLIP checkpoint (no text_projection)")


def _layers(keys: set[str], visual: bool) -> int:
    head = "visual." if visual else ""
    found = {int(m.group(2)) for k in keys if (m := _BLOCK.match(k)) and (m.group(1) or "") == head}
    if not found or sorted(found) != list(range(len(found))):
        raise CorruptCheckpoint("the transformer blocks are not numbered 0..N-1")
    return len(found)


def infer_clip_config(shapes: Mapping[str, tuple[int, ...]], hints: ClipHints) -> dict[str, Any]:
    """``CLIPConfig`` keyword arguments for an OpenAI-layout CLIP ViT, read off the tensor shapes."""
    keys = set(shapes)
    v_width, _, patch, patch_w = shapes["visual.conv1.weight"]
    positions = shapes["visual.positional_embedding"][0]
    grid = round((positions - 1) ** 0.5)
    if patch != patch_w or grid * grid != positions - 1:
        raise UnknownArchitecture(
            f"unsupported image tower: {positions} positions for {patch}x{patch_w} patches (not a square grid)"
        )
    vocab, t_width = shapes["token_embedding.weight"]
    if vocab != CLIP_VOCAB_SIZE:
        raise UnknownArchitecture(
            f"text tower has a {vocab}-token vocabulary; only CLIP's {CLIP_VOCAB_SIZE}-token BPE is supported"
        )
    if "text_projection" in keys:
        t_in, projection = shapes["text_projection"]
    else:
        projection, t_in = shapes["text_projection.weight"]
    v_in, v_projection = shapes["visual.proj"]
    if v_in != v_width or t_in != t_width or v_projection != projection:
        raise CorruptCheckpoint(
            f"projection shapes do not fit the towers (image {v_in}->{v_projection}, text {t_in}->{projection})"
        )
    v_heads = hints.vision_heads or v_width // _VISION_HEAD_WIDTHS.get(v_width, 64)
    t_heads = hints.text_heads or max(1, t_width // 64)
    if v_width % v_heads or t_width % t_heads:
        raise UnknownArchitecture(f"head counts {v_heads}/{t_heads} do not divide widths {v_width}/{t_width}")
    act = "quick_gelu" if hints.quick_gelu else "gelu"
    vision = {
        "hidden_size": v_width,
        "intermediate_size": shapes["visual.transformer.resblocks.0.mlp.c_fc.weight"][0],
        "num_hidden_layers": _layers(keys, visual=True),
        "num_attention_heads": v_heads,
        "image_size": grid * patch,
        "patch_size": patch,
        "num_channels": 3,
        "hidden_act": act,
        "layer_norm_eps": 1e-5,
    }
    text = {
        "vocab_size": vocab,
        "hidden_size": t_width,
        "intermediate_size": shapes["transformer.resblocks.0.mlp.c_fc.weight"][0],
        "num_hidden_layers": _layers(keys, visual=False),
        "num_attention_heads": t_heads,
        "max_position_embeddings": shapes["positional_embedding"][0],
        "hidden_act": act,
        "layer_norm_eps": 1e-5,
        "bos_token_id": BOS_ID,
        "eos_token_id": EOS_ID,
        "pad_token_id": EOS_ID,
    }
    return {"vision_config": vision, "text_config": text, "projection_dim": projection}


def to_transformers_keys(state: Mapping[str, torch.Tensor], name: str) -> dict[str, torch.Tensor]:
    """Rename (and split/transpose) OpenAI-layout CLIP tensors to ``transformers.CLIPModel``'s names.

    Raises :class:`UnknownArchitecture` for entries that a plain CLIP ViT does not have (layer scale,
    attentional pooling, patch bias ...), rather than silently dropping weights.
    """
    out: dict[str, torch.Tensor] = {}
    unknown: list[str] = []
    for key, tensor in state.items():
        if _IGNORED.search(key):
            continue
        if key in _PLAIN_NAMES:
            out[_PLAIN_NAMES[key]] = tensor
        elif key in _TRANSPOSED:
            out[_TRANSPOSED[key]] = tensor.t().contiguous()
        elif m := _BLOCK.match(key):
            tower = "vision_model" if m.group(1) else "text_model"
            base = f"{tower}.encoder.layers.{m.group(2)}."
            rest = m.group(3)
            if rest in ("attn.in_proj_weight", "attn.in_proj_bias"):
                kind = rest.rsplit("_", 1)[1]
                if tensor.shape[0] % 3:
                    raise CorruptCheckpoint(f"{name}: {key} cannot be split into q, k and v")
                for proj, part in zip(("q", "k", "v"), tensor.chunk(3, dim=0), strict=True):
                    out[f"{base}self_attn.{proj}_proj.{kind}"] = part.contiguous()
            elif rest in _BLOCK_NAMES:
                out[base + _BLOCK_NAMES[rest]] = tensor
            else:
                unknown.append(key)
        else:
            unknown.append(key)
    if unknown:
        shown = ", ".join(sorted(unknown)[:4])
        raise UnknownArchitecture(
            f"{name}: unsupported CLIP variant ({len(unknown)} unexpected tensors, e.g. {shown})"
        )
    return out
