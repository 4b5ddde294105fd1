"""The Gaussian diffusion pieces Disco Diffusion uses, written fresh after guided-diffusion's formulas.

Linear beta schedule, timestep respacing (``"ddim250"``, ``"250"``, ``"10,15,20"``), eps / x0 conversions and
two sampling loops, :func:`ddim_sample` and :func:`plms_sample`, both generators yielding one
:class:`StepOutput` per step. Guidance enters as guided-diffusion's *score conditioning*: a ``cond_fn``
returns the gradient of the log-density it wants to raise, and ``eps' = eps - sqrt(1 - abar) * grad``.

``model_fn(x, timesteps)`` is the network (e.g. :class:`~.unet.UNetModel`): ``timesteps`` are already mapped
from the respaced index to the network's 0..1000 scale. Its output's first ``C`` channels are eps; extra
channels (the learned variance range) are ignored, since neither DDIM nor PLMS uses the variance.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator

import torch

from webui.extensions.api import InvalidParameter

ModelFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
# cond_fn(x, t, pred_xstart) -> gradient with x's shape; t is the respaced step index (long, [N]).
CondFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
# callback(step, total, pred_xstart): step counts 0..total-1; raising stops the loop.
StepReport = Callable[[int, int, torch.Tensor], None]
# transform(x, step) -> x, applied to the sample before each step (Disco's symmetry transformations).
Transform = Callable[[torch.Tensor, int], torch.Tensor]

PLMS_ORDER = 2  # Disco calls plms_sample_loop_progressive with order=2


def linear_betas(num_steps: int) -> torch.Tensor:
    """guided-diffusion's linear schedule, scaled so any step count spans the same noise range (float64)."""
    if num_steps <= 0:
        raise InvalidParameter("diffusion_steps", f"must be positive, got {num_steps}")
    scale = 1000 / num_steps
    return torch.linspace(scale * 1e-4, scale * 0.02, num_steps, dtype=torch.float64)


def disco_diffusion_steps(steps: int) -> int:
    """Disco's base step count for ``steps`` sampling steps: ``(1000 // steps) * steps`` below 1000."""
    if steps <= 0:
        raise InvalidParameter("steps", f"must be positive, got {steps}")
    return (1000 // steps) * steps if steps < 1000 else steps


def space_timesteps(num_timesteps: int, spec: str | int) -> list[int]:
    """The base timesteps kept by a respacing ``spec``, ascending.

    ``"ddimN"``: an even integer stride giving exactly ``N`` steps (an error when none exists).
    ``"N"`` or ``"a,b,c"``: split the base steps into equal sections and take ``a``, ``b`` ... evenly spaced
    (rounded) steps from each, section ends included.
    """
    text = str(spec).strip()
    if text.startswith("ddim"):
        try:
            wanted = int(text[4:])
        except ValueError:
            raise InvalidParameter("timestep_respacing", f"bad DDIM respacing {text!r}") from None
        for stride in range(1, num_timesteps):
            if len(range(0, num_timesteps, stride)) == wanted:
                return list(range(0, num_timesteps, stride))
        if wanted == num_timesteps:
            return list(range(num_timesteps))
        raise InvalidParameter(
            "timestep_respacing",
            f"cannot take exactly {wanted} of {num_timesteps} steps with an integer stride",
        )
    try:
        counts = [int(part) for part in text.split(",")]
    except ValueError:
        raise InvalidParameter(
            "timestep_respacing", f"expected 'ddimN', 'N' or 'a,b,c', got {text!r}"
        ) from None
    per_section, extra = divmod(num_timesteps, len(counts))
    start, taken = 0, []
    for i, count in enumerate(counts):
        size = per_section + (1 if i < extra else 0)
        if count <= 0 or count > size:
            raise InvalidParameter(
                "timestep_respacing", f"cannot take {count} steps from a section of {size}"
            )
        stride = 1.0 if count == 1 else (size - 1) / (count - 1)
        taken.extend(start + round(stride * k) for k in range(count))
        start += size
    return sorted(set(taken))


@dataclasses.dataclass(frozen=True)
class Diffusion:
    """A (respaced) linear-schedule diffusion: per-step cumulative alphas and the base-timestep map.

    Index ``i`` runs over the kept steps (0 = least noise); ``timestep_map[i]`` is its base timestep.
    """

    alphas_cumprod: tuple[float, ...]
    timestep_map: tuple[int, ...]
    original_num_steps: int
    rescale_timesteps: bool = True

    @classmethod
    def create(
        cls, diffusion_steps: int = 1000, respacing: str | int = "", *, rescale_timesteps: bool = True
    ) -> Diffusion:
        """Build the diffusion for ``diffusion_steps`` base steps, respaced by ``respacing`` (empty: none)."""
        base = torch.cumprod(1.0 - linear_betas(diffusion_steps), dim=0)
        kept = (
            space_timesteps(diffusion_steps, respacing)
            if str(respacing).strip()
            else list(range(diffusion_steps))
        )
        # Respacing keeps the cumulative alphas of the kept steps (equivalently, new betas 1 - abar_i / abar_prev).
        return cls(tuple(float(base[k]) for k in kept), tuple(kept), diffusion_steps, rescale_timesteps)

    @classmethod
    def for_disco(cls, steps: int, sampling_mode: str = "ddim") -> Diffusion:
        """Disco's diffusion for ``steps`` sampling steps: ``ddim{steps}`` respacing of the base schedule."""
        del sampling_mode  # Disco respaces with "ddim{steps}" for both DDIM and PLMS
        return cls.create(disco_diffusion_steps(steps), f"ddim{steps}")

    @property
    def num_timesteps(self) -> int:
        """Number of (respaced) steps."""
        return len(self.alphas_cumprod)

    def alpha_bar(self, i: int) -> float:
        """Cumulative alpha at step ``i``."""
        return self.alphas_cumprod[i]

    def alpha_bar_prev(self, i: int) -> float:
        """Cumulative alpha of the step after ``i`` in sampling order (1 past the last)."""
        return self.alphas_cumprod[i - 1] if i > 0 else 1.0

    def sqrt_one_minus_alpha_bar(self, i: int) -> float:
        """``sqrt(1 - abar_i)``: the noise level of step ``i``, Disco's mixing factor for ``x_in``."""
        return math.sqrt(1.0 - self.alphas_cumprod[i])

    def model_timesteps(self, i: int, batch: int, device: torch.device | str) -> torch.Tensor:
        """What the network gets for step ``i``: its base timestep, rescaled to the 0..1000 range."""
        t = float(self.timestep_map[i])
        if self.rescale_timesteps:
            t *= 1000.0 / self.original_num_steps
        return torch.full((batch,), t, device=device, dtype=torch.float32)

    def q_sample(self, x_start: torch.Tensor, i: int, noise: torch.Tensor) -> torch.Tensor:
        """Noise ``x_start`` to step ``i``: ``sqrt(abar) x0 + sqrt(1 - abar) noise``."""
        abar = self.alphas_cumprod[i]
        return math.sqrt(abar) * x_start + math.sqrt(1.0 - abar) * noise

    def xstart_from_eps(self, x: torch.Tensor, i: int, eps: torch.Tensor) -> torch.Tensor:
        """``x0 = (x - sqrt(1 - abar) eps) / sqrt(abar)``."""
        abar = self.alphas_cumprod[i]
        return math.sqrt(1.0 / abar) * x - math.sqrt(1.0 / abar - 1.0) * eps

    def eps_from_xstart(self, x: torch.Tensor, i: int, xstart: torch.Tensor) -> torch.Tensor:
        """``eps = (x / sqrt(abar) - x0) / sqrt(1 / abar - 1)``."""
        abar = self.alphas_cumprod[i]
        return (math.sqrt(1.0 / abar) * x - xstart) / math.sqrt(1.0 / abar - 1.0)


@dataclasses.dataclass(frozen=True)
class StepOutput:
    """One sampling step: its 0-based ``step`` of ``total``, the step index ``t``, the new ``sample`` and
    the (guided) clean-image prediction ``pred_xstart``."""

    step: int
    total: int
    t: int
    sample: torch.Tensor
    pred_xstart: torch.Tensor


def _model_eps(model_fn: ModelFn, diffusion: Diffusion, x: torch.Tensor, i: int) -> torch.Tensor:
    out = model_fn(x, diffusion.model_timesteps(i, x.shape[0], x.device))
    channels = x.shape[1]
    if (
        out.shape[0] != x.shape[0]
        or out.shape[1] not in (channels, 2 * channels)
        or out.shape[2:] != x.shape[2:]
    ):
        raise InvalidParameter(
            "model", f"model output shape {tuple(out.shape)} does not fit the input {tuple(x.shape)}"
        )
    return out[:, :channels].to(x.dtype)


def _guided(
    model_fn: ModelFn,
    diffusion: Diffusion,
    x: torch.Tensor,
    i: int,
    cond_fn: CondFn | None,
    grad_through_model: bool,
    clip_denoised: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(guided eps, guided pred_xstart, unguided pred_xstart) at step ``i``."""
    t = torch.full((x.shape[0],), i, device=x.device, dtype=torch.long)
    grad = None
    if cond_fn is not None and grad_through_model:
        with torch.enable_grad():
            x_in = x.detach().requires_grad_()
            pred = diffusion.xstart_from_eps(x_in, i, _model_eps(model_fn, diffusion, x_in, i))
            grad = cond_fn(x_in, t, pred)
        pred = pred.detach()
    else:
        with torch.no_grad():
            pred = diffusion.xstart_from_eps(x, i, _model_eps(model_fn, diffusion, x, i))
        if cond_fn is not None:
            grad = cond_fn(x, t, pred)
    if clip_denoised:
        pred = pred.clamp(-1, 1)
    eps = diffusion.eps_from_xstart(x, i, pred)
    if grad is None:
        return eps, pred, pred
    if grad.shape != x.shape:
        raise InvalidParameter(
            "cond_fn", f"gradient shape {tuple(grad.shape)} differs from x {tuple(x.shape)}"
        )
    eps_guided = eps - diffusion.sqrt_one_minus_alpha_bar(i) * grad.detach().to(x.dtype)
    return eps_guided, diffusion.xstart_from_eps(x, i, eps_guided), pred


def _start(
    diffusion: Diffusion,
    shape: tuple[int, ...],
    skip_timesteps: int,
    init_image: torch.Tensor | None,
    generator: torch.Generator,
    device: torch.device | str | None,
    dtype: torch.dtype,
) -> tuple[torch.Tensor, list[int]]:
    if not 0 <= skip_timesteps < diffusion.num_timesteps:
        raise InvalidParameter(
            "skip_steps", f"must be in 0..{diffusion.num_timesteps - 1}, got {skip_timesteps}"
        )
    if init_image is not None and tuple(init_image.shape) != tuple(shape):
        raise InvalidParameter("init_image", f"shape {tuple(init_image.shape)} differs from {tuple(shape)}")
    if device is None:
        device = init_image.device if init_image is not None else generator.device
    noise = torch.randn(shape, generator=generator, device=generator.device, dtype=dtype).to(device)
    indices = list(range(diffusion.num_timesteps - skip_timesteps))[::-1]
    if init_image is not None:
        x = diffusion.q_sample(init_image.to(device, dtype), indices[0], noise)
    elif skip_timesteps:
        x = diffusion.q_sample(torch.zeros_like(noise), indices[0], noise)  # as guided-diffusion does
    else:
        x = noise
    return x, indices


def ddim_sample(
    model_fn: ModelFn,
    shape: tuple[int, ...],
    *,
    diffusion: Diffusion,
    generator: torch.Generator,
    eta: float = 0.0,
    cond_fn: CondFn | None = None,
    grad_through_model: bool = False,
    skip_timesteps: int = 0,
    init_image: torch.Tensor | None = None,
    clip_denoised: bool = False,
    randomize_class: bool = False,
    callback: StepReport | None = None,
    transform: Transform | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Iterator[StepOutput]:
    """DDIM sampling (``eta`` 0: deterministic; 1: DDPM-like), yielding each step.

    ``cond_fn(x, t, pred_xstart)`` returns the guidance gradient; with ``grad_through_model`` the model runs
    with autograd on ``x`` so ``pred_xstart`` carries the graph (one network pass serves both). Noise comes
    only from ``generator`` (drawn on its device, then moved to ``device``). ``callback(step, total,
    pred_xstart)`` runs after each step; an exception from it ends the loop. ``transform(x, step)`` (optional)
    may replace the sample before each step.
    """
    if randomize_class:
        raise InvalidParameter("randomize_class", "class-conditional sampling is not supported")
    if eta < 0:
        raise InvalidParameter("eta", f"must be >= 0, got {eta}")
    x, indices = _start(diffusion, shape, skip_timesteps, init_image, generator, device, dtype)
    total = len(indices)
    for step, i in enumerate(indices):
        if transform is not None:
            x = transform(x, step)
        eps, pred, _ = _guided(model_fn, diffusion, x, i, cond_fn, grad_through_model, clip_denoised)
        abar, abar_prev = diffusion.alpha_bar(i), diffusion.alpha_bar_prev(i)
        sigma = eta * math.sqrt((1 - abar_prev) / (1 - abar)) * math.sqrt(1 - abar / abar_prev)
        x = math.sqrt(abar_prev) * pred + math.sqrt(max(1 - abar_prev - sigma**2, 0.0)) * eps
        if sigma > 0 and i > 0:
            noise = torch.randn(x.shape, generator=generator, device=generator.device, dtype=x.dtype)
            x = x + sigma * noise.to(x.device)
        x = x.detach()
        if callback is not None:
            callback(step, total, pred)
        yield StepOutput(step, total, i, x, pred)


def plms_sample(
    model_fn: ModelFn,
    shape: tuple[int, ...],
    *,
    diffusion: Diffusion,
    generator: torch.Generator,
    order: int = PLMS_ORDER,
    cond_fn: CondFn | None = None,
    grad_through_model: bool = False,
    skip_timesteps: int = 0,
    init_image: torch.Tensor | None = None,
    clip_denoised: bool = False,
    randomize_class: bool = False,
    callback: StepReport | None = None,
    transform: Transform | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Iterator[StepOutput]:
    """Pseudo linear multistep sampling (Liu et al.), as in Disco's guided-diffusion fork.

    The first step is a pseudo improved Euler step (two guided model calls); later steps combine the last
    ``order`` guided eps with Adams-Bashforth weights. Deterministic apart from the starting noise. Other
    arguments as in :func:`ddim_sample`.
    """
    if randomize_class:
        raise InvalidParameter("randomize_class", "class-conditional sampling is not supported")
    if order not in (1, 2, 3, 4):
        raise InvalidParameter("order", f"PLMS order must be 1 to 4, got {order}")
    x, indices = _start(diffusion, shape, skip_timesteps, init_image, generator, device, dtype)
    total = len(indices)
    old_eps: list[torch.Tensor] = []

    def guided(x_at: torch.Tensor, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        eps, pred, _ = _guided(model_fn, diffusion, x_at, i, cond_fn, grad_through_model, clip_denoised)
        return eps, pred

    def to_prev(x_at: torch.Tensor, i: int, eps: torch.Tensor) -> torch.Tensor:
        abar_prev = diffusion.alpha_bar_prev(i)
        return math.sqrt(abar_prev) * diffusion.xstart_from_eps(x_at, i, eps) + math.sqrt(1 - abar_prev) * eps

    for step, i in enumerate(indices):
        if transform is not None:
            x = transform(x, step)
        eps, pred = guided(x, i)
        if order > 1 and not old_eps and i > 0:
            eps_next, _ = guided(to_prev(x, i, eps), i - 1)
            eps_prime = (eps + eps_next) / 2
            old_eps.append(eps)
        else:
            old_eps.append(eps)
            eps_prime = _adams_bashforth(old_eps[-order:])
        if len(old_eps) >= order:
            old_eps.pop(0)
        x = to_prev(x, i, eps_prime) if i > 0 else pred
        x = x.detach()
        if callback is not None:
            callback(step, total, pred)
        yield StepOutput(step, total, i, x, pred)


def _adams_bashforth(history: list[torch.Tensor]) -> torch.Tensor:
    """Combine the newest eps values (oldest first) with Adams-Bashforth weights of their count's order."""
    weights = {1: (1.0,), 2: (-1.0, 3.0), 3: (5.0, -16.0, 23.0), 4: (-9.0, 37.0, -59.0, 55.0)}
    denominators = {1: 1.0, 2: 2.0, 3: 12.0, 4: 24.0}
    n = len(history)
    return sum(w * e for w, e in zip(weights[n], history, strict=True)) / denominators[n]


def final_sample(steps: Iterator[StepOutput]) -> torch.Tensor:
    """Run a sampling generator to its end and return the last sample."""
    last = None
    for last in steps:  # noqa: B007 - only the last is needed
        pass
    if last is None:
        raise InvalidParameter("steps", "the sampler produced no steps")
    return last.sample
