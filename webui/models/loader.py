"""Building a ready-to-run model from a checkpoint: detection, config folder, weight conversion.

Single-file checkpoints are read once with our safe reader (:mod:`checkpoint_files`) and converted with
diffusers' own single-file conversion, component by component, against a local config folder. diffusers
folders load with ``from_pretrained`` from disk. Nothing touches the network.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from webui.models.checkpoint_files import CheckpointHeader, load_state_dict, read_header
from webui.models.configs import ensure_config_folder, tokenizer_dir
from webui.models.detection import VAE, ModelSpec, detect, infer_vae_config, read_yaml_override
from webui.models.devices import DevicePolicy
from webui.models.discovery import CheckpointInfo, VaeInfo
from webui.models.errors import CorruptCheckpoint, ModelError, UnknownArchitecture
from webui.models.unet_graphs import GraphedUNet

log = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    """A loaded Stable Diffusion model: components, what it is, and where it lives."""

    checkpoint: CheckpointInfo
    spec: ModelSpec
    unet: torch.nn.Module
    vae: torch.nn.Module
    text_encoders: tuple[torch.nn.Module, ...]
    tokenizers: tuple[Any, ...]
    alphas_cumprod: torch.Tensor
    dtype: torch.dtype
    vae_dtype: torch.dtype
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    vae_info: VaeInfo | None = None
    load_seconds: float = 0.0
    unet_graphs: GraphedUNet = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.unet_graphs = GraphedUNet(self.unet)

    @property
    def latent_factor(self) -> int:
        """Pixels per latent cell along each axis (8 for every real SD VAE)."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def latent_channels(self) -> int:
        """Channels of the latent space (4 for SD1/SD2/SDXL)."""
        return int(self.vae.config.latent_channels)

    def modules(self) -> list[torch.nn.Module]:
        """Every torch module of the model."""
        return [self.unet, self.vae, *self.text_encoders]

    def to(self, device: torch.device) -> LoadedModel:
        """Move all components to ``device`` (in place); returns ``self``."""
        if device != self.device:
            self.unet_graphs.clear()  # graphs point at the old weights, and hold VRAM
        for m in self.modules():
            if next(m.parameters()).device != device:
                m.to(device)
        self.device = device
        return self


def alphas_cumprod_for(spec: ModelSpec) -> torch.Tensor:
    """Training alphas_cumprod (float64) of the SD "scaled_linear" beta schedule, ZTSNR-rescaled if marked."""
    s = spec.scheduler
    n = int(s.get("num_train_timesteps", 1000))
    betas = (
        torch.linspace(
            float(s.get("beta_start", 0.00085)) ** 0.5,
            float(s.get("beta_end", 0.012)) ** 0.5,
            n,
            dtype=torch.float64,
        )
        ** 2
    )
    alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
    if spec.zero_terminal_snr:
        sqrt_ac = alphas_cumprod.sqrt()
        first, last = sqrt_ac[0].clone(), sqrt_ac[-1].clone()
        sqrt_ac = (sqrt_ac - last) * first / (first - last)
        alphas_cumprod = sqrt_ac**2
        alphas_cumprod[-1] = 4.8973451890853435e-08  # as A1111/ComfyUI: avoid an infinite sigma
    return alphas_cumprod


def inspect_checkpoint(info: CheckpointInfo) -> tuple[ModelSpec, CheckpointHeader | None]:
    """Detect the architecture of a checkpoint from its header (and yaml override) only."""
    if info.is_folder:
        return _inspect_diffusers_folder(info.path), None
    header = read_header(info.path)
    try:
        spec = detect(header.shapes, header.metadata, read_yaml_override(info.path))
    except (UnknownArchitecture, CorruptCheckpoint) as e:
        raise type(e)(f"{info.name}: {e}") from e
    return spec, header


def _inspect_diffusers_folder(folder: Path) -> ModelSpec:
    from webui.models.detection import TextEncoderSpec

    try:
        index = json.loads((folder / "model_index.json").read_text(encoding="utf-8"))
        unet = json.loads((folder / "unet" / "config.json").read_text(encoding="utf-8"))
        vae = json.loads((folder / "vae" / "config.json").read_text(encoding="utf-8"))
        sched_file = folder / "scheduler" / "scheduler_config.json"
        sched = json.loads(sched_file.read_text(encoding="utf-8")) if sched_file.is_file() else {}
    except (OSError, ValueError) as e:
        raise CorruptCheckpoint(f"{folder.name}: incomplete diffusers folder ({e})") from e
    cls = index.get("_class_name", "")
    encoders = []
    for name in ("text_encoder", "text_encoder_2"):
        entry = index.get(name)
        if entry and entry[0]:
            cfg = json.loads((folder / name / "config.json").read_text(encoding="utf-8"))
            pad = "<|endoftext|>" if cfg.get("hidden_act") == "quick_gelu" else "!"
            encoders.append(
                TextEncoderSpec(name, "diffusers", entry[1] == "CLIPTextModelWithProjection", cfg, pad)
            )
    if "XL" in cls:
        family = "sdxl_refiner" if len(encoders) == 1 else "sdxl"
    elif unet.get("cross_attention_dim") == 768 or (
        encoders and encoders[0].config.get("hidden_act") == "quick_gelu"
    ):
        family = "sd1"  # CLIP-L (quick_gelu); SD2's OpenCLIP-H uses gelu
    elif encoders:
        family = "sd2"
    else:
        raise UnknownArchitecture(f"{folder.name}: unsupported diffusers pipeline {cls!r}")
    prediction = sched.get("prediction_type", "epsilon")
    return ModelSpec(
        family=family,
        prediction_type=prediction,
        prediction_source="header",
        inpaint=unet.get("in_channels") == 9,
        zero_terminal_snr=bool(sched.get("rescale_betas_zero_snr")),
        unet=unet,
        vae=vae,
        text_encoders=tuple(encoders),
        scheduler={
            k: sched[k]
            for k in ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule")
            if k in sched
        },
    )


def _text_encoder_subset(
    state: Mapping[str, torch.Tensor], spec_prefix: str, skip_last: bool
) -> dict[str, torch.Tensor]:
    """The checkpoint entries diffusers' CLIP conversion needs; drops SD2's unused last block."""
    sub = {k: v for k, v in state.items() if k.startswith(spec_prefix)}
    if skip_last:
        import re

        blocks = sorted(
            {
                int(m.group(1))
                for k in sub
                if (m := re.match(re.escape(spec_prefix) + r"transformer\.resblocks\.(\d+)\.", k))
            }
        )
        if blocks:
            drop = f"{spec_prefix}transformer.resblocks.{blocks[-1]}."
            sub = {k: v for k, v in sub.items() if not k.startswith(drop)}
    return sub


def build_from_state_dict(
    state: Mapping[str, torch.Tensor], spec: ModelSpec, config_root: Path, dtype: torch.dtype
) -> tuple[torch.nn.Module, torch.nn.Module | None, tuple[torch.nn.Module, ...], tuple[Any, ...]]:
    """Convert an original-layout state dict into diffusers/transformers modules (on CPU)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import create_diffusers_clip_model_from_ldm
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    folder = ensure_config_folder(config_root, spec)
    state = dict(state)
    unet = UNet2DConditionModel.from_single_file(
        state, config=str(folder), subfolder="unet", torch_dtype=_cast(dtype), local_files_only=True
    )
    vae = None
    if spec.vae is not None:
        vae = AutoencoderKL.from_single_file(
            state, config=str(folder), subfolder="vae", torch_dtype=_cast(dtype), local_files_only=True
        )
    encoders: list[torch.nn.Module] = []
    tokenizers: list[Any] = []
    names = ["text_encoder_2"] if spec.family == "sdxl_refiner" else ["text_encoder", "text_encoder_2"]
    for enc, sub in zip(spec.text_encoders, names, strict=False):
        cls = CLIPTextModelWithProjection if enc.with_projection else CLIPTextModel
        subset = _text_encoder_subset(state, enc.prefix, enc.skip_last_layer)
        model = create_diffusers_clip_model_from_ldm(
            cls, subset, subfolder=sub, config=str(folder), torch_dtype=dtype, local_files_only=True
        )
        _check_no_meta(model, sub)
        encoders.append(model)
        tokenizers.append(CLIPTokenizer.from_pretrained(tokenizer_dir(config_root, enc.pad_token)))
    for name, module in (("unet", unet), ("vae", vae)):
        if module is not None:
            _check_no_meta(module, name)
    return unet, vae, tuple(encoders), tuple(tokenizers)


def _cast(dtype: torch.dtype) -> torch.dtype | None:
    """diffusers' single-file loaders warn on any explicit dtype; fp32 is what they build anyway."""
    return None if dtype == torch.float32 else dtype


def _check_no_meta(module: torch.nn.Module, name: str) -> None:
    for pname, p in module.named_parameters():
        if p.device.type == "meta":
            raise CorruptCheckpoint(f"the checkpoint has no weights for {name}.{pname}")


def load_vae_file(vae: VaeInfo, spec: ModelSpec, config_root: Path, dtype: torch.dtype) -> torch.nn.Module:
    """Load a standalone VAE file (original or diffusers key layout) for a model of ``spec``'s family."""
    from diffusers import AutoencoderKL

    raw = load_state_dict(vae.path)
    if any(k.startswith("encoder.down_blocks.") for k in raw):  # diffusers layout
        config = dict(spec.vae or {})
        model = AutoencoderKL.from_config(config)
        missing, _ = model.load_state_dict(raw, strict=False)
        if missing:
            raise CorruptCheckpoint(f"{vae.name}: VAE is missing {len(missing)} tensors, e.g. {missing[0]}")
        return model.to(dtype)
    state = {(k if k.startswith(VAE) else VAE + k): v for k, v in raw.items() if not k.startswith("loss.")}
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    config = infer_vae_config(shapes, spec.family)
    if config is None:
        raise UnknownArchitecture(f"{vae.name}: not a VAE (no encoder/decoder weights)")
    if spec.vae:
        config["scaling_factor"] = spec.vae.get("scaling_factor", config["scaling_factor"])
    folder = ensure_config_folder(config_root, spec, vae_config=config)
    model = AutoencoderKL.from_single_file(
        state, config=str(folder), subfolder="vae", torch_dtype=_cast(dtype), local_files_only=True
    )
    _check_no_meta(model, "vae")
    return model


def load_checkpoint(
    info: CheckpointInfo, policy: DevicePolicy, config_root: Path, vae: VaeInfo | None = None
) -> LoadedModel:
    """Load a checkpoint (file or diffusers folder) onto the policy's device, with an optional VAE."""
    started = time.perf_counter()
    spec, _header = inspect_checkpoint(info)
    dtype = policy.dtype
    if info.is_folder:
        unet, vae_model, encoders, tokenizers = _load_diffusers_folder(info.path, spec, config_root, dtype)
    else:
        state = load_state_dict(info.path)
        try:
            unet, vae_model, encoders, tokenizers = build_from_state_dict(state, spec, config_root, dtype)
        except ModelError:
            raise
        except (RuntimeError, ValueError, KeyError) as e:
            raise CorruptCheckpoint(
                f"{info.name}: weights do not fit the detected {spec.label} architecture ({e})"
            ) from e
        finally:
            del state
    vae_dtype = policy.vae_dtype
    if vae is not None:
        vae_model = load_vae_file(vae, spec, config_root, vae_dtype)
    elif vae_model is None:
        raise CorruptCheckpoint(f"{info.name}: the checkpoint has no VAE; choose a VAE file in models/VAE")
    if spec.vae and spec.vae.get("force_upcast") and vae_dtype == torch.float16:
        vae_dtype = torch.float32  # the SDXL VAE overflows in fp16
    if next(vae_model.parameters()).dtype != vae_dtype:
        vae_model.to(vae_dtype)
    if spec.family == "sd2" and spec.prediction_source == "default":
        spec = replace(spec, prediction_type=probe_v_prediction(unet, spec), prediction_source="probe")
    model = LoadedModel(
        checkpoint=info,
        spec=spec,
        unet=unet.eval(),
        vae=vae_model.eval(),
        text_encoders=tuple(e.eval() for e in encoders),
        tokenizers=tokenizers,
        alphas_cumprod=alphas_cumprod_for(spec),
        dtype=dtype,
        vae_dtype=vae_dtype,
        vae_info=vae,
    )
    for m in model.modules():
        m.requires_grad_(False)
    if policy.attention == "xformers":
        unet.enable_xformers_memory_efficient_attention()
    model.to(policy.device)
    model.load_seconds = time.perf_counter() - started
    return model


def _load_diffusers_folder(
    folder: Path, spec: ModelSpec, config_root: Path, dtype: torch.dtype
) -> tuple[torch.nn.Module, torch.nn.Module, tuple[torch.nn.Module, ...], tuple[Any, ...]]:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    try:
        unet = UNet2DConditionModel.from_pretrained(
            folder, subfolder="unet", torch_dtype=dtype, local_files_only=True
        )
        vae = AutoencoderKL.from_pretrained(folder, subfolder="vae", torch_dtype=dtype, local_files_only=True)
        encoders, tokenizers = [], []
        for enc in spec.text_encoders:
            cls = CLIPTextModelWithProjection if enc.with_projection else CLIPTextModel
            encoders.append(
                cls.from_pretrained(folder, subfolder=enc.prefix, torch_dtype=dtype, local_files_only=True)
            )
            tok_sub = enc.prefix.replace("text_encoder", "tokenizer")
            tok_dir = folder / tok_sub
            tokenizers.append(
                CLIPTokenizer.from_pretrained(
                    tok_dir
                    if (tok_dir / "vocab.json").is_file()
                    else tokenizer_dir(config_root, enc.pad_token)
                )
            )
    except (OSError, ValueError, RuntimeError) as e:
        raise CorruptCheckpoint(f"{folder.name}: cannot load diffusers folder ({e})") from e
    return unet, vae, tuple(encoders), tuple(tokenizers)


@torch.no_grad()
def probe_v_prediction(unet: torch.nn.Module, spec: ModelSpec) -> str:
    """Tell eps from v-prediction for SD2 files without markers, by one UNet evaluation.

    A noisy input at high noise: an eps model predicts (close to) the noise; a v model predicts a
    different quantity. We compare the output's error against the known noise. Deterministic (fixed
    generator); runs on CPU-cheap shapes.
    """
    g = torch.Generator().manual_seed(0)
    dtype = next(unet.parameters()).dtype
    channels = int(spec.unet.get("in_channels", 4))
    x0 = torch.zeros(1, channels, 8, 8)
    noise = torch.randn(1, channels, 8, 8, generator=g)
    ac = alphas_cumprod_for(spec)
    t = 900
    a = float(ac[t])
    x_t = (a**0.5) * x0 + ((1 - a) ** 0.5) * noise
    ctx_dim = int(spec.unet.get("cross_attention_dim", 1024))
    context = torch.zeros(1, 77, ctx_dim)
    out = unet(x_t.to(dtype), torch.tensor([t]), encoder_hidden_states=context.to(dtype)).sample.float()
    eps_err = (out - noise).pow(2).mean().item()
    v_target = (a**0.5) * noise - ((1 - a) ** 0.5) * x0
    v_err = (out - v_target).pow(2).mean().item()
    return "v_prediction" if v_err < eps_err and abs(v_err - eps_err) > 1e-6 else "epsilon"
