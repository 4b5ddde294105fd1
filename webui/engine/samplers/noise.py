"""Noise sources for stochastic samplers; all randomness enters the samplers through these.

A noise sampler is a callable ``noise_sampler(sigma, sigma_next) -> tensor shaped like x`` returning standard
normal noise for the step from ``sigma`` to ``sigma_next``. Samplers never touch the global torch RNG.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from webui.engine.errors import InvalidParameter

NoiseSampler = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class GeneratorNoiseSampler:
    """Independent Gaussian noise from explicit ``torch.Generator`` objects.

    With one generator the whole batch is drawn at once; with one generator per batch item each item's noise
    comes from its own generator, so an image reproduces alone with the same seed. Noise is drawn on the
    generator's device and moved to ``x``'s, so CPU generators give device-independent results.
    """

    def __init__(self, x: torch.Tensor, generator: torch.Generator | Sequence[torch.Generator]) -> None:
        self._shape = tuple(x.shape)
        self._dtype = x.dtype
        self._device = x.device
        if isinstance(generator, torch.Generator):
            self._generators: tuple[torch.Generator, ...] = (generator,)
            self._per_item = False
        else:
            self._generators = tuple(generator)
            self._per_item = True
            if len(self._generators) != self._shape[0]:
                raise InvalidParameter(
                    "seed", f"got {len(self._generators)} generators for a batch of {self._shape[0]}"
                )

    def __call__(
        self, sigma: torch.Tensor | None = None, sigma_next: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Return fresh standard normal noise shaped like ``x``."""
        if not self._per_item:
            gen = self._generators[0]
            noise = torch.randn(self._shape, generator=gen, device=gen.device, dtype=torch.float32)
        else:
            noise = torch.stack(
                [
                    torch.randn(self._shape[1:], generator=gen, device=gen.device, dtype=torch.float32)
                    for gen in self._generators
                ]
            )
        return noise.to(self._device, self._dtype)


class BrownianTreeNoiseSampler:
    """Noise from a Brownian motion over sigma, so that SDE samplers converge as the step count grows.

    The noise for ``(sigma, sigma_next)`` is the Brownian increment between those times divided by
    ``sqrt(|sigma_next - sigma|)``, which is standard normal, and consistent across step sizes: the same seed
    with more steps refines the same path. With a list of seeds (one per batch item) each item has its own
    tree, so batch item ``i`` equals a single-image run with ``seed[i]``. Trees live on the CPU.
    """

    def __init__(
        self,
        x: torch.Tensor,
        sigma_min: float | torch.Tensor,
        sigma_max: float | torch.Tensor,
        seed: int | Sequence[int],
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        import torchsde

        self._transform = transform if transform is not None else (lambda value: value)
        self._device = x.device
        self._dtype = x.dtype
        t_low = self._time(sigma_min)
        t_high = self._time(sigma_max)
        if t_low == t_high:
            raise InvalidParameter("sigma_min", "the Brownian tree needs sigma_min < sigma_max")
        self._t_low, self._t_high = min(t_low, t_high), max(t_low, t_high)
        # torchsde keeps the ends in float32; a small margin keeps float64 queries at the ends inside.
        margin = 1e-6 * (self._t_high - self._t_low)
        self._per_item = not isinstance(seed, int)
        seeds = list(seed) if self._per_item else [seed]
        if self._per_item and len(seeds) != x.shape[0]:
            raise InvalidParameter("seed", f"got {len(seeds)} seeds for a batch of {x.shape[0]}")
        start = torch.zeros(tuple(x.shape[1:]) if self._per_item else tuple(x.shape), dtype=torch.float32)
        self._trees = [
            torchsde.BrownianTree(self._t_low - margin, start, self._t_high + margin, entropy=int(item))
            for item in seeds
        ]

    def _time(self, sigma: float | torch.Tensor) -> float:
        return float(self._transform(torch.as_tensor(sigma, dtype=torch.float64).detach().cpu()))

    def __call__(self, sigma: torch.Tensor | float, sigma_next: torch.Tensor | float) -> torch.Tensor:
        """Return the normalised Brownian increment between ``sigma`` and ``sigma_next``."""
        t_a, t_b = self._time(sigma), self._time(sigma_next)
        lower = min(max(min(t_a, t_b), self._t_low), self._t_high)
        upper = min(max(max(t_a, t_b), self._t_low), self._t_high)
        sign = 1.0 if t_b >= t_a else -1.0
        increments = [tree(lower, upper) for tree in self._trees]
        walk = torch.stack(increments) if self._per_item else increments[0]
        noise = walk * (sign / (upper - lower) ** 0.5)
        return noise.to(self._device, self._dtype)


class LazyNoise:
    """Build the noise sampler only when a step first needs noise.

    Deterministic settings (eta 0, no churn) then run without a seed, while a stochastic step without any
    source of randomness raises ``InvalidParameter("seed", ...)``.
    """

    def __init__(
        self,
        x: torch.Tensor,
        sigmas: torch.Tensor,
        noise_sampler: NoiseSampler | None = None,
        generator: torch.Generator | Sequence[torch.Generator] | None = None,
        seed: int | Sequence[int] | None = None,
        brownian: bool = False,
    ) -> None:
        self._x = x
        self._sigmas = sigmas
        self._sampler = noise_sampler
        self._generator = generator
        self._seed = seed
        self._brownian = brownian

    def _build(self) -> NoiseSampler:
        if self._brownian and self._seed is not None:
            positive = self._sigmas[self._sigmas > 0]
            return BrownianTreeNoiseSampler(self._x, positive.min(), self._sigmas.max(), self._seed)
        if self._generator is not None:
            return GeneratorNoiseSampler(self._x, self._generator)
        if self._seed is not None:
            seeds = [self._seed] if isinstance(self._seed, int) else list(self._seed)
            gens = [torch.Generator("cpu").manual_seed(int(s)) for s in seeds]
            return GeneratorNoiseSampler(self._x, gens[0] if isinstance(self._seed, int) else gens)
        raise InvalidParameter(
            "seed",
            "this sampler adds noise: pass a noise_sampler, a generator (torch.Generator) or a seed",
        )

    def __call__(self, sigma: torch.Tensor, sigma_next: torch.Tensor) -> torch.Tensor:
        """Return noise for the step ``sigma -> sigma_next``."""
        if self._sampler is None:
            self._sampler = self._build()
        return self._sampler(sigma, sigma_next)
