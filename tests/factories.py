"""Test helpers: tiny real models, single-file checkpoints and full-size "stripped" layouts.

The tiny configs follow the rules a shape-based loader relies on (UNet widths multiple of 32 with 32 norm
groups, heads of 64 channels for SD2/SDXL, the real CLIP vocabulary ...), so a checkpoint written here can
be read back through the same code path as a real community checkpoint. The full-size configs are those of
SD1.5, SD2.1, SDXL base 1.0 and the SDXL refiner, built on the ``meta`` device (no weights allocated).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

import diffusers
import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    EulerDiscreteScheduler,
    PNDMScheduler,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from webui.models.ldm_export import (
    FAMILIES,
    PREDICTION_TYPES,
    blank_open_clip_block,
    export_single_file,
    single_file_state_dict,
)

CHECKPOINT_FORMATS = ("safetensors", "ckpt")


def _frozen(config: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
    return None if config is None else MappingProxyType(dict(config))


def _text_config(
    hidden: int, layers: int, act: str, *, pad: int, projection: int | None = None
) -> Mapping[str, Any]:
    config = {
        "vocab_size": 49408,
        "max_position_embeddings": 77,
        "hidden_size": hidden,
        "intermediate_size": 4 * hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": hidden // 64,
        "hidden_act": act,
        "pad_token_id": pad,
        "bos_token_id": 49406,
        "eos_token_id": 49407,
    }
    if projection is not None:
        config["projection_dim"] = projection
    return _frozen(config)


def _vae_config(widths: tuple[int, ...], layers: int, scaling: float, sample: int) -> Mapping[str, Any]:
    return _frozen(
        {
            "in_channels": 3,
            "out_channels": 3,
            "down_block_types": ("DownEncoderBlock2D",) * len(widths),
            "up_block_types": ("UpDecoderBlock2D",) * len(widths),
            "block_out_channels": widths,
            "layers_per_block": layers,
            "latent_channels": 4,
            "norm_num_groups": 32,
            "sample_size": sample,
            "scaling_factor": scaling,
        }
    )


def _unet_config(
    widths: tuple[int, ...],
    attention: tuple[bool, ...],
    *,
    layers: int,
    cross: int,
    heads: int | tuple[int, ...],
    linear: bool,
    sample: int,
    depth: int | tuple[int, ...] = 1,
    time_embed_dim: int | None = None,
    add_input_dim: int | None = None,
) -> Mapping[str, Any]:
    config: dict[str, Any] = {
        "sample_size": sample,
        "in_channels": 4,
        "out_channels": 4,
        "down_block_types": tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attention),
        "up_block_types": tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention)),
        "block_out_channels": widths,
        "layers_per_block": layers,
        "norm_num_groups": 32,
        "cross_attention_dim": cross,
        "attention_head_dim": heads,
        "use_linear_projection": linear,
        "transformer_layers_per_block": depth,
    }
    if time_embed_dim is not None:
        config.update(
            addition_embed_type="text_time",
            addition_time_embed_dim=time_embed_dim,
            projection_class_embeddings_input_dim=add_input_dim,
        )
    return _frozen(config)


def _heads_of_64(widths: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(width // 64 for width in widths)


def _family(unet: Mapping, vae: Mapping, text: Mapping | None, text_2: Mapping | None) -> Mapping[str, Any]:
    return MappingProxyType({"unet": unet, "vae": vae, "text_encoder": text, "text_encoder_2": text_2})


_SD_SCALING = 0.18215
_SDXL_SCALING = 0.13025

TINY_CONFIGS: Mapping[str, Mapping[str, Mapping[str, Any] | None]] = MappingProxyType(
    {
        "sd1": _family(
            _unet_config((32, 64), (True, False), layers=1, cross=64, heads=8, linear=False, sample=64),
            _vae_config((32, 64), 1, _SD_SCALING, 512),
            _text_config(64, 2, "quick_gelu", pad=49407),
            None,
        ),
        "sd2": _family(
            _unet_config(
                (64, 128),
                (True, False),
                layers=1,
                cross=64,
                heads=_heads_of_64((64, 128)),
                linear=True,
                sample=96,
            ),
            _vae_config((32, 64), 1, _SD_SCALING, 768),
            _text_config(64, 2, "gelu", pad=0),
            None,
        ),
        "sdxl": _family(
            _unet_config(
                (64, 128),
                (False, True),
                layers=2,
                cross=64 + 128,
                heads=_heads_of_64((64, 128)),
                linear=True,
                sample=128,
                depth=(1, 2),
                time_embed_dim=8,
                add_input_dim=128 + 6 * 8,
            ),
            _vae_config((32, 64), 1, _SDXL_SCALING, 1024),
            _text_config(64, 2, "quick_gelu", pad=49407),
            _text_config(128, 2, "gelu", pad=0, projection=128),
        ),
        "sdxl_refiner": _family(
            _unet_config(
                (64, 128),
                (False, True),
                layers=2,
                cross=128,
                heads=_heads_of_64((64, 128)),
                linear=True,
                sample=128,
                depth=(1, 2),
                time_embed_dim=8,
                add_input_dim=128 + 5 * 8,
            ),
            _vae_config((32, 64), 1, _SDXL_SCALING, 1024),
            None,
            _text_config(128, 2, "gelu", pad=0, projection=128),
        ),
    }
)

_SD_UNET_WIDTHS = (320, 640, 1280, 1280)
_SDXL_UNET_WIDTHS = (320, 640, 1280)
_REFINER_UNET_WIDTHS = (384, 768, 1536, 1536)
_FULL_VAE_WIDTHS = (128, 256, 512, 512)
_CLIP_L = _text_config(768, 12, "quick_gelu", pad=49407, projection=768)

FULL_SIZE_CONFIGS: Mapping[str, Mapping[str, Mapping[str, Any] | None]] = MappingProxyType(
    {
        "sd1": _family(
            _unet_config(
                _SD_UNET_WIDTHS,
                (True, True, True, False),
                layers=2,
                cross=768,
                heads=8,
                linear=False,
                sample=64,
            ),
            _vae_config(_FULL_VAE_WIDTHS, 2, _SD_SCALING, 512),
            _CLIP_L,
            None,
        ),
        "sd2": _family(
            _unet_config(
                _SD_UNET_WIDTHS,
                (True, True, True, False),
                layers=2,
                cross=1024,
                heads=_heads_of_64(_SD_UNET_WIDTHS),
                linear=True,
                sample=96,
            ),
            _vae_config(_FULL_VAE_WIDTHS, 2, _SD_SCALING, 768),
            # OpenCLIP-H has 24 blocks; diffusers keeps the 23 that SD2 runs (the 24th is exported blank).
            _text_config(1024, 23, "gelu", pad=0, projection=512),
            None,
        ),
        "sdxl": _family(
            _unet_config(
                _SDXL_UNET_WIDTHS,
                (False, True, True),
                layers=2,
                cross=2048,
                heads=_heads_of_64(_SDXL_UNET_WIDTHS),
                linear=True,
                sample=128,
                depth=(1, 2, 10),
                time_embed_dim=256,
                add_input_dim=2816,
            ),
            _vae_config(_FULL_VAE_WIDTHS, 2, _SDXL_SCALING, 1024),
            _CLIP_L,
            _text_config(1280, 32, "gelu", pad=0, projection=1280),
        ),
        "sdxl_refiner": _family(
            _unet_config(
                _REFINER_UNET_WIDTHS,
                (False, True, True, False),
                layers=2,
                cross=1280,
                heads=_heads_of_64(_REFINER_UNET_WIDTHS),
                linear=True,
                sample=128,
                depth=4,
                time_embed_dim=256,
                add_input_dim=2560,
            ),
            _vae_config(_FULL_VAE_WIDTHS, 2, _SDXL_SCALING, 1024),
            None,
            _text_config(1280, 32, "gelu", pad=0, projection=1280),
        ),
    }
)


def _unknown_value(field: str, value: object, valid: tuple[str, ...]) -> str:
    return f"{field}: unknown value {value!r}; valid values are {', '.join(valid)}"


def _check_family(family: str) -> None:
    if family not in FAMILIES:
        raise ValueError(_unknown_value("family", family, FAMILIES))


def _build_components(
    configs: Mapping[str, Mapping[str, Any] | None], inpaint: bool
) -> dict[str, torch.nn.Module]:
    unet_config = dict(configs["unet"])
    if inpaint:
        unet_config["in_channels"] = 9
    components: dict[str, torch.nn.Module] = {
        "unet": UNet2DConditionModel(**unet_config),
        "vae": AutoencoderKL(**configs["vae"]),
    }
    if configs["text_encoder"] is not None:
        components["text_encoder"] = CLIPTextModel(CLIPTextConfig(**configs["text_encoder"]))
    if configs["text_encoder_2"] is not None:
        components["text_encoder_2"] = CLIPTextModelWithProjection(
            CLIPTextConfig(**configs["text_encoder_2"])
        )
    return components


def _fill_deterministically(module: torch.nn.Module, generator: torch.Generator) -> None:
    """Replace every weight with seeded noise scaled so activations stay of order one."""
    with torch.no_grad():
        for name, parameter in module.named_parameters():
            noise = torch.randn(parameter.shape, generator=generator, dtype=parameter.dtype)
            if parameter.ndim >= 2:
                parameter.copy_(noise / math.sqrt(parameter[0].numel()))
            elif name.endswith("weight"):
                parameter.copy_(1.0 + 0.1 * noise)
            else:
                parameter.copy_(0.1 * noise)


def make_tiny_components(family: str, seed: int = 0, inpaint: bool = False) -> dict[str, torch.nn.Module]:
    """Tiny diffusers/transformers components of ``family`` with deterministic random weights.

    Returns ``{"unet", "vae", "text_encoder"}`` plus ``"text_encoder_2"`` for SDXL; the refiner has
    ``{"unet", "vae", "text_encoder_2"}`` as in diffusers' refiner pipeline. All are in eval mode.
    """
    _check_family(family)
    components = _build_components(TINY_CONFIGS[family], inpaint)
    generator = torch.Generator().manual_seed(seed)
    for name in sorted(components):
        _fill_deterministically(components[name], generator)
        components[name].eval()
    return components


def _sd2_final_layer(text_encoder: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """Seeded random weights for the block SD2 files carry beyond the layers SD2 runs."""
    generator = torch.Generator().manual_seed(seed + 1)
    config = text_encoder.config
    return blank_open_clip_block(config.hidden_size, config.intermediate_size, generator=generator)


def write_tiny_checkpoint(
    path: str | Path,
    family: str,
    seed: int = 0,
    inpaint: bool = False,
    prediction_type: str = "epsilon",
    fmt: str = "safetensors",
) -> dict[str, torch.nn.Module]:
    """Write a tiny single-file checkpoint and return the components it was made from.

    ``fmt="ckpt"`` writes ``torch.save({"state_dict": sd})`` (plain tensors only); ``"safetensors"``
    writes the safetensors file with ``modelspec.prediction_type`` metadata for v-prediction. The unused
    final OpenCLIP block of SD2 gets seeded random weights, as real SD2 files hold trained ones.
    """
    _check_family(family)
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(_unknown_value("prediction_type", prediction_type, PREDICTION_TYPES))
    if fmt not in CHECKPOINT_FORMATS:
        raise ValueError(_unknown_value("fmt", fmt, CHECKPOINT_FORMATS))
    components = make_tiny_components(family, seed=seed, inpaint=inpaint)
    arguments = (
        family,
        components["unet"],
        components["vae"],
        components.get("text_encoder"),
        components.get("text_encoder_2"),
    )
    final_layer = _sd2_final_layer(components["text_encoder"], seed) if family == "sd2" else None
    if fmt == "safetensors":
        export_single_file(path, *arguments, prediction_type=prediction_type, sd2_final_layer=final_layer)
    else:
        state_dict = single_file_state_dict(
            *arguments, prediction_type=prediction_type, sd2_final_layer=final_layer
        )
        torch.save({"state_dict": {key: tensor.detach().clone() for key, tensor in state_dict.items()}}, path)
    return components


_PIPELINE_CLASSES = MappingProxyType(
    {
        "sd1": "StableDiffusionPipeline",
        "sd2": "StableDiffusionPipeline",
        "sdxl": "StableDiffusionXLPipeline",
        "sdxl_refiner": "StableDiffusionXLImg2ImgPipeline",
    }
)
_SCHEDULER_CLASSES = MappingProxyType(
    {
        "sd1": PNDMScheduler,
        "sd2": DDIMScheduler,
        "sdxl": EulerDiscreteScheduler,
        "sdxl_refiner": EulerDiscreteScheduler,
    }
)


def _model_index(family: str, components: Mapping[str, torch.nn.Module]) -> dict[str, Any]:
    index: dict[str, Any] = {
        "_class_name": _PIPELINE_CLASSES[family],
        "_diffusers_version": diffusers.__version__,
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
        "scheduler": ["diffusers", _SCHEDULER_CLASSES[family].__name__],
    }
    for suffix in ("", "_2"):
        encoder = components.get(f"text_encoder{suffix}")
        if encoder is not None:
            index[f"text_encoder{suffix}"] = ["transformers", type(encoder).__name__]
            index[f"tokenizer{suffix}"] = ["transformers", "CLIPTokenizer"]
        elif family.startswith("sdxl"):
            index[f"text_encoder{suffix}"] = [None, None]
            index[f"tokenizer{suffix}"] = [None, None]
    if family in ("sd1", "sd2"):
        index.update(
            safety_checker=[None, None], feature_extractor=[None, None], requires_safety_checker=False
        )
    elif family == "sdxl":
        index["force_zeros_for_empty_prompt"] = True
    else:
        index.update(requires_aesthetics_score=True, force_zeros_for_empty_prompt=False)
    return index


def write_tiny_diffusers_folder(
    path: str | Path, family: str, seed: int = 0, prediction_type: str = "epsilon"
) -> dict[str, torch.nn.Module]:
    """Write the tiny components as a diffusers folder (no tokenizers) and return them.

    Each component goes to its own subfolder with ``save_pretrained``; ``model_index.json`` and
    ``scheduler/scheduler_config.json`` (the family's usual scheduler, with SD's beta schedule) complete it.
    """
    _check_family(family)
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(_unknown_value("prediction_type", prediction_type, PREDICTION_TYPES))
    root = Path(path)
    root.mkdir(parents=True, exist_ok=True)
    components = make_tiny_components(family, seed=seed)
    for name, module in components.items():
        module.save_pretrained(root / name)
    scheduler = _SCHEDULER_CLASSES[family](
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        steps_offset=1,
        prediction_type="v_prediction" if prediction_type == "v" else "epsilon",
    )
    scheduler.save_pretrained(root / "scheduler")
    (root / "model_index.json").write_text(json.dumps(_model_index(family, components), indent=2) + "\n")
    return components


def make_meta_components(
    family: str, inpaint: bool = False, full_size: bool = True
) -> dict[str, torch.nn.Module]:
    """The components of ``family`` on the ``meta`` device: real classes and shapes, no weights."""
    _check_family(family)
    configs = FULL_SIZE_CONFIGS[family] if full_size else TINY_CONFIGS[family]
    with torch.device("meta"):
        return _build_components(configs, inpaint)


def stripped_state_dict(
    family: str, inpaint: bool = False, full_size: bool = True, prediction_type: str = "epsilon"
) -> dict[str, tuple[int, ...]]:
    """Keys and shapes of a real single-file checkpoint of ``family`` (tiny layout when not full size).

    Full size means SD1.5, SD2.1 (OpenCLIP-H, 24 blocks), SDXL base 1.0 or the SDXL 1.0 refiner, built
    with diffusers/transformers classes on the ``meta`` device and exported with ``ldm_export``.
    """
    components = make_meta_components(family, inpaint=inpaint, full_size=full_size)
    state_dict = single_file_state_dict(
        family,
        components["unet"],
        components["vae"],
        components.get("text_encoder"),
        components.get("text_encoder_2"),
        prediction_type=prediction_type,
    )
    return {key: tuple(tensor.shape) for key, tensor in state_dict.items()}


_SAFETENSORS_DTYPE_SIZES = MappingProxyType(
    {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}
)


def write_header_only_safetensors(
    path: str | Path,
    shapes: Mapping[str, tuple[int, ...]],
    dtype: str = "F16",
    metadata: Mapping[str, str] | None = None,
) -> int:
    """Write a valid safetensors header for ``shapes`` and extend the file sparsely to its full size.

    The tensor data are never written (they read back as zeros), so a "multi-GB" checkpoint costs only
    its header on disk. Returns the file size in bytes.
    """
    if dtype not in _SAFETENSORS_DTYPE_SIZES:
        raise ValueError(
            f"dtype: unknown value {dtype!r}; valid values are {', '.join(_SAFETENSORS_DTYPE_SIZES)}"
        )
    item_size = _SAFETENSORS_DTYPE_SIZES[dtype]
    header: dict[str, Any] = {}
    if metadata:
        header["__metadata__"] = dict(metadata)
    offset = 0
    for key in sorted(shapes):
        shape = [int(size) for size in shapes[key]]
        size = math.prod(shape) * item_size
        header[key] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)
    total = 8 + len(encoded) + offset
    with open(path, "wb") as handle:
        handle.write(len(encoded).to_bytes(8, "little"))
        handle.write(encoded)
        handle.truncate(total)
    return total
