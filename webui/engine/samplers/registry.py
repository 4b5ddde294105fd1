"""The sampler and schedule catalogues: records users know from A1111, registries, and sigma preparation.

Registries are plain instances (one pair per application context); nothing here is module-level mutable
state. Extensions register entries under their own owner id and are removed with ``unregister_owner``.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Iterable, Mapping
from types import MappingProxyType
from typing import Any

import torch

from webui.engine import schedules
from webui.engine.discrete import DiscreteSchedule
from webui.engine.errors import InvalidParameter
from webui.engine.samplers import dpm_solver, k_samplers, multistep, restart, timestep_samplers

AUTOMATIC = "automatic"
CORE_OWNER = "core"
_EMPTY: Mapping[str, Any] = MappingProxyType({})
# A1111's legacy combined aliases: "k_dpmpp_2m_ka" = "k_dpmpp_2m" + Karras, "..._exp" = + Exponential.
LEGACY_ALIAS_SUFFIXES: Mapping[str, str] = MappingProxyType({"_ka": "karras", "_exp": "exponential"})


@dataclasses.dataclass(frozen=True)
class SamplerInfo:
    """One entry of the sampler catalogue.

    Attributes:
        label: the name users, infotext and the API use ("DPM++ 2M").
        aliases: other accepted names ("k_dpmpp_2m").
        function: the k-diffusion-style sampling function.
        default_schedule: schedule name that "Automatic" resolves to for this sampler.
        second_order: evaluates the model about twice per step.
        ancestral: adds fresh noise after every step ("a" samplers).
        uses_eta: accepts ``eta``.
        brownian_noise: wants a :class:`BrownianTreeNoiseSampler` (SDE samplers).
        discard_penultimate_sigma: A1111 computes ``steps + 1`` sigmas and drops the second-to-last.
        uses_ensd: A1111 offsets the noise seed by "Eta noise seed delta" for it.
        stochastic: needs a noise source with its default options.
        default_options: keyword options passed unless the caller overrides them.
    """

    label: str
    aliases: tuple[str, ...]
    function: Callable[..., torch.Tensor]
    default_schedule: str = "uniform"
    second_order: bool = False
    ancestral: bool = False
    uses_eta: bool = False
    brownian_noise: bool = False
    discard_penultimate_sigma: bool = False
    uses_ensd: bool = False
    stochastic: bool = False
    default_options: Mapping[str, Any] = dataclasses.field(default_factory=lambda: _EMPTY)

    @property
    def name(self) -> str:
        """The sampler's name as the API reports it (same as the label)."""
        return self.label

    def accepts(self, option: str) -> bool:
        """Whether the sampling function takes the keyword ``option`` (e.g. ``"s_churn"``)."""
        return option in inspect.signature(self.function).parameters

    def options_with(self, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Default options updated with ``overrides``; unknown option names raise InvalidParameter."""
        options = dict(self.default_options)
        for key, value in (overrides or {}).items():
            if not self.accepts(key):
                valid = [p for p in inspect.signature(self.function).parameters if p not in _CONTRACT_PARAMS]
                raise InvalidParameter(
                    key, f"the {self.label} sampler has no option {key!r}; valid: {', '.join(valid)}"
                )
            options[key] = value
        return options

    def api_options(self) -> dict[str, Any]:
        """The ``options`` object of ``/sdapi/v1/samplers`` (A1111's keys)."""
        options: dict[str, Any] = {"scheduler": self.default_schedule}
        flags = {
            "second_order": self.second_order,
            "brownian_noise": self.brownian_noise,
            "discard_next_to_last_sigma": self.discard_penultimate_sigma,
            "uses_ensd": self.uses_ensd,
        }
        options.update({key: value for key, value in flags.items() if value})
        if "solver_type" in self.default_options:
            options["solver_type"] = self.default_options["solver_type"]
        return options


_CONTRACT_PARAMS = frozenset({"model", "x", "sigmas", "extra_args", "callback", "disable"})


@dataclasses.dataclass(frozen=True)
class ScheduleInfo:
    """One entry of the schedule catalogue ("Schedule type" in A1111).

    Attributes:
        label: the UI / infotext name ("Karras"); ``name``: the API name ("karras").
        function: ``fn(n, sigma_min, sigma_max, *, model, device, **opts)``; None for "Automatic".
        aliases: other accepted names.
        default_rho: the schedule takes ``rho`` with this default (None if it has no rho).
        needs_model: the schedule reads the model's discrete noise levels.
    """

    label: str
    name: str
    function: Callable[..., torch.Tensor] | None
    aliases: tuple[str, ...] = ()
    default_rho: float | None = None
    needs_model: bool = False


def _key(name: str) -> str:
    return name.strip().lower()


class ScheduleRegistry:
    """Schedules by label, API name or alias (case-insensitive), each recorded with its owner."""

    def __init__(self) -> None:
        self._entries: dict[str, tuple[ScheduleInfo, str]] = {}

    def register(self, info: ScheduleInfo, owner: str = CORE_OWNER) -> None:
        """Add a schedule; a name already taken by another entry raises ValueError."""
        _register(self._entries, info, (info.label, info.name, *info.aliases), owner, "schedule")

    def unregister_owner(self, owner: str) -> int:
        """Remove every schedule registered by ``owner``; return how many were removed."""
        return _unregister(self._entries, owner)

    def find(self, name: str) -> ScheduleInfo | None:
        """The schedule called ``name``, or None."""
        entry = self._entries.get(_key(name))
        return entry[0] if entry else None

    def get(self, name: str) -> ScheduleInfo:
        """The schedule called ``name``; unknown names raise ``InvalidParameter("scheduler", ...)``."""
        info = self.find(name)
        if info is None:
            raise InvalidParameter(
                "scheduler", f"unknown schedule type {name!r}; valid: {', '.join(self.labels())}"
            )
        return info

    def items(self) -> tuple[ScheduleInfo, ...]:
        """All schedules in registration order."""
        return _unique(self._entries)

    def labels(self) -> tuple[str, ...]:
        """Labels of all schedules in registration order."""
        return tuple(info.label for info in self.items())

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and _key(name) in self._entries


class SamplerRegistry:
    """Samplers by label or alias (case-insensitive); resolves names against a :class:`ScheduleRegistry`."""

    def __init__(self, schedules: ScheduleRegistry) -> None:
        self.schedules = schedules
        self._entries: dict[str, tuple[SamplerInfo, str]] = {}

    def register(self, info: SamplerInfo, owner: str = CORE_OWNER) -> None:
        """Add a sampler; a name already taken by another entry raises ValueError."""
        _register(self._entries, info, (info.label, *info.aliases), owner, "sampler")

    def unregister_owner(self, owner: str) -> int:
        """Remove every sampler registered by ``owner``; return how many were removed."""
        return _unregister(self._entries, owner)

    def find(self, name: str) -> SamplerInfo | None:
        """The sampler called ``name`` (label or alias), or None."""
        entry = self._entries.get(_key(name))
        return entry[0] if entry else None

    def get(self, name: str) -> SamplerInfo:
        """The sampler called ``name``; unknown names raise ``InvalidParameter("sampler_name", ...)``."""
        info = self.find(name)
        if info is None:
            raise InvalidParameter(
                "sampler_name", f"unknown sampler {name!r}; valid: {', '.join(self.labels())}"
            )
        return info

    def items(self) -> tuple[SamplerInfo, ...]:
        """All samplers in registration order."""
        return _unique(self._entries)

    def labels(self) -> tuple[str, ...]:
        """Labels of all samplers in registration order."""
        return tuple(info.label for info in self.items())

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and _key(name) in self._entries

    def _split_legacy(self, name: str) -> tuple[SamplerInfo, ScheduleInfo] | None:
        """Split "DPM++ 2M Karras" or "k_dpmpp_2m_ka" into a sampler and a schedule."""
        lowered = _key(name)
        for schedule in self.schedules.items():
            for option in (schedule.label, *schedule.aliases):
                suffix = " " + _key(option)
                if lowered.endswith(suffix) and (sampler := self.find(lowered[: -len(suffix)])) is not None:
                    return sampler, schedule
        for suffix, schedule_name in LEGACY_ALIAS_SUFFIXES.items():
            if lowered.endswith(suffix) and (sampler := self.find(lowered[: -len(suffix)])) is not None:
                return sampler, self.schedules.get(schedule_name)
        return None

    def resolve(
        self, sampler_name: str, scheduler_name: str | None = None
    ) -> tuple[SamplerInfo, ScheduleInfo]:
        """Resolve the names of a request to concrete entries.

        Legacy combined names ("DPM++ 2M Karras") are split, and their schedule wins, as in A1111. A missing
        scheduler or "Automatic" becomes the sampler's default schedule.
        """
        if not sampler_name or not sampler_name.strip():
            raise InvalidParameter("sampler_name", f"no sampler given; valid: {', '.join(self.labels())}")
        sampler = self.find(sampler_name)
        if sampler is None:
            split = self._split_legacy(sampler_name)
            if split is None:
                raise InvalidParameter(
                    "sampler_name", f"unknown sampler {sampler_name!r}; valid: {', '.join(self.labels())}"
                )
            return split
        if scheduler_name is None or _key(scheduler_name) in ("", AUTOMATIC):
            return sampler, self.schedules.get(sampler.default_schedule)
        schedule = self.schedules.get(scheduler_name)
        if schedule.function is None:
            return sampler, self.schedules.get(sampler.default_schedule)
        return sampler, schedule


def _register(entries: dict, info: Any, names: Iterable[str], owner: str, kind: str) -> None:
    keys = list(dict.fromkeys(_key(name) for name in names))
    taken = [key for key in keys if key in entries]
    if taken:
        raise ValueError(f"{kind} name(s) already registered: {', '.join(taken)}")
    for key in keys:
        entries[key] = (info, owner)


def _unregister(entries: dict, owner: str) -> int:
    removed = {id(info) for info, entry_owner in entries.values() if entry_owner == owner}
    for key in [key for key, (_, entry_owner) in entries.items() if entry_owner == owner]:
        del entries[key]
    return len(removed)


def _unique(entries: dict) -> tuple:
    seen: dict[int, Any] = {}
    for info, _ in entries.values():
        seen.setdefault(id(info), info)
    return tuple(seen.values())


def builtin_schedules() -> tuple[ScheduleInfo, ...]:
    """The schedule types A1111 offers, in A1111's order, with its labels and API names."""
    return (
        ScheduleInfo("Automatic", AUTOMATIC, None),
        ScheduleInfo("Uniform", "uniform", schedules.uniform, needs_model=True),
        ScheduleInfo("Karras", "karras", schedules.karras, default_rho=schedules.DEFAULT_KARRAS_RHO),
        ScheduleInfo("Exponential", "exponential", schedules.exponential),
        ScheduleInfo(
            "Polyexponential",
            "polyexponential",
            schedules.polyexponential,
            default_rho=schedules.DEFAULT_POLYEXPONENTIAL_RHO,
        ),
        ScheduleInfo("SGM Uniform", "sgm_uniform", schedules.sgm_uniform, ("SGMUniform",), needs_model=True),
        ScheduleInfo("KL Optimal", "kl_optimal", schedules.kl_optimal),
        ScheduleInfo("Align Your Steps", "align_your_steps", schedules.align_your_steps, needs_model=True),
        ScheduleInfo("Simple", "simple", schedules.simple, needs_model=True),
        ScheduleInfo("Normal", "normal", schedules.normal, needs_model=True),
        ScheduleInfo("DDIM", "ddim", schedules.ddim, needs_model=True),
        ScheduleInfo("Beta", "beta", schedules.beta, needs_model=True),
    )


def builtin_samplers() -> tuple[SamplerInfo, ...]:
    """The samplers A1111 1.10 offers (except DDIM CFG++), with its labels, aliases and defaults."""
    eta_1 = MappingProxyType({"eta": 1.0})
    return (
        SamplerInfo("DPM++ 2M", ("k_dpmpp_2m",), multistep.sample_dpmpp_2m, "karras"),
        SamplerInfo(
            "DPM++ SDE",
            ("k_dpmpp_sde",),
            k_samplers.sample_dpmpp_sde,
            "karras",
            second_order=True,
            uses_eta=True,
            brownian_noise=True,
            stochastic=True,
            default_options=eta_1,
        ),
        SamplerInfo(
            "DPM++ 2M SDE",
            ("k_dpmpp_2m_sde",),
            multistep.sample_dpmpp_2m_sde,
            "exponential",
            uses_eta=True,
            brownian_noise=True,
            stochastic=True,
            default_options=eta_1,
        ),
        SamplerInfo(
            "DPM++ 2M SDE Heun",
            ("k_dpmpp_2m_sde_heun",),
            multistep.sample_dpmpp_2m_sde,
            "exponential",
            uses_eta=True,
            brownian_noise=True,
            stochastic=True,
            default_options=MappingProxyType({"eta": 1.0, "solver_type": "heun"}),
        ),
        SamplerInfo(
            "DPM++ 2S a",
            ("k_dpmpp_2s_a",),
            k_samplers.sample_dpmpp_2s_ancestral,
            "karras",
            second_order=True,
            ancestral=True,
            uses_eta=True,
            uses_ensd=True,
            stochastic=True,
            default_options=eta_1,
        ),
        SamplerInfo(
            "DPM++ 3M SDE",
            ("k_dpmpp_3m_sde",),
            multistep.sample_dpmpp_3m_sde,
            "exponential",
            uses_eta=True,
            brownian_noise=True,
            discard_penultimate_sigma=True,
            stochastic=True,
            default_options=eta_1,
        ),
        SamplerInfo(
            "Euler a",
            ("k_euler_a", "k_euler_ancestral"),
            k_samplers.sample_euler_ancestral,
            ancestral=True,
            uses_eta=True,
            uses_ensd=True,
            stochastic=True,
            default_options=eta_1,
        ),
        SamplerInfo("Euler", ("k_euler",), k_samplers.sample_euler),
        SamplerInfo("LMS", ("k_lms",), multistep.sample_lms),
        SamplerInfo("Heun", ("k_heun",), k_samplers.sample_heun, second_order=True),
        SamplerInfo(
            "DPM2",
            ("k_dpm_2",),
            k_samplers.sample_dpm_2,
            "karras",
            second_order=True,
            discard_penultimate_sigma=True,
        ),
        SamplerInfo(
            "DPM2 a",
            ("k_dpm_2_a",),
            k_samplers.sample_dpm_2_ancestral,
            "karras",
            second_order=True,
            ancestral=True,
            uses_eta=True,
            discard_penultimate_sigma=True,
            uses_ensd=True,
            stochastic=True,
            default_options=eta_1,
        ),
        SamplerInfo(
            "DPM fast",
            ("k_dpm_fast",),
            dpm_solver.sample_dpm_fast,
            uses_eta=True,
            uses_ensd=True,
            stochastic=True,
            default_options=eta_1,
        ),
        SamplerInfo(
            "DPM adaptive",
            ("k_dpm_ad",),
            dpm_solver.sample_dpm_adaptive,
            uses_eta=True,
            uses_ensd=True,
            stochastic=True,
            default_options=eta_1,
        ),
        SamplerInfo(
            "Restart",
            ("restart",),
            restart.sample_restart,
            "karras",
            second_order=True,
            stochastic=True,
        ),
        SamplerInfo(
            "DDIM",
            ("ddim",),
            timestep_samplers.sample_ddim,
            "ddim",
            uses_eta=True,
            default_options=MappingProxyType({"eta": 0.0}),
        ),
        SamplerInfo("PLMS", ("plms",), timestep_samplers.sample_plms, "ddim"),
        SamplerInfo(
            "UniPC",
            ("unipc",),
            timestep_samplers.sample_unipc,
            "ddim",
            default_options=MappingProxyType({"order": 3, "variant": "bh1", "lower_order_final": True}),
        ),
        SamplerInfo("LCM", ("k_lcm",), k_samplers.sample_lcm, stochastic=True),
    )


def create_registries() -> tuple[SamplerRegistry, ScheduleRegistry]:
    """Fresh registries holding the built-in schedules and samplers (owner "core")."""
    schedule_registry = ScheduleRegistry()
    for schedule in builtin_schedules():
        schedule_registry.register(schedule)
    sampler_registry = SamplerRegistry(schedule_registry)
    for sampler in builtin_samplers():
        sampler_registry.register(sampler)
    return sampler_registry, schedule_registry


def _given(value: float | None) -> bool:
    # A1111's settings use 0 for "model default".
    return value is not None and value != 0


def prepare_sigmas(
    sampler: SamplerInfo,
    schedule: ScheduleInfo | None,
    steps: int,
    model: DiscreteSchedule,
    *,
    sigma_min: float | None = None,
    sigma_max: float | None = None,
    rho: float | None = None,
    beta_alpha: float | None = None,
    beta_beta: float | None = None,
    discard_penultimate_sigma: bool | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """The sigmas a sampler runs on for ``steps`` steps, following A1111's rules.

    - ``sigma_min`` / ``sigma_max`` default to the model's range; ``rho`` applies to schedules with a rho
      (None or 0 means default, as A1111's settings);
    - ``schedule`` None or "Automatic" falls back to Uniform (A1111's behaviour for a schedule without a
      function); resolve names with :meth:`SamplerRegistry.resolve` first to get the sampler's default;
    - samplers flagged ``discard_penultimate_sigma`` (or ``discard_penultimate_sigma=True``, A1111's "always
      discard next-to-last sigma") compute ``steps + 1`` sigmas and drop the second-to-last one.
    """
    if int(steps) != steps or steps < 1:
        raise InvalidParameter("steps", f"must be a positive whole number, got {steps!r}")
    discard = (
        sampler.discard_penultimate_sigma if discard_penultimate_sigma is None else discard_penultimate_sigma
    )
    count = int(steps) + (1 if discard else 0)
    function = (
        schedule.function if schedule is not None and schedule.function is not None else schedules.uniform
    )
    kwargs: dict[str, Any] = {"model": model, "device": device}
    if schedule is not None and schedule.default_rho is not None and _given(rho):
        kwargs["rho"] = rho
    if function is schedules.beta:
        if _given(beta_alpha):
            kwargs["alpha"] = beta_alpha
        if _given(beta_beta):
            kwargs["beta"] = beta_beta
    low = float(sigma_min) if _given(sigma_min) else model.sigma_min
    high = float(sigma_max) if _given(sigma_max) else model.sigma_max
    sigmas = function(count, low, high, **kwargs)
    if discard and len(sigmas) > 2:
        sigmas = torch.cat([sigmas[:-2], sigmas[-1:]])
    return sigmas
