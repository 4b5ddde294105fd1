"""Finding and loading the original Disco Diffusion models from ``models/disco/``.

``.pt`` / ``.pth`` files are read with ``torch.load(..., weights_only=True)``: restricted unpickling that
rebuilds tensors and plain containers but never runs pickled code. Anything other than a flat
``{name: tensor}`` dict is refused. ``.safetensors`` files are read with ``safetensors.torch.load_file``.
"""

from __future__ import annotations

import dataclasses
import pickle
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors.torch import load_file

from webui.extensions.api import InvalidParameter

from .secondary import SecondaryDiffusionImageNet2
from .unet import PixelModelConfig, UNetModel, config_for_checkpoint

MODEL_SUBDIR = "disco"
MODEL_SUFFIXES = (".pt", ".pth", ".safetensors")
KINDS = ("unet", "secondary")


@dataclasses.dataclass(frozen=True)
class PixelModelFile:
    """A model file found under ``models/disco/``: ``kind`` is ``"secondary"`` when its name says so."""

    path: Path
    kind: str

    @property
    def name(self) -> str:
        """The file name, as shown in the UI."""
        return self.path.name


def find_pixel_models(models_dir: Path) -> list[PixelModelFile]:
    """The ``.pt`` / ``.pth`` / ``.safetensors`` files under ``models_dir / "disco"`` (sorted, recursive).

    Only that folder is scanned (Stable Diffusion checkpoints live elsewhere). A missing folder gives ``[]``.
    """
    folder = Path(models_dir) / MODEL_SUBDIR
    if not folder.is_dir():
        return []
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in MODEL_SUFFIXES)
    return [PixelModelFile(p, "secondary" if "secondary" in p.name.lower() else "unet") for p in files]


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A flat ``{name: tensor}`` dict from a ``.safetensors`` or ``.pt``/``.pth`` file, on the CPU.

    Raises :class:`InvalidParameter` (field ``"model"``) for a missing file, an unknown suffix, a pickle
    that holds anything but tensors and plain containers, or a file that is not a flat tensor dict.
    """
    path = Path(path)
    if not path.is_file():
        raise InvalidParameter("model", f"model file not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        try:
            data: object = load_file(str(path), device="cpu")
        except Exception as exc:  # safetensors raises its own error types for corrupt headers
            raise InvalidParameter("model", f"{path.name}: not a readable safetensors file ({exc})") from None
    elif suffix in (".pt", ".pth", ".ckpt"):
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError, AttributeError, ValueError) as exc:
            raise InvalidParameter(
                "model",
                f"{path.name}: refused to load; only plain tensors are read from pickled checkpoints ({exc})",
            ) from None
    else:
        raise InvalidParameter(
            "model", f"{path.name}: unsupported file type {suffix!r} (use .pt, .pth or .safetensors)"
        )
    return _flat_tensor_dict(data, path.name)


def _flat_tensor_dict(data: object, name: str) -> dict[str, torch.Tensor]:
    if not isinstance(data, Mapping):
        raise InvalidParameter("model", f"{name}: expected a dict of tensors, found {type(data).__name__}")
    for key, value in data.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise InvalidParameter(
                "model",
                f"{name}: expected a flat dict of tensors; entry {key!r} is a {type(value).__name__}",
            )
    return dict(data)


def _check_keys(model: torch.nn.Module, state_dict: Mapping[str, torch.Tensor], name: str) -> None:
    """Raise a readable error listing missing / unexpected keys and shape mismatches."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    wrong = sorted(
        f"{k} {tuple(state_dict[k].shape)} != {expected[k]}"
        for k in set(expected) & set(state_dict)
        if tuple(state_dict[k].shape) != expected[k]
    )
    problems = []
    for label, items in (
        ("missing keys", missing),
        ("unexpected keys", unexpected),
        ("shape mismatches", wrong),
    ):
        if items:
            shown = ", ".join(items[:5]) + (f" ... ({len(items)} in all)" if len(items) > 5 else "")
            problems.append(f"{label}: {shown}")
    if problems:
        raise InvalidParameter("model", f"{name} does not fit the architecture; " + "; ".join(problems))


def _assign(model: torch.nn.Module, state_dict: Mapping[str, torch.Tensor], name: str) -> None:
    _check_keys(model, state_dict, name)
    model.load_state_dict(state_dict, strict=True, assign=True)
    model.float().requires_grad_(False).eval()


def build_unet(
    state_dict: Mapping[str, torch.Tensor],
    *,
    name: str = "model",
    image_size: int | None = None,
    num_head_channels: int = 64,
) -> UNetModel:
    """A guided-diffusion UNet with ``state_dict``'s weights (config inferred from its keys and shapes).

    The network is built on the ``meta`` device and takes the tensors over (no second copy in memory).
    Head sizes are not stored in checkpoints; Disco's models use ``num_head_channels=64``.
    """
    config = config_for_checkpoint(state_dict, image_size=image_size, num_head_channels=num_head_channels)
    with torch.device("meta"):
        model = UNetModel(config)
    _assign(model, state_dict, name)
    return model


def load_pixel_unet(
    path: Path, *, use_fp16: bool = False, image_size: int | None = None, num_head_channels: int = 64
) -> UNetModel:
    """Load a guided-diffusion UNet file (e.g. ``512x512_diffusion_uncond_finetune_008100.pt``) on the CPU.

    ``use_fp16`` converts the body to half precision (for GPUs, as Disco's ``use_fp16``).
    """
    path = Path(path)
    state_dict = load_state_dict(path)
    model = build_unet(state_dict, name=path.name, image_size=image_size, num_head_channels=num_head_channels)
    if use_fp16:
        model.convert_to_fp16()
        model.config = dataclasses.replace(model.config, use_fp16=True)
    return model


def load_secondary_model(path: Path) -> SecondaryDiffusionImageNet2:
    """Load ``secondary_model_imagenet_2.pth`` (or a safetensors copy) on the CPU."""
    path = Path(path)
    state_dict = load_state_dict(path)
    with torch.device("meta"):
        model = SecondaryDiffusionImageNet2()
    _assign(model, state_dict, path.name)
    return model


def describe(config: PixelModelConfig) -> str:
    """A one-line summary of a model config for logs and the UI."""
    mult = ",".join(f"{m:g}" for m in config.resolved_channel_mult())
    return (
        f"guided-diffusion {config.image_size}px, {config.num_channels} channels (x{mult}), "
        f"{config.num_res_blocks} res blocks, attention at {', '.join(map(str, config.attention_resolutions))}"
    )
