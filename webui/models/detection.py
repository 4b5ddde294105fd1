"""Architecture detection from keys and shapes alone (a safetensors header is enough).

The result, :class:`ModelSpec`, names the family (SD1.x, SD2.x, SDXL base, SDXL refiner), the prediction
type and the inpainting variant, and carries the diffusers configs of every component, inferred from the
tensor shapes. The same inference serves full-size community checkpoints and the tiny models the tests
and the demo model use, so there is one loading path for all of them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from webui.models.errors import CorruptCheckpoint, UnknownArchitecture

UNET = "model.diffusion_model."
VAE = "first_stage_model."
SD1_TEXT = "cond_stage_model.transformer."
SD2_TEXT = "cond_stage_model.model."
SDXL_TEXT_L = "conditioner.embedders.0.transformer."
SDXL_TEXT_G = "conditioner.embedders.1.model."
REFINER_TEXT_G = "conditioner.embedders.0.model."

FAMILY_LABELS = {"sd1": "SD1.x", "sd2": "SD2.x", "sdxl": "SDXL", "sdxl_refiner": "SDXL refiner"}
Shapes = Mapping[str, tuple[int, ...]]


@dataclass(frozen=True)
class TextEncoderSpec:
    """One text encoder: where its weights are, their layout, and the transformers config."""

    prefix: str
    layout: str  # "hf" (CLIP-L in transformers layout) or "open_clip"
    with_projection: bool
    config: Mapping[str, Any]
    pad_token: str  # tokenizer padding: "<|endoftext|>" for CLIP-L, "!" for OpenCLIP
    skip_last_layer: bool = False  # SD2: the file holds one more block than the model uses


@dataclass(frozen=True)
class ModelSpec:
    """What a checkpoint is, with diffusers configs for each component."""

    family: str
    prediction_type: str  # "epsilon" | "v_prediction"
    prediction_source: str  # "header" | "yaml" | "default" | "probe"
    inpaint: bool
    zero_terminal_snr: bool
    unet: Mapping[str, Any]
    vae: Mapping[str, Any] | None
    text_encoders: tuple[TextEncoderSpec, ...]
    scheduler: Mapping[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        """A readable name such as ``"SD2.x v-prediction inpainting"``."""
        parts = [FAMILY_LABELS[self.family]]
        if self.prediction_type == "v_prediction":
            parts.append("v-prediction")
        if self.inpaint:
            parts.append("inpainting")
        return " ".join(parts)

    @property
    def is_sdxl(self) -> bool:
        """SDXL base or refiner (size/crop conditioning, pooled embeddings)."""
        return self.family in ("sdxl", "sdxl_refiner")

    @property
    def latent_factor(self) -> int:
        """Pixels per latent cell (8 for real SD VAEs; the VAE's number of levels decides)."""
        levels = len((self.vae or {}).get("block_out_channels", (1, 2, 3, 4)))
        return 2 ** (levels - 1)

    @property
    def native_size(self) -> int:
        """Native image size in pixels (``sample_size`` of the UNet times the latent factor)."""
        return int(self.unet.get("sample_size", 64)) * self.latent_factor


def _indices(shapes: Shapes, pattern: str) -> list[int]:
    rx = re.compile(pattern)
    found = {int(m.group(1)) for k in shapes if (m := rx.match(k))}
    return sorted(found)


def detect_family(shapes: Shapes) -> str:
    """Family from the text-encoder and conditioning keys; raises :class:`UnknownArchitecture`."""
    has_unet = any(k.startswith(UNET) for k in shapes)
    if not has_unet:
        if any(k.startswith(("lora_unet_", "lora_te_", "lora_te1_")) for k in shapes):
            raise UnknownArchitecture("this is a LoRA file, not a checkpoint: put it in models/Lora")
        if any(k.startswith(("encoder.", "decoder.")) for k in shapes):
            raise UnknownArchitecture("this is a VAE file, not a checkpoint: put it in models/VAE")
        raise UnknownArchitecture("no Stable Diffusion UNet weights (model.diffusion_model.*) in this file")
    if any(k.startswith(SDXL_TEXT_G) for k in shapes):
        return "sdxl"
    if any(k.startswith(REFINER_TEXT_G) for k in shapes):
        return "sdxl_refiner"
    if any(k.startswith(SD2_TEXT) for k in shapes):
        return "sd2"
    if any(k.startswith(SD1_TEXT) for k in shapes):
        return "sd1"
    context = _context_dim(shapes)
    raise UnknownArchitecture(
        f"the checkpoint has no text encoder weights (cross-attention width {context}); "
        "UNet-only files are not supported"
    )


def _context_dim(shapes: Shapes) -> int | None:
    for k, s in shapes.items():
        if k.startswith(UNET) and k.endswith("attn2.to_k.weight"):
            return s[1]
    return None


def _need(shapes: Shapes, key: str) -> tuple[int, ...]:
    try:
        return shapes[key]
    except KeyError as e:
        raise CorruptCheckpoint(f"missing tensor {key!r}: the checkpoint is incomplete") from e


def infer_unet_config(
    shapes: Shapes, family: str, yaml_unet: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """diffusers ``UNet2DConditionModel`` config inferred from original-layout UNet shapes."""
    yaml_unet = yaml_unet or {}
    conv_in = _need(shapes, UNET + "input_blocks.0.0.weight")
    in_channels = conv_in[1]
    out_channels = _need(shapes, UNET + "out.2.weight")[0]

    levels: list[dict[str, Any]] = [{"res": 0, "channels": None, "attn": False, "depth": 0}]
    for i in _indices(shapes, re.escape(UNET) + r"input_blocks\.(\d+)\."):
        if i == 0:
            continue
        base = f"{UNET}input_blocks.{i}."
        if base + "0.op.weight" in shapes:
            levels.append({"res": 0, "channels": None, "attn": False, "depth": 0})
            continue
        lvl = levels[-1]
        lvl["res"] += 1
        lvl["channels"] = _need(shapes, base + "0.out_layers.3.weight")[0]
        depth = len(_indices(shapes, re.escape(base) + r"1\.transformer_blocks\.(\d+)\."))
        if depth:
            lvl["attn"] = True
            lvl["depth"] = depth
            lvl["linear"] = len(_need(shapes, base + "1.proj_in.weight")) == 2
            lvl["context"] = _need(shapes, base + "1.transformer_blocks.0.attn2.to_k.weight")[1]
    if any(lvl["channels"] is None for lvl in levels):
        raise CorruptCheckpoint("UNet input blocks are incomplete")
    channels = [lvl["channels"] for lvl in levels]
    layers_per_block = levels[0]["res"]
    attn_levels = [lvl for lvl in levels if lvl["attn"]]
    if not attn_levels:
        raise UnknownArchitecture("UNet has no cross-attention blocks")
    context_dim = attn_levels[0]["context"]
    mid_depth = len(_indices(shapes, re.escape(UNET) + r"middle_block\.1\.transformer_blocks\.(\d+)\."))

    num_heads = yaml_unet.get("num_heads")
    head_channels = yaml_unet.get("num_head_channels")
    if num_heads not in (None, -1):
        heads: int | list[int] = int(num_heads)
    elif head_channels not in (None, -1):
        heads = [max(1, c // int(head_channels)) for c in channels]
    elif family == "sd1":
        heads = 8
    else:
        heads = [max(1, c // 64) for c in channels]

    config: dict[str, Any] = {
        "_class_name": "UNet2DConditionModel",
        "sample_size": 64,
        "in_channels": in_channels,
        "out_channels": out_channels,
        "block_out_channels": channels,
        "layers_per_block": layers_per_block,
        "down_block_types": ["CrossAttnDownBlock2D" if lvl["attn"] else "DownBlock2D" for lvl in levels],
        "up_block_types": ["CrossAttnUpBlock2D" if lvl["attn"] else "UpBlock2D" for lvl in reversed(levels)],
        "mid_block_type": "UNetMidBlock2DCrossAttn",
        "cross_attention_dim": context_dim,
        "attention_head_dim": heads,
        "use_linear_projection": bool(attn_levels[0].get("linear")),
        "transformer_layers_per_block": _transformer_depths(levels, mid_depth),
        "norm_num_groups": 32,
        "upcast_attention": family == "sd2",
        "flip_sin_to_cos": True,
        "freq_shift": 0,
        "act_fn": "silu",
        "center_input_sample": False,
        "downsample_padding": 1,
        "mid_block_scale_factor": 1,
        "norm_eps": 1e-05,
    }
    adm = shapes.get(UNET + "label_emb.0.0.weight")
    if family in ("sdxl", "sdxl_refiner"):
        if adm is None:
            raise CorruptCheckpoint("SDXL UNet without its size/crop embedding (label_emb)")
        config["addition_embed_type"] = "text_time"
        config["sample_size"] = 128
    elif adm is not None:
        raise UnknownArchitecture("UNet with class/image embeddings (unCLIP-like) is not supported")
    return config


def _transformer_depths(levels: list[dict[str, Any]], mid_depth: int) -> int | list[int]:
    """diffusers' ``transformer_layers_per_block``: an int when every attention level (and the middle
    block) has the same depth, as in SD1/SD2 (1) and the SDXL refiner (4); else one value per level,
    where the middle block takes the last one (SDXL base: [1, 2, 10])."""
    attn_depths = {lvl["depth"] for lvl in levels if lvl["attn"]}
    if len(attn_depths) == 1 and mid_depth in (0, *attn_depths):
        return attn_depths.pop()
    depths = [lvl["depth"] if lvl["attn"] else 1 for lvl in levels]
    if mid_depth and depths[-1] != mid_depth:
        if levels[-1]["attn"]:
            raise UnknownArchitecture(f"unsupported UNet: middle block depth {mid_depth}")
        depths[-1] = mid_depth  # a level without attention ignores its depth
    return depths


def infer_vae_config(shapes: Shapes, family: str, scale_factor: float | None = None) -> dict[str, Any] | None:
    """diffusers ``AutoencoderKL`` config from ``first_stage_model.*`` shapes (None if absent)."""
    if VAE + "encoder.conv_in.weight" not in shapes:
        return None
    levels = _indices(shapes, re.escape(VAE) + r"encoder\.down\.(\d+)\.")
    channels = [_need(shapes, f"{VAE}encoder.down.{i}.block.0.conv2.weight")[0] for i in levels]
    per_block = len(_indices(shapes, re.escape(VAE) + r"encoder\.down\.0\.block\.(\d+)\."))
    latent = _need(shapes, VAE + "decoder.conv_in.weight")[1]
    in_ch = _need(shapes, VAE + "encoder.conv_in.weight")[1]
    out_ch = _need(shapes, VAE + "decoder.conv_out.weight")[0]
    sdxl = family in ("sdxl", "sdxl_refiner")
    return {
        "_class_name": "AutoencoderKL",
        "in_channels": in_ch,
        "out_channels": out_ch,
        "down_block_types": ["DownEncoderBlock2D"] * len(channels),
        "up_block_types": ["UpDecoderBlock2D"] * len(channels),
        "block_out_channels": channels,
        "layers_per_block": per_block,
        "act_fn": "silu",
        "latent_channels": latent,
        "norm_num_groups": 32,
        "sample_size": 1024 if sdxl else 512,
        "scaling_factor": scale_factor or (0.13025 if sdxl else 0.18215),
        "force_upcast": sdxl,
    }


def _hf_text_config(shapes: Shapes, prefix: str, act: str, projection: int | None) -> dict[str, Any]:
    tm = prefix + "text_model."
    vocab, hidden = _need(shapes, tm + "embeddings.token_embedding.weight")
    positions = _need(shapes, tm + "embeddings.position_embedding.weight")[0]
    layers = len(_indices(shapes, re.escape(tm) + r"encoder\.layers\.(\d+)\."))
    inter = _need(shapes, tm + "encoder.layers.0.mlp.fc1.weight")[0]
    return _clip_config(vocab, hidden, positions, layers, inter, act, projection, pad_token_id=1)


def _open_clip_text_config(shapes: Shapes, prefix: str, skip_last: bool) -> dict[str, Any]:
    vocab, hidden = _need(shapes, prefix + "token_embedding.weight")
    positions = _need(shapes, prefix + "positional_embedding")[0]
    layers = len(_indices(shapes, re.escape(prefix) + r"transformer\.resblocks\.(\d+)\."))
    inter = _need(shapes, prefix + "transformer.resblocks.0.mlp.c_fc.weight")[0]
    proj = shapes.get(prefix + "text_projection")
    return _clip_config(
        vocab,
        hidden,
        positions,
        layers - (1 if skip_last else 0),
        inter,
        "gelu",
        proj[1] if proj else None,
        pad_token_id=1,
    )


def _clip_config(
    vocab: int,
    hidden: int,
    positions: int,
    layers: int,
    inter: int,
    act: str,
    projection: int | None,
    pad_token_id: int,
) -> dict[str, Any]:
    if layers < 1:
        raise CorruptCheckpoint("text encoder has no transformer layers")
    return {
        "vocab_size": vocab,
        "hidden_size": hidden,
        "intermediate_size": inter,
        "num_hidden_layers": layers,
        "num_attention_heads": max(1, hidden // 64),
        "max_position_embeddings": positions,
        "hidden_act": act,
        "layer_norm_eps": 1e-05,
        "projection_dim": projection or hidden,
        "pad_token_id": pad_token_id,
        "bos_token_id": 0,
        "eos_token_id": 2,
        "attention_dropout": 0.0,
        "dropout": 0.0,
        "initializer_factor": 1.0,
        "initializer_range": 0.02,
    }


def infer_text_encoders(shapes: Shapes, family: str) -> tuple[TextEncoderSpec, ...]:
    """The text encoder(s) of a family with configs inferred from shapes."""
    if family == "sd1":
        return (
            TextEncoderSpec(
                SD1_TEXT, "hf", False, _hf_text_config(shapes, SD1_TEXT, "quick_gelu", None), "<|endoftext|>"
            ),
        )
    if family == "sd2":
        return (
            TextEncoderSpec(
                SD2_TEXT, "open_clip", False, _open_clip_text_config(shapes, SD2_TEXT, True), "!", True
            ),
        )
    if family == "sdxl":
        return (
            TextEncoderSpec(
                SDXL_TEXT_L,
                "hf",
                False,
                _hf_text_config(shapes, SDXL_TEXT_L, "quick_gelu", None),
                "<|endoftext|>",
            ),
            TextEncoderSpec(
                SDXL_TEXT_G, "open_clip", True, _open_clip_text_config(shapes, SDXL_TEXT_G, False), "!"
            ),
        )
    return (
        TextEncoderSpec(
            REFINER_TEXT_G, "open_clip", True, _open_clip_text_config(shapes, REFINER_TEXT_G, False), "!"
        ),
    )


def _header_prediction(shapes: Shapes, metadata: Mapping[str, str]) -> str | None:
    pred = (metadata.get("modelspec.prediction_type") or "").lower()
    if pred in ("v", "v_prediction", "v-prediction"):
        return "v_prediction"
    if pred in ("epsilon", "eps"):
        return "epsilon"
    if str(metadata.get("ss_v_parameterization", "")).lower() == "true" or "v_pred" in shapes:
        return "v_prediction"
    return None


def _metadata_resolution(metadata: Mapping[str, str]) -> int | None:
    """The training resolution from Stability's ``modelspec.resolution`` metadata ("1024x1024")."""
    value = str(metadata.get("modelspec.resolution", ""))
    width, sep, _height = value.partition("x")
    return int(width) if sep and width.isdigit() and int(width) > 0 else None


def read_yaml_override(checkpoint: Path) -> dict[str, Any] | None:
    """The ``<checkpoint>.yaml`` beside a checkpoint (A1111's per-model config), if there is one."""
    for candidate in (checkpoint.with_suffix(".yaml"), checkpoint.with_suffix(".yml")):
        if candidate.is_file():
            try:
                data = yaml.safe_load(candidate.read_text(encoding="utf-8"))
            except (OSError, yaml.YAMLError) as e:
                raise CorruptCheckpoint(f"{candidate.name}: cannot read the model config ({e})") from e
            return data if isinstance(data, dict) else None
    return None


def detect(
    shapes: Shapes, metadata: Mapping[str, str] | None = None, yaml_config: Mapping[str, Any] | None = None
) -> ModelSpec:
    """Detect the architecture from keys and shapes (plus safetensors metadata and an optional yaml)."""
    metadata = metadata or {}
    family = detect_family(shapes)
    params = ((yaml_config or {}).get("model") or {}).get("params") or {}
    yaml_unet = (params.get("unet_config") or {}).get("params") or {}

    prediction = _header_prediction(shapes, metadata)
    source = "header"
    if params.get("parameterization") in ("v", "eps"):
        prediction = "v_prediction" if params["parameterization"] == "v" else "epsilon"
        source = "yaml"
    if prediction is None:
        prediction = "epsilon"
        source = "default"
    ztsnr = "ztsnr" in shapes or str(metadata.get("modelspec.zero_terminal_snr", "")).lower() == "true"

    unet = infer_unet_config(shapes, family, yaml_unet)
    if family == "sd2" and prediction == "v_prediction":
        unet["sample_size"] = 96
    vae = infer_vae_config(shapes, family, float(scale) if (scale := params.get("scale_factor")) else None)
    resolution = _metadata_resolution(metadata)
    if resolution and vae:
        unet["sample_size"] = resolution // 2 ** (len(vae["block_out_channels"]) - 1)
    encoders = infer_text_encoders(shapes, family)
    if family in ("sdxl", "sdxl_refiner"):
        adm_in = _need(shapes, UNET + "label_emb.0.0.weight")[1]
        pooled = encoders[-1].config["projection_dim"]
        n_ids = 6 if family == "sdxl" else 5
        time_dim, rest = divmod(adm_in - pooled, n_ids)
        if rest or time_dim <= 0:
            raise UnknownArchitecture(
                f"SDXL size embedding of width {adm_in} does not fit pooled width {pooled}"
            )
        unet["addition_time_embed_dim"] = time_dim
        unet["projection_class_embeddings_input_dim"] = adm_in
    unet_context = unet["cross_attention_dim"]
    text_width = (
        sum(e.config["hidden_size"] for e in encoders)
        if family == "sdxl"
        else encoders[0].config["hidden_size"]
    )
    if unet_context != text_width:
        raise UnknownArchitecture(
            f"UNet cross-attention width {unet_context} does not match the text encoder width {text_width}"
        )
    scheduler = {
        "num_train_timesteps": int(params.get("timesteps", 1000)),
        "beta_start": float(params.get("linear_start", 0.00085)),
        "beta_end": float(params.get("linear_end", 0.012)),
        "beta_schedule": "scaled_linear",
    }
    return ModelSpec(
        family=family,
        prediction_type=prediction,
        prediction_source=source,
        inpaint=unet["in_channels"] == 9,
        zero_terminal_snr=ztsnr,
        unet=unet,
        vae=vae,
        text_encoders=encoders,
        scheduler=scheduler,
    )
