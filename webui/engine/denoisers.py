"""Denoiser wrappers in k-diffusion's form: ``denoiser(x, sigma) -> x0``.

:class:`UNetDenoiser` turns a diffusers UNet (eps- or v-prediction, trained on discrete timesteps) into
that form. :class:`CFGDenoiser` batches conditional and unconditional rows (and AND sub-prompts) into as
few UNet calls as shapes allow and combines them with the CFG scale. Extra wrappers (inpaint blending,
extension guidance) stack on top through ``post_denoise`` functions in a declared order.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from webui.engine.conditioning import CondTensors, ImageCond, ScheduledCond
from webui.engine.discrete import DiscreteSchedule
from webui.models.unet_graphs import GraphedUNet


@dataclass
class StepTracker:
    """The sampling step in progress, advanced by the sampler callback (for prompt editing)."""

    step: int = 0


class UNetDenoiser:
    """A UNet as an x0-predictor in sigma space (VE form ``x = x0 + sigma * eps``)."""

    def __init__(
        self,
        unet: torch.nn.Module,
        schedule: DiscreteSchedule,
        prediction_type: str,
        dtype: torch.dtype,
        graphs: GraphedUNet | None = None,
    ):
        self.unet = unet
        self.schedule = schedule
        self.v_prediction = prediction_type == "v_prediction"
        self.dtype = dtype
        self.graphs = graphs  # replays the UNet as CUDA graphs where exactly equivalent; None: always eager

    def __call__(
        self,
        x: torch.Tensor,
        sigma: torch.Tensor,
        *,
        context: torch.Tensor,
        added_cond: dict[str, torch.Tensor] | None = None,
        image_cond: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Predict x0 for a batch ``x`` at noise levels ``sigma`` ``[B]``."""
        s = sigma.to(torch.float32).reshape(-1, 1, 1, 1)
        c_in = 1.0 / torch.sqrt(s**2 + 1.0)
        t = self.schedule.sigma_to_t(sigma.to(torch.float32))  # on sigma's device: no host sync
        inp = x * c_in
        if image_cond is not None:
            inp = torch.cat([inp, image_cond.to(inp.dtype)], dim=1)
        added = None if added_cond is None else {k: v.to(self.dtype) for k, v in added_cond.items()}
        inp, context = inp.to(self.dtype), context.to(self.dtype)
        if self.graphs is not None:
            out = self.graphs(inp, t, context, added).float()
        else:
            kwargs = {} if added is None else {"added_cond_kwargs": added}
            out = self.unet(inp, t, encoder_hidden_states=context, **kwargs).sample.float()
        if self.v_prediction:
            return x * (1.0 / (s**2 + 1.0)) - out * (s / torch.sqrt(s**2 + 1.0))
        return x - out * s


@dataclass
class _Row:
    image: int
    cond: CondTensors
    time_ids: torch.Tensor | None
    kind: str  # "cond" | "uncond"
    weight: float = 1.0


@dataclass
class CFGDenoiser:
    """Classifier-free guidance over per-image AND sub-prompts, with batched UNet calls.

    ``denoised = uncond + cfg_scale * sum_k w_k * (cond_k - uncond)`` per image (A1111's composable
    diffusion). With ``cfg_scale == 1`` and one sub-prompt of weight 1 the unconditional pass is skipped:
    the result is mathematically identical and twice as fast.
    """

    inner: UNetDenoiser
    conds: Sequence[ImageCond]
    unconds: Sequence[ScheduledCond]
    cfg_scale: float
    tracker: StepTracker
    time_ids: torch.Tensor | None = None  # SDXL size/crop ids per image [B, n]
    time_ids_uncond: torch.Tensor | None = None
    image_cond: torch.Tensor | None = None  # inpainting-model channels per image [B, 5, h, w]
    post_denoise: list[Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]] = field(
        default_factory=list
    )
    max_rows: int = 16
    _indices: dict[tuple[tuple[int, ...], torch.device], torch.Tensor] = field(
        default_factory=dict, init=False, repr=False
    )

    def _needs_uncond(self) -> bool:
        if self.cfg_scale != 1.0:
            return True
        return any(len(c.parts) != 1 or c.parts[0][1] != 1.0 for c in self.conds)

    def _rows(self, step: int) -> list[_Row]:
        rows: list[_Row] = []
        uncond_needed = self._needs_uncond()
        for i, image in enumerate(self.conds):
            tid = self.time_ids[i] if self.time_ids is not None else None
            for scheduled, weight in image.parts:
                rows.append(_Row(i, scheduled.at(step), tid, "cond", weight))
            if uncond_needed:
                utid = self.time_ids_uncond[i] if self.time_ids_uncond is not None else tid
                rows.append(_Row(i, self.unconds[i].at(step), utid, "uncond"))
        return rows

    def _index(self, images: tuple[int, ...], device: torch.device) -> torch.Tensor:
        # made once per row layout: a fresh host->device copy every step would wait for the GPU
        key = (images, device)
        if key not in self._indices:
            self._indices[key] = torch.tensor(images, device=device)
        return self._indices[key]

    def _run(self, x: torch.Tensor, sigma: torch.Tensor, rows: list[_Row]) -> list[torch.Tensor]:
        outputs: list[torch.Tensor | None] = [None] * len(rows)
        groups: dict[tuple[int, ...], list[int]] = {}
        for n, row in enumerate(rows):
            groups.setdefault(tuple(row.cond.context.shape), []).append(n)
        for members in groups.values():
            for start in range(0, len(members), self.max_rows):
                part = members[start : start + self.max_rows]
                idx = self._index(tuple(rows[n].image for n in part), x.device)
                context = torch.stack([rows[n].cond.context for n in part]).to(x.device)
                added = None
                if rows[part[0]].cond.pooled is not None:
                    added = {
                        "text_embeds": torch.stack([rows[n].cond.pooled for n in part]).to(x.device),
                        "time_ids": torch.stack([rows[n].time_ids for n in part]).to(x.device),
                    }
                image_cond = self.image_cond[idx] if self.image_cond is not None else None
                out = self.inner(x[idx], sigma[idx], context=context, added_cond=added, image_cond=image_cond)
                for k, n in enumerate(part):
                    outputs[n] = out[k]
        return [o for o in outputs if o is not None]

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, **_: object) -> torch.Tensor:
        """Guided x0 estimate for the batch ``x`` at ``sigma``."""
        if sigma.dim() == 0:
            sigma = sigma.expand(x.shape[0])
        rows = self._rows(self.tracker.step)
        outs = self._run(x, sigma, rows)
        result = torch.empty_like(x, dtype=torch.float32)
        for i in range(x.shape[0]):
            mine = [(r, o) for r, o in zip(rows, outs, strict=True) if r.image == i]
            uncond = next((o for r, o in mine if r.kind == "uncond"), None)
            conds = [(o, r.weight) for r, o in mine if r.kind == "cond"]
            if uncond is None:
                result[i] = conds[0][0]
            else:
                delta = sum((c - uncond) * w for c, w in conds)
                result[i] = uncond + delta * self.cfg_scale
        for fn in self.post_denoise:
            result = fn(x, sigma, result)
        return result
