"""Export diffusers/transformers components to the original single-file (CompVis/Stability) key layout.

Community checkpoints for SD1.x, SD2.x and SDXL store every component in one state dict with the key
names of the original LDM/SGM code: ``model.diffusion_model.*`` (UNet), ``first_stage_model.*`` (VAE) and
the text encoders under ``cond_stage_model.*`` (SD1/SD2) or ``conditioner.embedders.N.*`` (SDXL).
diffusers converts that layout into its own; this module goes the other way, so that the project can ship
its own single-file demo model and tests can write small real checkpoints.

Every function only renames, fuses, transposes or reshapes tensors, so it works on ``meta`` tensors too:
a full-size layout (keys and shapes) can be produced without allocating any weights.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

import torch
from safetensors.torch import save_file

FAMILIES = ("sd1", "sd2", "sdxl", "sdxl_refiner")
PREDICTION_TYPES = ("epsilon", "v")
UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
SD1_CLIP_PREFIX = "cond_stage_model.transformer."
SD2_OPEN_CLIP_PREFIX = "cond_stage_model.model."
SDXL_CLIP_PREFIX = "conditioner.embedders.0.transformer."
SDXL_OPEN_CLIP_PREFIX = "conditioner.embedders.1.model."
REFINER_OPEN_CLIP_PREFIX = "conditioner.embedders.0.model."
V_PRED_KEY = "v_pred"
ZTSNR_KEY = "ztsnr"
PREDICTION_TYPE_METADATA_KEY = "modelspec.prediction_type"

# OpenCLIP stores logit_scale as log(1 / 0.07) at init and clamps it at log(100) when training.
_OPEN_CLIP_LOGIT_SCALE = math.log(100.0)

_UNET_FIXED_KEYS = (
    ("time_embedding.linear_1.", "time_embed.0."),
    ("time_embedding.linear_2.", "time_embed.2."),
    ("add_embedding.linear_1.", "label_emb.0.0."),
    ("add_embedding.linear_2.", "label_emb.0.2."),
    ("class_embedding.linear_1.", "label_emb.0.0."),
    ("class_embedding.linear_2.", "label_emb.0.2."),
    ("conv_in.", "input_blocks.0.0."),
    ("conv_norm_out.", "out.0."),
    ("conv_out.", "out.2."),
)
_UNET_RESNET_PARTS = (
    ("norm1.", "in_layers.0."),
    ("conv1.", "in_layers.2."),
    ("norm2.", "out_layers.0."),
    ("conv2.", "out_layers.3."),
    ("time_emb_proj.", "emb_layers.1."),
    ("conv_shortcut.", "skip_connection."),
)
_UNET_PATTERN = re.compile(
    r"^(down_blocks|up_blocks)\.(\d+)\.(resnets|attentions|downsamplers|upsamplers)\.(\d+)\.(.+)$"
)
_UNET_MID_PATTERN = re.compile(r"^mid_block\.(resnets|attentions)\.(\d+)\.(.+)$")

_VAE_FIXED_KEYS = (
    ("conv_norm_out.", "norm_out."),
    ("conv_in.", "conv_in."),
    ("conv_out.", "conv_out."),
)
_VAE_ATTENTION_PARTS = (
    ("group_norm.", "norm."),
    ("to_q.", "q."),
    ("to_k.", "k."),
    ("to_v.", "v."),
    ("to_out.0.", "proj_out."),
    # names used by diffusers before the attention refactor
    ("query.", "q."),
    ("key.", "k."),
    ("value.", "v."),
    ("proj_attn.", "proj_out."),
)
_VAE_PATTERN = re.compile(
    r"^(encoder|decoder)\.(down_blocks|up_blocks)\.(\d+)\.(resnets|downsamplers|upsamplers)\.(\d+)\.(.+)$"
)
_VAE_MID_PATTERN = re.compile(r"^(encoder|decoder)\.mid_block\.(resnets|attentions)\.(\d+)\.(.+)$")

_OPEN_CLIP_TOP_KEYS = MappingProxyType(
    {
        "embeddings.token_embedding.weight": "token_embedding.weight",
        "embeddings.position_embedding.weight": "positional_embedding",
        "final_layer_norm.weight": "ln_final.weight",
        "final_layer_norm.bias": "ln_final.bias",
    }
)
_OPEN_CLIP_LAYER_PARTS = (
    ("layer_norm1.", "ln_1."),
    ("layer_norm2.", "ln_2."),
    ("mlp.fc1.", "mlp.c_fc."),
    ("mlp.fc2.", "mlp.c_proj."),
    ("self_attn.out_proj.", "attn.out_proj."),
)
_OPEN_CLIP_LAYER_PATTERN = re.compile(r"^encoder\.layers\.(\d+)\.(.+)$")
_QKV = ("q_proj", "k_proj", "v_proj")


def _replace_prefix(name: str, table: tuple[tuple[str, str], ...]) -> str | None:
    for old, new in table:
        if name.startswith(old):
            return new + name[len(old) :]
    return None


def _unknown_key(component: str, key: str) -> ValueError:
    return ValueError(f"{component}: no single-file name is known for the diffusers key {key!r}")


def _unet_key(key: str, config: Mapping[str, Any]) -> str:
    fixed = _replace_prefix(key, _UNET_FIXED_KEYS)
    if fixed is not None:
        return fixed
    per_level = int(config["layers_per_block"])
    match = _UNET_PATTERN.match(key)
    if match:
        blocks, level, kind, index, rest = match.groups()
        level, index = int(level), int(index)
        if blocks == "down_blocks":
            # input_blocks.0 is conv_in; each level then holds per_level layers and one downsampler.
            first = 1 + level * (per_level + 1)
            if kind == "resnets":
                return f"input_blocks.{first + index}.0.{_resnet_rest(rest, key)}"
            if kind == "attentions":
                return f"input_blocks.{first + index}.1.{rest}"
            return f"input_blocks.{first + per_level}.0.op.{rest.removeprefix('conv.')}"
        first = level * (per_level + 1)
        if kind == "resnets":
            return f"output_blocks.{first + index}.0.{_resnet_rest(rest, key)}"
        if kind == "attentions":
            return f"output_blocks.{first + index}.1.{rest}"
        has_attention = "CrossAttn" in str(config["up_block_types"][level])
        return f"output_blocks.{first + per_level}.{2 if has_attention else 1}.{rest}"
    match = _UNET_MID_PATTERN.match(key)
    if match:
        kind, index, rest = match.groups()
        if kind == "resnets":
            return f"middle_block.{2 * int(index)}.{_resnet_rest(rest, key)}"
        return f"middle_block.1.{rest}"
    raise _unknown_key("unet", key)


def _resnet_rest(rest: str, key: str) -> str:
    renamed = _replace_prefix(rest, _UNET_RESNET_PARTS)
    if renamed is None:
        raise _unknown_key("unet", key)
    return renamed


def unet_to_ldm(state_dict: Mapping[str, torch.Tensor], config: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Rename a diffusers ``UNet2DConditionModel`` state dict to ``model.diffusion_model.*`` keys.

    Args:
        state_dict: the UNet's ``state_dict()``.
        config: its config (``unet.config``); ``layers_per_block`` and ``up_block_types`` are used.

    Returns:
        A new dict with the same tensors under the original LDM/SGM names.

    Raises:
        ValueError: a key has no known single-file name (an unsupported UNet variant).
    """
    return {UNET_PREFIX + _unet_key(key, config): tensor for key, tensor in state_dict.items()}


def _vae_key(key: str, levels: int) -> str:
    coder, _, rest = key.partition(".")
    if coder in ("quant_conv", "post_quant_conv"):
        return key
    fixed = _replace_prefix(rest, _VAE_FIXED_KEYS)
    if coder in ("encoder", "decoder") and fixed is not None:
        return f"{coder}.{fixed}"
    match = _VAE_PATTERN.match(key)
    if match:
        coder, _, level, kind, index, rest = match.groups()
        if coder == "encoder":
            block = f"encoder.down.{level}"
        else:
            # the original decoder numbers its levels from the lowest resolution up
            block = f"decoder.up.{levels - 1 - int(level)}"
        if kind == "resnets":
            return f"{block}.block.{index}.{_vae_resnet_rest(rest)}"
        sampler = "downsample" if kind == "downsamplers" else "upsample"
        return f"{block}.{sampler}.{rest}"
    match = _VAE_MID_PATTERN.match(key)
    if match:
        coder, kind, index, rest = match.groups()
        if kind == "resnets":
            return f"{coder}.mid.block_{int(index) + 1}.{_vae_resnet_rest(rest)}"
        renamed = _replace_prefix(rest, _VAE_ATTENTION_PARTS)
        if renamed is None:
            raise _unknown_key("vae", key)
        return f"{coder}.mid.attn_1.{renamed}"
    raise _unknown_key("vae", key)


def _vae_resnet_rest(rest: str) -> str:
    return rest.replace("conv_shortcut.", "nin_shortcut.", 1) if rest.startswith("conv_shortcut.") else rest


def vae_to_ldm(state_dict: Mapping[str, torch.Tensor], config: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Rename a diffusers ``AutoencoderKL`` state dict to ``first_stage_model.*`` keys.

    The mid-block attention projections become 1x1 convolutions (4-D weights), as the original stores them.

    Args:
        state_dict: the VAE's ``state_dict()``.
        config: its config (``vae.config``); the number of ``block_out_channels`` is used.
    """
    levels = len(config["block_out_channels"])
    exported: dict[str, torch.Tensor] = {}
    for key, tensor in state_dict.items():
        name = _vae_key(key, levels)
        if ".mid.attn_1." in name and name.endswith(".weight") and tensor.ndim == 2:
            tensor = tensor[:, :, None, None]
        exported[VAE_PREFIX + name] = tensor
    return exported


def _text_model_keys(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Strip the optional ``text_model.`` level: CLIPTextModel in transformers >= 5.6 no longer has it."""
    return {key.removeprefix("text_model."): tensor for key, tensor in state_dict.items()}


def clip_to_ldm(state_dict: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """Put an OpenAI CLIP-L text encoder (HF ``CLIPTextModel`` keys) under ``prefix + "text_model."``.

    Args:
        state_dict: the text encoder's ``state_dict()``, with or without the ``text_model.`` level.
        prefix: e.g. ``"cond_stage_model.transformer."`` (SD1) or ``"conditioner.embedders.0.transformer."``.
    """
    exported: dict[str, torch.Tensor] = {}
    for key, tensor in _text_model_keys(state_dict).items():
        if key.startswith("text_projection."):
            raise _unknown_key("clip", key)
        exported[f"{prefix}text_model.{key}"] = tensor
    return exported


def open_clip_block_names() -> tuple[str, ...]:
    """The tensor names of one OpenCLIP resblock, relative to ``transformer.resblocks.N.``."""
    return (
        "ln_1.weight",
        "ln_1.bias",
        "attn.in_proj_weight",
        "attn.in_proj_bias",
        "attn.out_proj.weight",
        "attn.out_proj.bias",
        "ln_2.weight",
        "ln_2.bias",
        "mlp.c_fc.weight",
        "mlp.c_fc.bias",
        "mlp.c_proj.weight",
        "mlp.c_proj.bias",
    )


def blank_open_clip_block(
    hidden_size: int,
    intermediate_size: int,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    generator: torch.Generator | None = None,
) -> dict[str, torch.Tensor]:
    """Weights for the final OpenCLIP resblock that SD2 files carry but SD2 never runs.

    Zeros (layer-norm scales of one) by default, normal noise of std 0.02 when a generator is given.
    On the ``meta`` device only the shapes exist.
    """
    shapes = {
        "ln_1.weight": (hidden_size,),
        "ln_1.bias": (hidden_size,),
        "attn.in_proj_weight": (3 * hidden_size, hidden_size),
        "attn.in_proj_bias": (3 * hidden_size,),
        "attn.out_proj.weight": (hidden_size, hidden_size),
        "attn.out_proj.bias": (hidden_size,),
        "ln_2.weight": (hidden_size,),
        "ln_2.bias": (hidden_size,),
        "mlp.c_fc.weight": (intermediate_size, hidden_size),
        "mlp.c_fc.bias": (intermediate_size,),
        "mlp.c_proj.weight": (hidden_size, intermediate_size),
        "mlp.c_proj.bias": (hidden_size,),
    }
    block: dict[str, torch.Tensor] = {}
    for name, shape in shapes.items():
        if generator is not None and str(device) != "meta":
            block[name] = 0.02 * torch.randn(shape, generator=generator, dtype=dtype).to(device)
        elif name.startswith("ln_") and name.endswith(".weight"):
            block[name] = torch.ones(shape, device=device, dtype=dtype)
        else:
            block[name] = torch.zeros(shape, device=device, dtype=dtype)
    return block


def open_clip_to_ldm(
    state_dict: Mapping[str, torch.Tensor],
    prefix: str,
    extra_final_layer: Mapping[str, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """Convert an HF ``CLIPTextModel[WithProjection]`` state dict to the OpenCLIP layout under ``prefix``.

    q/k/v projections are fused into ``attn.in_proj_weight``/``in_proj_bias`` (in that order) and the
    projection is stored transposed as ``text_projection`` (OpenCLIP computes ``x @ text_projection``).

    Args:
        state_dict: the text encoder's ``state_dict()``, with or without the ``text_model.`` level.
        prefix: e.g. ``"cond_stage_model.model."`` (SD2) or ``"conditioner.embedders.1.model."`` (SDXL).
        extra_final_layer: tensors of one more resblock (names of :func:`open_clip_block_names`),
            appended after the last layer. SD2 files hold 24 blocks while SD2 only runs 23.

    Raises:
        ValueError: an unknown key, a layer without q/k/v, or an extra layer with wrong names or shapes.
    """
    exported: dict[str, torch.Tensor] = {}
    pending_qkv: dict[int, dict[str, torch.Tensor]] = {}
    for key, tensor in _text_model_keys(state_dict).items():
        top = _OPEN_CLIP_TOP_KEYS.get(key)
        if top is not None:
            exported[prefix + top] = tensor
            continue
        if key == "text_projection.weight":
            exported[prefix + "text_projection"] = tensor.T.contiguous()
            continue
        match = _OPEN_CLIP_LAYER_PATTERN.match(key)
        if not match:
            raise _unknown_key("open_clip", key)
        layer, rest = int(match.group(1)), match.group(2)
        block = f"{prefix}transformer.resblocks.{layer}."
        if rest.startswith("self_attn.") and rest.split(".")[1] in _QKV:
            pending_qkv.setdefault(layer, {})[rest.removeprefix("self_attn.")] = tensor
            continue
        renamed = _replace_prefix(rest, _OPEN_CLIP_LAYER_PARTS)
        if renamed is None:
            raise _unknown_key("open_clip", key)
        exported[block + renamed] = tensor
    for layer, parts in sorted(pending_qkv.items()):
        block = f"{prefix}transformer.resblocks.{layer}."
        for kind, fused in (("weight", "attn.in_proj_weight"), ("bias", "attn.in_proj_bias")):
            names = [f"{proj}.{kind}" for proj in _QKV]
            missing = [name for name in names if name not in parts]
            if missing:
                raise ValueError(f"open_clip: layer {layer} lacks {', '.join(missing)}")
            exported[block + fused] = torch.cat([parts[name] for name in names], dim=0)
    if extra_final_layer is not None:
        _append_final_block(exported, prefix, len(pending_qkv), extra_final_layer)
    return exported


def _append_final_block(
    exported: dict[str, torch.Tensor], prefix: str, layers: int, block: Mapping[str, torch.Tensor]
) -> None:
    expected = set(open_clip_block_names())
    if set(block) != expected:
        raise ValueError(
            "extra_final_layer: expected exactly the names "
            f"{', '.join(sorted(expected))}; got {', '.join(sorted(block)) or 'none'}"
        )
    for name, tensor in block.items():
        reference = exported.get(f"{prefix}transformer.resblocks.0.{name}")
        if reference is not None and tuple(reference.shape) != tuple(tensor.shape):
            raise ValueError(
                f"extra_final_layer: {name} has shape {tuple(tensor.shape)}, the other blocks "
                f"{tuple(reference.shape)}"
            )
        exported[f"{prefix}transformer.resblocks.{layers}.{name}"] = tensor


def _check_choice(field: str, value: str, valid: tuple[str, ...]) -> None:
    if value not in valid:
        raise ValueError(f"{field}: unknown value {value!r}; valid values are {', '.join(valid)}")


def _module_parts(module: torch.nn.Module) -> tuple[dict[str, torch.Tensor], Mapping[str, Any]]:
    return module.state_dict(), getattr(module, "config", {})


def _clip_extras(exported: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """``position_ids``, which real CLIP-L entries carry (transformers no longer saves it)."""
    position = exported[f"{prefix}text_model.embeddings.position_embedding.weight"]
    ids = torch.arange(position.shape[0], dtype=torch.int64, device=position.device)[None]
    return {f"{prefix}text_model.embeddings.position_ids": ids}


def _open_clip_extras(
    exported: Mapping[str, torch.Tensor], prefix: str, with_projection: bool
) -> dict[str, torch.Tensor]:
    """``logit_scale`` (and for SD2 an identity ``text_projection``), which real OpenCLIP entries carry."""
    token = exported[prefix + "token_embedding.weight"]
    extras = {
        prefix + "logit_scale": torch.full((), _OPEN_CLIP_LOGIT_SCALE, dtype=token.dtype, device=token.device)
    }
    if with_projection and prefix + "text_projection" not in exported:
        extras[prefix + "text_projection"] = torch.eye(token.shape[1], dtype=token.dtype, device=token.device)
    return extras


def single_file_state_dict(
    family: str,
    unet: torch.nn.Module,
    vae: torch.nn.Module,
    text_encoder: torch.nn.Module | None,
    text_encoder_2: torch.nn.Module | None = None,
    *,
    prediction_type: str = "epsilon",
    zero_terminal_snr: bool = False,
    sd2_final_layer: Mapping[str, torch.Tensor] | None = None,
    dtype: torch.dtype | None = None,
) -> dict[str, torch.Tensor]:
    """Build the complete single-file state dict of one model, as real checkpoint files hold it.

    Args:
        family: ``"sd1"``, ``"sd2"``, ``"sdxl"`` or ``"sdxl_refiner"``; inpainting models are the same
            families with a 9-channel UNet.
        unet, vae: diffusers ``UNet2DConditionModel`` and ``AutoencoderKL``.
        text_encoder: CLIP-L (``sd1``, ``sdxl``) or the OpenCLIP-H ``CLIPTextModel`` (``sd2``); ``None``
            for ``sdxl_refiner``.
        text_encoder_2: the OpenCLIP-bigG ``CLIPTextModelWithProjection`` (``sdxl``, ``sdxl_refiner``).
        prediction_type: ``"epsilon"`` or ``"v"``; SDXL families get the ``v_pred`` marker key for ``"v"``.
        zero_terminal_snr: add the ``ztsnr`` marker key (SDXL families, v-prediction only).
        sd2_final_layer: the unused 24th OpenCLIP block for ``sd2`` (:func:`blank_open_clip_block` when
            ``None``).
        dtype: cast floating-point tensors to this dtype.

    Raises:
        ValueError: an unknown family or prediction type, or missing/extra text encoders.
    """
    _check_choice("family", family, FAMILIES)
    _check_choice("prediction_type", prediction_type, PREDICTION_TYPES)
    if zero_terminal_snr and prediction_type != "v":
        raise ValueError("zero_terminal_snr: only meaningful with prediction_type 'v'")
    needs_first = family != "sdxl_refiner"
    needs_second = family in ("sdxl", "sdxl_refiner")
    if (text_encoder is not None) != needs_first:
        raise ValueError(
            f"text_encoder: family {family!r} {'needs' if needs_first else 'takes no'} text_encoder"
        )
    if (text_encoder_2 is not None) != needs_second:
        raise ValueError(
            f"text_encoder_2: family {family!r} {'needs' if needs_second else 'takes no'} text_encoder_2"
        )

    exported = unet_to_ldm(*_module_parts(unet))
    exported.update(vae_to_ldm(*_module_parts(vae)))
    if family == "sd1":
        exported.update(_clip_with_extras(text_encoder, SD1_CLIP_PREFIX))
    elif family == "sd2":
        config = text_encoder.config
        final = sd2_final_layer
        if final is None:
            token = text_encoder.get_input_embeddings().weight
            final = blank_open_clip_block(
                config.hidden_size, config.intermediate_size, device=token.device, dtype=token.dtype
            )
        clip = open_clip_to_ldm(text_encoder.state_dict(), SD2_OPEN_CLIP_PREFIX, final)
        clip.update(_open_clip_extras(clip, SD2_OPEN_CLIP_PREFIX, with_projection=True))
        exported.update(clip)
    else:
        if family == "sdxl":
            exported.update(_clip_with_extras(text_encoder, SDXL_CLIP_PREFIX))
            prefix = SDXL_OPEN_CLIP_PREFIX
        else:
            prefix = REFINER_OPEN_CLIP_PREFIX
        clip = open_clip_to_ldm(text_encoder_2.state_dict(), prefix)
        clip.update(_open_clip_extras(clip, prefix, with_projection=False))
        exported.update(clip)
        marker_device = exported[UNET_PREFIX + "input_blocks.0.0.weight"].device
        if prediction_type == "v":
            exported[V_PRED_KEY] = torch.zeros(0, device=marker_device)
        if zero_terminal_snr:
            exported[ZTSNR_KEY] = torch.zeros(0, device=marker_device)

    if dtype is not None:
        exported = {
            key: tensor.to(dtype) if tensor.is_floating_point() else tensor
            for key, tensor in exported.items()
        }
    return exported


def _clip_with_extras(text_encoder: torch.nn.Module, prefix: str) -> dict[str, torch.Tensor]:
    clip = clip_to_ldm(text_encoder.state_dict(), prefix)
    clip.update(_clip_extras(clip, prefix))
    return clip


def export_single_file(
    path: str | Path,
    family: str,
    unet: torch.nn.Module,
    vae: torch.nn.Module,
    text_encoder: torch.nn.Module | None,
    text_encoder_2: torch.nn.Module | None = None,
    metadata: Mapping[str, str] | None = None,
    dtype: torch.dtype | None = None,
    *,
    prediction_type: str = "epsilon",
    zero_terminal_snr: bool = False,
    sd2_final_layer: Mapping[str, torch.Tensor] | None = None,
) -> Path:
    """Write the components as one ``.safetensors`` checkpoint in the original single-file layout.

    ``prediction_type="v"`` also writes the metadata ``{"modelspec.prediction_type": "v"}``. The other
    arguments are those of :func:`single_file_state_dict`; ``metadata`` values must be strings.

    Returns:
        The path written.
    """
    header: dict[str, str] = {}
    for key, value in (metadata or {}).items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise ValueError(
                f"metadata: keys and values must be strings; {key!r} maps to {type(value).__name__}"
            )
        header[key] = value
    state_dict = single_file_state_dict(
        family,
        unet,
        vae,
        text_encoder,
        text_encoder_2,
        prediction_type=prediction_type,
        zero_terminal_snr=zero_terminal_snr,
        sd2_final_layer=sd2_final_layer,
        dtype=dtype,
    )
    if prediction_type == "v":
        header[PREDICTION_TYPE_METADATA_KEY] = "v"
    target = Path(path)
    save_file({key: tensor.contiguous() for key, tensor in state_dict.items()}, str(target), metadata=header)
    return target
