"""The guided-diffusion UNet (openai/guided-diffusion, MIT licence), written fresh for Disco mode.

Module and parameter names follow the released checkpoints exactly (``input_blocks.N.0.in_layers.0.weight``,
``middle_block``, ``output_blocks``, ``time_embed``, ``out``), so ``load_state_dict(strict=True)`` accepts
``256x256_diffusion_uncond.pt`` and ``512x512_diffusion_uncond_finetune_008100.pt`` as they are.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from webui.extensions.api import InvalidParameter

# guided-diffusion's channel multipliers per image size (used when a config names none).
DEFAULT_CHANNEL_MULT: Mapping[int, tuple[float, ...]] = {
    512: (0.5, 1, 1, 2, 2, 4, 4),
    256: (1, 1, 2, 2, 4, 4),
    128: (1, 1, 2, 3, 4),
    64: (1, 2, 3, 4),
}
NORM_GROUPS = 32


@dataclasses.dataclass(frozen=True)
class PixelModelConfig:
    """A guided-diffusion model and diffusion configuration, with Disco's notebook values as defaults.

    ``attention_resolutions`` are feature-map sizes in pixels (``32, 16, 8``), as in Disco's ``model_config``;
    ``channel_mult`` ``None`` means guided-diffusion's default for ``image_size``.
    """

    image_size: int = 512
    in_channels: int = 3
    num_channels: int = 256
    num_res_blocks: int = 2
    channel_mult: tuple[float, ...] | None = None
    attention_resolutions: tuple[int, ...] = (32, 16, 8)
    num_heads: int = 4
    num_head_channels: int = 64
    num_heads_upsample: int = -1
    learn_sigma: bool = True
    class_cond: bool = False
    use_scale_shift_norm: bool = True
    resblock_updown: bool = True
    conv_resample: bool = True
    use_fp16: bool = False
    dropout: float = 0.0
    diffusion_steps: int = 1000
    noise_schedule: str = "linear"
    rescale_timesteps: bool = True
    timestep_respacing: str = "250"

    @property
    def out_channels(self) -> int:
        """3 image channels, doubled when the model also predicts its variance (``learn_sigma``)."""
        return self.in_channels * 2 if self.learn_sigma else self.in_channels

    def resolved_channel_mult(self) -> tuple[float, ...]:
        """The channel multipliers, guided-diffusion's default for ``image_size`` when none are set."""
        if self.channel_mult is not None:
            return tuple(self.channel_mult)
        if self.image_size not in DEFAULT_CHANNEL_MULT:
            sizes = ", ".join(str(s) for s in DEFAULT_CHANNEL_MULT)
            raise InvalidParameter(
                "channel_mult", f"no default for image size {self.image_size} (defaults exist for {sizes})"
            )
        return DEFAULT_CHANNEL_MULT[self.image_size]

    def attention_downsample_rates(self) -> frozenset[int]:
        """Downsampling factors (1, 2, 4 ...) at which blocks get self-attention."""
        rates = set()
        for res in self.attention_resolutions:
            if res <= 0 or self.image_size % res:
                raise InvalidParameter(
                    "attention_resolutions", f"{res} does not divide the image size {self.image_size}"
                )
            rates.add(self.image_size // res)
        return frozenset(rates)

    def validate(self) -> None:
        """Raise :class:`InvalidParameter` when the architecture cannot be built."""
        if self.class_cond:
            raise InvalidParameter("class_cond", "class-conditional models are not supported")
        if self.image_size <= 0 or self.num_channels <= 0 or self.num_res_blocks <= 0:
            raise InvalidParameter(
                "image_size", "image_size, num_channels and num_res_blocks must be positive"
            )
        mult = self.resolved_channel_mult()
        if self.image_size % (2 ** (len(mult) - 1)):
            raise InvalidParameter(
                "image_size",
                f"{self.image_size} is not divisible by {2 ** (len(mult) - 1)} (the UNet's depth)",
            )
        for m in mult:
            channels = m * self.num_channels
            if channels != int(channels) or int(channels) % NORM_GROUPS:
                raise InvalidParameter(
                    "num_channels",
                    f"{self.num_channels} x {m} must be a whole multiple of {NORM_GROUPS} (GroupNorm groups)",
                )
        if self.num_head_channels == -1 and self.num_heads <= 0:
            raise InvalidParameter("num_heads", "set num_heads > 0 or num_head_channels > 0")
        rates = self.attention_downsample_rates()
        for level, m in enumerate(mult):
            if 2**level in rates:
                _heads(int(m * self.num_channels), self.num_heads, self.num_head_channels)
        if self.noise_schedule != "linear":
            raise InvalidParameter(
                "noise_schedule", f"only 'linear' is supported, got {self.noise_schedule!r}"
            )


def disco_config(image_size: int, **overrides: object) -> PixelModelConfig:
    """Disco Diffusion's ``model_config`` for the 512 or 256 unconditional model (plus ``overrides``)."""
    if image_size not in (256, 512):
        raise InvalidParameter("image_size", f"Disco's models are 256 or 512 pixels, not {image_size}")
    return dataclasses.replace(PixelModelConfig(image_size=image_size), **overrides)


def _heads(channels: int, num_heads: int, num_head_channels: int) -> int:
    if num_head_channels == -1:
        if channels % num_heads:
            raise InvalidParameter("num_heads", f"{channels} channels do not split into {num_heads} heads")
        return num_heads
    if num_head_channels <= 0 or channels % num_head_channels:
        raise InvalidParameter(
            "num_head_channels", f"{channels} channels do not split into heads of {num_head_channels}"
        )
    return channels // num_head_channels


def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps: ``[cos(t f), sin(t f)]``, shape [N, dim]."""
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half
    )
    args = timesteps[:, None].float() * freqs[None]
    embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        embedding = torch.cat([embedding, torch.zeros_like(embedding[:, :1])], dim=-1)
    return embedding


class GroupNorm32(nn.GroupNorm):
    """GroupNorm that always computes in float32 and returns the input's dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float()).type(x.dtype)


def _norm(channels: int) -> GroupNorm32:
    return GroupNorm32(NORM_GROUPS, channels)


class TimestepBlock(nn.Module):
    """A layer that also takes the timestep embedding."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError


class TimestepEmbedSequential(nn.Sequential):
    """Sequential that hands the timestep embedding to the layers that take it."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        for layer in self:
            x = layer(x, emb) if isinstance(layer, TimestepBlock) else layer(x)
        return x


class Upsample(nn.Module):
    """Nearest-neighbour 2x upsampling, followed by a 3x3 conv (``conv``) when ``use_conv``."""

    def __init__(self, channels: int, use_conv: bool, out_channels: int | None = None) -> None:
        super().__init__()
        self.use_conv = use_conv
        if use_conv:
            self.conv = nn.Conv2d(channels, out_channels or channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        return self.conv(x) if self.use_conv else x


class Downsample(nn.Module):
    """2x downsampling: a strided 3x3 conv (``op``) when ``use_conv``, else average pooling."""

    def __init__(self, channels: int, use_conv: bool, out_channels: int | None = None) -> None:
        super().__init__()
        if use_conv:
            self.op: nn.Module = nn.Conv2d(channels, out_channels or channels, 3, stride=2, padding=1)
        else:
            self.op = nn.AvgPool2d(kernel_size=2, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class ResBlock(TimestepBlock):
    """Residual block with timestep conditioning (scale-shift norm or additive), optional up/down."""

    def __init__(
        self,
        channels: int,
        emb_channels: int,
        dropout: float,
        out_channels: int,
        *,
        use_scale_shift_norm: bool,
        up: bool = False,
        down: bool = False,
    ) -> None:
        super().__init__()
        self.use_scale_shift_norm = use_scale_shift_norm
        self.in_layers = nn.Sequential(
            _norm(channels), nn.SiLU(), nn.Conv2d(channels, out_channels, 3, padding=1)
        )
        self.updown = up or down
        if up:
            self.h_upd: nn.Module = Upsample(channels, False)
            self.x_upd: nn.Module = Upsample(channels, False)
        elif down:
            self.h_upd = Downsample(channels, False)
            self.x_upd = Downsample(channels, False)
        else:
            self.h_upd = self.x_upd = nn.Identity()
        self.emb_layers = nn.Sequential(
            nn.SiLU(), nn.Linear(emb_channels, 2 * out_channels if use_scale_shift_norm else out_channels)
        )
        self.out_layers = nn.Sequential(
            _norm(out_channels),
            nn.SiLU(),
            nn.Dropout(p=dropout),
            nn.Conv2d(out_channels, out_channels, 3, padding=1),
        )
        if out_channels == channels:
            self.skip_connection: nn.Module = nn.Identity()
        else:
            self.skip_connection = nn.Conv2d(channels, out_channels, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        if self.updown:
            h = self.in_layers[:-1](x)
            h = self.in_layers[-1](self.h_upd(h))
            x = self.x_upd(x)
        else:
            h = self.in_layers(x)
        emb_out = self.emb_layers(emb).type(h.dtype)[..., None, None]
        if self.use_scale_shift_norm:
            scale, shift = emb_out.chunk(2, dim=1)
            h = self.out_layers[0](h) * (1 + scale) + shift
            h = self.out_layers[1:](h)
        else:
            h = self.out_layers(h + emb_out)
        return self.skip_connection(x) + h


class AttentionBlock(nn.Module):
    """Spatial self-attention with guided-diffusion's legacy head layout (per head: q, k, v stacked)."""

    def __init__(self, channels: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.norm = _norm(channels)
        self.qkv = nn.Conv1d(channels, channels * 3, 1)
        self.proj_out = nn.Conv1d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, *spatial = x.shape
        flat = x.reshape(b, c, -1)
        qkv = self.qkv(self.norm(flat))
        length = qkv.shape[-1]
        head_ch = c // self.num_heads
        q, k, v = qkv.reshape(b * self.num_heads, head_ch * 3, length).split(head_ch, dim=1)
        # [B*H, C, T] -> [B*H, T, C]; SDPA's default scale 1/sqrt(C) equals the legacy split scaling.
        a = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        h = self.proj_out(a.transpose(1, 2).reshape(b, c, length))
        return (flat + h).reshape(b, c, *spatial)


class UNetModel(nn.Module):
    """The guided-diffusion UNet: ``forward(x, timesteps) -> model output`` ([N, out_channels, H, W]).

    ``timesteps`` are the values the network was trained on (0..1000, fractional after rescaling).
    """

    def __init__(self, config: PixelModelConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config
        mc = config.num_channels
        mult = config.resolved_channel_mult()
        attn_rates = config.attention_downsample_rates()
        emb_dim = mc * 4
        heads_up = config.num_heads if config.num_heads_upsample == -1 else config.num_heads_upsample

        def res(ch_in: int, ch_out: int, **updown: bool) -> ResBlock:
            return ResBlock(
                ch_in,
                emb_dim,
                config.dropout,
                ch_out,
                use_scale_shift_norm=config.use_scale_shift_norm,
                **updown,
            )

        def attention(ch: int, num_heads: int) -> AttentionBlock:
            return AttentionBlock(ch, _heads(ch, num_heads, config.num_head_channels))

        self.time_embed = nn.Sequential(nn.Linear(mc, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        ch = int(mult[0] * mc)
        first_ch = ch
        self.input_blocks = nn.ModuleList(
            [TimestepEmbedSequential(nn.Conv2d(config.in_channels, ch, 3, padding=1))]
        )
        skip_chans = [ch]
        ds = 1
        for level, m in enumerate(mult):
            for _ in range(config.num_res_blocks):
                layers: list[nn.Module] = [res(ch, int(m * mc))]
                ch = int(m * mc)
                if ds in attn_rates:
                    layers.append(attention(ch, config.num_heads))
                self.input_blocks.append(TimestepEmbedSequential(*layers))
                skip_chans.append(ch)
            if level != len(mult) - 1:
                down = (
                    res(ch, ch, down=True) if config.resblock_updown else Downsample(ch, config.conv_resample)
                )
                self.input_blocks.append(TimestepEmbedSequential(down))
                skip_chans.append(ch)
                ds *= 2

        self.middle_block = TimestepEmbedSequential(res(ch, ch), attention(ch, config.num_heads), res(ch, ch))

        self.output_blocks = nn.ModuleList()
        for level, m in reversed(list(enumerate(mult))):
            for i in range(config.num_res_blocks + 1):
                layers = [res(ch + skip_chans.pop(), int(m * mc))]
                ch = int(m * mc)
                if ds in attn_rates:
                    layers.append(attention(ch, heads_up))
                if level and i == config.num_res_blocks:
                    layers.append(
                        res(ch, ch, up=True) if config.resblock_updown else Upsample(ch, config.conv_resample)
                    )
                    ds //= 2
                self.output_blocks.append(TimestepEmbedSequential(*layers))

        self.out = nn.Sequential(_norm(ch), nn.SiLU(), nn.Conv2d(first_ch, config.out_channels, 3, padding=1))
        if config.use_fp16:
            self.convert_to_fp16()

    @property
    def dtype(self) -> torch.dtype:
        """The dtype the UNet body computes in (float16 after :meth:`convert_to_fp16`)."""
        return self.input_blocks[0][0].weight.dtype

    def convert_to_fp16(self) -> None:
        """Half precision for the convolutions and linears of the body (norms and embeddings stay float32)."""
        for part in (self.input_blocks, self.middle_block, self.output_blocks):
            for module in part.modules():
                if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Linear)):
                    module.half()

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """Predict the model output (eps, plus variance values when ``learn_sigma``) for ``x`` at ``timesteps``."""
        emb = self.time_embed(timestep_embedding(timesteps, self.config.num_channels))
        emb = emb.type(self.dtype)
        h = x.type(self.dtype)
        skips = []
        for block in self.input_blocks:
            h = block(h, emb)
            skips.append(h)
        h = self.middle_block(h, emb)
        for block in self.output_blocks:
            h = block(torch.cat([h, skips.pop()], dim=1), emb)
        return self.out(h.type(x.dtype))


# ----------------------------------------------------------------------------------------------------------------
# Config inference from a state dict (keys and shapes only).

_REQUIRED_KEYS = (
    "time_embed.0.weight",
    "input_blocks.0.0.weight",
    "middle_block.0.in_layers.0.weight",
    "out.2.weight",
)
_BLOCK_KEY = re.compile(r"^(input_blocks|output_blocks)\.(\d+)\.(\d+)\.")


def _block_layers(keys: list[str], part: str) -> dict[int, dict[int, set[str]]]:
    """``{block index: {layer index: set of parameter sub-keys}}`` for ``input_blocks``/``output_blocks``."""
    found: dict[int, dict[int, set[str]]] = {}
    for key in keys:
        match = _BLOCK_KEY.match(key)
        if match and match.group(1) == part:
            sub = key[match.end() :]
            found.setdefault(int(match.group(2)), {}).setdefault(int(match.group(3)), set()).add(sub)
    return found


def _is_resblock(subkeys: set[str]) -> bool:
    return "in_layers.0.weight" in subkeys


def _is_attention(subkeys: set[str]) -> bool:
    return "qkv.weight" in subkeys


def config_for_checkpoint(
    state_dict: Mapping[str, object],
    *,
    image_size: int | None = None,
    num_head_channels: int = 64,
    use_fp16: bool = False,
) -> PixelModelConfig:
    """Infer a :class:`PixelModelConfig` from a guided-diffusion UNet state dict (keys and shapes only).

    The image size is read from the channel multipliers when they are one of guided-diffusion's defaults
    (512 / 256 / 128 / 64); pass ``image_size`` otherwise. Attention head sizes are not stored in a
    checkpoint: Disco's models use ``num_head_channels=64``. Values only need a ``.shape``.
    """
    keys = list(state_dict)
    missing = [k for k in _REQUIRED_KEYS if k not in state_dict]
    if missing:
        raise InvalidParameter(
            "model", f"not a guided-diffusion UNet state dict (missing {', '.join(missing)})"
        )
    if "label_emb.weight" in state_dict:
        raise InvalidParameter("model", "class-conditional guided-diffusion models are not supported")

    def shape(key: str) -> tuple[int, ...]:
        value = state_dict.get(key)
        if value is None or not hasattr(value, "shape"):
            raise InvalidParameter("model", f"guided-diffusion UNet state dict lacks the tensor {key!r}")
        return tuple(value.shape)

    num_channels = shape("time_embed.0.weight")[1]
    in_channels = shape("input_blocks.0.0.weight")[1]
    out_channels = shape("out.2.weight")[0]
    if out_channels not in (in_channels, 2 * in_channels):
        raise InvalidParameter("model", f"unexpected output channels {out_channels} for {in_channels} inputs")

    inputs = _block_layers(keys, "input_blocks")
    outputs = _block_layers(keys, "output_blocks")
    if sorted(outputs) != list(range(len(outputs))) or not outputs:
        raise InvalidParameter("model", "output_blocks are not numbered 0..N-1; not a guided-diffusion UNet")
    # The first output block that ends in an upsampling layer closes the deepest level: its index is
    # num_res_blocks (each decoder level has num_res_blocks + 1 blocks).
    up_blocks = [
        i
        for i, layers in sorted(outputs.items())
        if any(j > 0 and not _is_attention(s) for j, s in layers.items())
    ]
    num_res_blocks = up_blocks[0] if up_blocks else len(outputs) - 1
    if num_res_blocks < 1 or len(outputs) % (num_res_blocks + 1):
        raise InvalidParameter("model", "cannot work out num_res_blocks from the output blocks")
    levels = len(outputs) // (num_res_blocks + 1)
    if sorted(inputs) != list(range(levels * (num_res_blocks + 1))):
        raise InvalidParameter("model", "input and output blocks do not describe the same UNet")

    mult: list[float] = []
    attention_levels: list[int] = []
    for level in range(levels):
        first = 1 + level * (num_res_blocks + 1)
        layers = inputs[first]
        if 0 not in layers or not _is_resblock(layers[0]):
            raise InvalidParameter("model", f"input block {first} is not a residual block")
        width = shape(f"input_blocks.{first}.0.out_layers.3.weight")[0]
        mult.append(width / num_channels if width % num_channels else width // num_channels)
        if any(_is_attention(s) for s in layers.values()):
            attention_levels.append(level)
    resblock_updown = levels > 1 and _is_resblock(inputs[num_res_blocks + 1].get(0, set()))
    width = shape("input_blocks.1.0.out_layers.3.weight")[0]
    scale_shift = shape("input_blocks.1.0.emb_layers.1.weight")[0] == 2 * width

    channel_mult = tuple(mult)
    if image_size is None:
        sizes = [size for size, default in DEFAULT_CHANNEL_MULT.items() if tuple(default) == channel_mult]
        if not sizes:
            raise InvalidParameter(
                "image_size",
                f"channel multipliers {channel_mult} are not a guided-diffusion default; pass image_size",
            )
        image_size = sizes[0]
    attention_resolutions = tuple(image_size // 2**level for level in attention_levels)
    config = PixelModelConfig(
        image_size=image_size,
        in_channels=in_channels,
        num_channels=num_channels,
        num_res_blocks=num_res_blocks,
        channel_mult=None if DEFAULT_CHANNEL_MULT.get(image_size) == channel_mult else channel_mult,
        attention_resolutions=attention_resolutions,
        num_head_channels=num_head_channels,
        learn_sigma=out_channels == 2 * in_channels,
        use_scale_shift_norm=scale_shift,
        resblock_updown=resblock_updown,
        use_fp16=use_fp16,
    )
    config.validate()
    return config
