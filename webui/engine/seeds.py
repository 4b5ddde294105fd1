"""Seeds and the initial / ancestral noise they produce, reproducing A1111's images.

A1111 behaviour kept here:

* seed ``-1`` (or none) means a random 32-bit seed; image ``i`` of a batch gets ``seed + i`` and
  ``subseed + i`` -- except that with a variation strength above zero every image keeps the same seed and
  only the variation seed counts up;
* every image draws from its own generator seeded with its seed, so image ``i`` of a batch equals a
  single-image run with seed ``seed + i``;
* the "randn_source" setting: ``"GPU"`` draws on the target device, ``"CPU"`` always draws on the CPU and
  moves the result, so a seed gives the same picture on any hardware;
* variation seeds blend the two noises with A1111's slerp; "resize seed from" draws the noise at the old
  size and pastes it centred into the new size;
* the eta noise seed delta (ENSD) re-seeds the per-image generators with ``seed + ENSD`` once the first
  noise has been drawn, which changes the noise ancestral samplers add.

No global torch RNG is touched: every draw uses an explicit :class:`torch.Generator`.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence

import torch

from webui.engine.errors import InvalidParameter

RNG_SOURCES = ("GPU", "CPU")
SEED_RANGE = 4294967294  # A1111 draws random seeds from [0, 2**32 - 2)
LATENT_FACTOR = 8
_SLERP_LINEAR_THRESHOLD = 0.9995


def resolve_seed(seed: int | None) -> int:
    """Returns ``seed`` itself, or a fresh random 32-bit seed when it is ``-1`` or ``None``."""
    if seed is None or seed == -1:
        return secrets.randbelow(SEED_RANGE)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise InvalidParameter("seed", f"must be an integer, got {seed!r}")
    return seed


def image_seeds(
    seed: int, subseed: int, n: int, subseed_strength: float = 0.0
) -> tuple[list[int], list[int]]:
    """Per-image seeds and variation seeds of ``n`` images, as A1111 assigns them.

    Image ``i`` gets ``seed + i`` and ``subseed + i``; when ``subseed_strength`` is nonzero (variations of
    one picture) every image keeps ``seed`` and only the variation seed increases.
    """
    if n < 0:
        raise InvalidParameter("batch_size", f"must not be negative, got {n}")
    seeds = [seed + (i if subseed_strength == 0 else 0) for i in range(n)]
    subseeds = [subseed + i for i in range(n)]
    return seeds, subseeds


def slerp(val: float, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation from ``low`` (``val=0``) to ``high`` (``val=1``) as A1111 computes it.

    For a ``(C, H, W)`` noise tensor the vectors are taken along dimension 1 (one per channel and column),
    so the angle differs from column to column. When the two tensors are almost parallel (mean cosine
    above 0.9995) A1111 falls back to the linear mix ``val * low + (1 - val) * high``; that weighting is
    reversed compared with the spherical branch, and it is kept so seeds reproduce A1111's pictures.
    """
    cos = (low / low.norm(dim=1, keepdim=True) * (high / high.norm(dim=1, keepdim=True))).sum(1)
    if cos.mean() > _SLERP_LINEAR_THRESHOLD:
        return low * val + high * (1 - val)
    omega = torch.acos(cos)
    sin_omega = torch.sin(omega)
    weight_low = (torch.sin((1.0 - val) * omega) / sin_omega).unsqueeze(1)
    weight_high = (torch.sin(val * omega) / sin_omega).unsqueeze(1)
    return weight_low * low + weight_high * high


def _centre_spans(target: int, source: int) -> tuple[int, int, int]:
    """(start in target, start in source, length) of ``source`` pasted centred into ``target``.

    The arithmetic follows A1111 exactly (floor division of a possibly negative difference), so a resized
    seed fills the same cells it fills there.
    """
    offset = (target - source) // 2
    if offset >= 0:
        return offset, 0, source
    return 0, -offset, source + 2 * offset


class ImageNoise:
    """Noise of one batch: the initial latent noise and the noise ancestral samplers add (A1111's ImageRNG).

    Args:
        shape: latent shape of one image, ``(C, height // 8, width // 8)``.
        seeds: one seed per image.
        subseeds: variation seeds (image ``i`` uses ``subseeds[i]``, or 0 past the end).
        subseed_strength: variation strength, 0 (seed only) to 1 (variation seed only).
        seed_resize_from_h, seed_resize_from_w: pixel size to draw the seed's noise at (A1111's "Resize seed
            from"); 0 or less disables it.
        source: ``"GPU"`` draws on ``device``, ``"CPU"`` draws on the CPU and moves the result.
        device, dtype: where and in which precision the returned noise lives (drawn in float32).
        eta_noise_seed_delta: A1111's ENSD; when nonzero the per-image generators are re-seeded with
            ``seed + delta`` after the initial noise.
    """

    def __init__(
        self,
        shape: Sequence[int],
        seeds: Sequence[int],
        subseeds: Sequence[int] | None = None,
        subseed_strength: float = 0.0,
        seed_resize_from_h: int = 0,
        seed_resize_from_w: int = 0,
        *,
        source: str = "GPU",
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        eta_noise_seed_delta: int = 0,
    ) -> None:
        if source not in RNG_SOURCES:
            raise InvalidParameter(
                "randn_source", f"unknown source {source!r}; valid: {', '.join(RNG_SOURCES)}"
            )
        if len(shape) != 3:
            raise InvalidParameter("shape", f"expected (channels, height, width), got {tuple(shape)}")
        if not seeds:
            raise InvalidParameter("seed", "at least one seed is needed")
        if not 0.0 <= subseed_strength <= 1.0:
            raise InvalidParameter("subseed_strength", f"must be between 0 and 1, got {subseed_strength}")
        self.shape = tuple(int(s) for s in shape)
        self.seeds = [int(s) for s in seeds]
        self.subseeds = [int(s) for s in subseeds] if subseeds is not None else None
        self.subseed_strength = float(subseed_strength)
        self.seed_resize_from_h = int(seed_resize_from_h or 0)
        self.seed_resize_from_w = int(seed_resize_from_w or 0)
        self.device = torch.device(device)
        self.dtype = dtype
        self.eta_noise_seed_delta = int(eta_noise_seed_delta or 0)
        draws_on_target = source == "GPU" and self.device.type not in ("cpu", "mps")
        self.generator_device = self.device if draws_on_target else torch.device("cpu")
        self._generators = [self._generator(seed) for seed in self.seeds]
        self._first_drawn = False

    def _generator(self, seed: int) -> torch.Generator:
        return torch.Generator(self.generator_device).manual_seed(int(seed))

    def _draw(self, shape: Sequence[int], generator: torch.Generator) -> torch.Tensor:
        return torch.randn(tuple(shape), generator=generator, device=self.generator_device)

    def _draw_fresh(self, seed: int, shape: Sequence[int]) -> torch.Tensor:
        """The first tensor of a new generator seeded with ``seed``."""
        return self._draw(shape, self._generator(seed))

    @property
    def seed_shape(self) -> tuple[int, int, int]:
        """Shape the seed's noise is drawn at: the "resize seed from" size when set, else :attr:`shape`."""
        if self.seed_resize_from_h <= 0 or self.seed_resize_from_w <= 0:
            return self.shape
        return (
            self.shape[0],
            self.seed_resize_from_h // LATENT_FACTOR,
            self.seed_resize_from_w // LATENT_FACTOR,
        )

    def _image_noise(self, index: int) -> torch.Tensor:
        seed, generator = self.seeds[index], self._generators[index]
        seed_shape = self.seed_shape
        resized = seed_shape != self.shape

        noise = self._draw_fresh(seed, seed_shape) if resized else self._draw(self.shape, generator)
        if self.subseeds is not None and self.subseed_strength != 0:
            subseed = self.subseeds[index] if index < len(self.subseeds) else 0
            noise = slerp(self.subseed_strength, noise, self._draw_fresh(subseed, seed_shape))
        if not resized:
            return noise

        canvas = self._draw(self.shape, generator)
        ty, sy, h = _centre_spans(self.shape[1], seed_shape[1])
        tx, sx, w = _centre_spans(self.shape[2], seed_shape[2])
        canvas[:, ty : ty + h, tx : tx + w] = noise[:, sy : sy + h, sx : sx + w]
        return canvas

    def _finish(self, noise: torch.Tensor) -> torch.Tensor:
        return noise.to(device=self.device, dtype=self.dtype)

    def first(self) -> torch.Tensor:
        """The initial noise batch ``[B, C, h, w]`` (draws from the per-image generators)."""
        batch = torch.stack([self._image_noise(i) for i in range(len(self.seeds))])
        if self.eta_noise_seed_delta:
            self._generators = [self._generator(seed + self.eta_noise_seed_delta) for seed in self.seeds]
        self._first_drawn = True
        return self._finish(batch)

    def next(self) -> torch.Tensor:
        """The next noise batch from the per-image generators; the first call returns :meth:`first`."""
        if not self._first_drawn:
            return self.first()
        return self._finish(torch.stack([self._draw(self.shape, g) for g in self._generators]))

    def noise_sampler(self, sigma: torch.Tensor | float, sigma_next: torch.Tensor | float) -> torch.Tensor:
        """k-diffusion's ``noise_sampler(sigma, sigma_next)`` contract: fresh noise for one ancestral step."""
        return self.next()
