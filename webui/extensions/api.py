"""The public facade: the ONE module extensions import (besides torch, numpy and PIL).

An extension's entry point receives an :class:`ExtensionAPI`::

    from webui.extensions.api import ExtensionAPI, to_d, sigma_batch

    def setup(api: ExtensionAPI) -> None:
        api.register_sampler(label="My sampler", aliases=("my_sampler",), function=sample_mine)
        api.on("after_decode", lambda images, **_: None)

Everything registered through it is recorded under the extension's id, so disabling or reloading the
extension removes exactly that. The facade is versioned (:data:`FACADE_VERSION`); manifests state the
versions they work with (``facade = ">=1,<2"``). Additions keep the major version; removals bump it.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from webui.engine.errors import InvalidParameter, JobCancelled
from webui.engine.images import Upscaler
from webui.engine.samplers.noise import (
    BrownianTreeNoiseSampler,
    GeneratorNoiseSampler,
    LazyNoise,
    NoiseSampler,
)
from webui.engine.samplers.registry import SamplerInfo, ScheduleInfo
from webui.engine.samplers.step_math import (
    Denoiser,
    StepCallback,
    ancestral_step,
    first_order_to,
    report,
    sigma_batch,
    to_d,
)
from webui.engine.sampling_context import SamplingContext
from webui.extensions.contributions import (
    HTTP_METHODS,
    ROUTE_PATTERN,
    UI_SECTION_TABS,
    Contributions,
    ControlSpec,
    DenoiserWrapper,
    FormTab,
    InfotextField,
    RouteSpec,
    SettingSpec,
    UISection,
    UITab,
    control_from,
)
from webui.extensions.guards import guard_sampler
from webui.extensions.hooks import HOOK_NAMES, ExtensionError, FailureHandler, HookBus
from webui.extensions.runs import ExtensionRun, GenerationResult, JobHandle, output_folder
from webui.extensions.services import HostServices

FACADE_VERSION = "1.1"

__all__ = [
    "FACADE_VERSION",
    "HOOK_NAMES",
    "BrownianTreeNoiseSampler",
    "ControlSpec",
    "Denoiser",
    "ExtensionAPI",
    "ExtensionError",
    "ExtensionRun",
    "GenerationResult",
    "GeneratorNoiseSampler",
    "InvalidParameter",
    "JobCancelled",
    "JobHandle",
    "LazyNoise",
    "NoiseSampler",
    "SamplerInfo",
    "SamplingContext",
    "ScheduleInfo",
    "StepCallback",
    "Upscaler",
    "ancestral_step",
    "first_order_to",
    "report",
    "sigma_batch",
    "to_d",
]

_SAMPLER_FIELDS = tuple(f.name for f in dataclasses.fields(SamplerInfo))
_SCHEDULE_FIELDS = tuple(f.name for f in dataclasses.fields(ScheduleInfo))


def _build(kind: type, fields: tuple[str, ...], info: Any, kwargs: Mapping[str, Any], what: str) -> Any:
    if info is not None:
        if kwargs:
            raise InvalidParameter(what, f"pass either a {kind.__name__} or keyword fields, not both")
        if not isinstance(info, kind):
            raise InvalidParameter(what, f"expected a {kind.__name__}, got {type(info).__name__}")
        return info
    unknown = sorted(set(kwargs) - set(fields))
    if unknown:
        raise InvalidParameter(what, f"unknown field {unknown[0]!r}; valid: {', '.join(fields)}")
    values = dict(kwargs)
    values.setdefault("aliases", ())
    if isinstance(values.get("aliases"), str):
        values["aliases"] = (values["aliases"],)
    else:
        values["aliases"] = tuple(values["aliases"])
    try:
        return kind(**values)
    except TypeError as exc:
        raise InvalidParameter(what, f"missing fields ({exc})") from None


class ExtensionAPI:
    """What an extension's ``setup(api)`` receives. One instance per extension and load.

    Attributes:
        id: the extension's id (from its manifest); ``name``: its display name.
        log: a logger named ``webui.ext.<id>``.
        facade_version: :data:`FACADE_VERSION`.
    """

    facade_version = FACADE_VERSION

    def __init__(
        self,
        ext_id: str,
        name: str,
        *,
        services: HostServices,
        hooks: HookBus,
        contributions: Contributions,
        on_failure: FailureHandler,
        data_dir: Path,
        extension_dir: Path | None = None,
    ) -> None:
        self.id = ext_id
        self.name = name
        self.log = logging.getLogger(f"webui.ext.{ext_id}")
        self.extension_dir = extension_dir
        self._services = services
        self._hooks = hooks
        self._contributions = contributions
        self._on_failure = on_failure
        self._data_dir = data_dir

    # --- samplers, schedules, upscalers, denoiser wrappers ------------------------------------------

    def register_sampler(self, info: SamplerInfo | None = None, /, **fields: Any) -> SamplerInfo:
        """Add a sampler: a :class:`SamplerInfo` or its fields (``label``, ``aliases``, ``function``,
        ``default_schedule`` ...). It appears in every sampler list, the API and infotext.
        Its failures at run time disable this extension and fail the job with a clear error."""
        info = _build(SamplerInfo, _SAMPLER_FIELDS, info, fields, "sampler")
        if not callable(info.function):
            raise InvalidParameter("sampler", f"{info.label}: function is not callable")
        if info.default_schedule not in self._services.schedules:
            valid = ", ".join(s.name for s in self._services.schedules.items())
            raise InvalidParameter(
                "sampler", f"{info.label}: unknown default schedule {info.default_schedule!r}; valid: {valid}"
            )
        guarded = guard_sampler(info.function, self.id, f"sampler {info.label}", self._on_failure)
        info = dataclasses.replace(info, function=guarded)
        try:
            self._services.samplers.register(info, owner=self.id)
        except ValueError as exc:
            raise InvalidParameter("sampler", str(exc)) from None
        return info

    def register_schedule(self, info: ScheduleInfo | None = None, /, **fields: Any) -> ScheduleInfo:
        """Add a schedule type: a :class:`ScheduleInfo` or its fields (``label``, ``name``, ``function``
        ``fn(n, sigma_min, sigma_max, *, model, device, **opts) -> sigmas`` ...)."""
        info = _build(ScheduleInfo, _SCHEDULE_FIELDS, info, fields, "schedule")
        if info.function is None or not callable(info.function):
            raise InvalidParameter("schedule", f"{info.label}: function is not callable")
        try:
            self._services.schedules.register(info, owner=self.id)
        except ValueError as exc:
            raise InvalidParameter("schedule", str(exc)) from None
        return info

    def register_upscaler(self, upscaler: Upscaler) -> None:
        """Add an upscaler (an object with ``name`` and ``upscale(img, scale) -> img``)."""
        if not isinstance(upscaler, Upscaler) or not isinstance(getattr(upscaler, "name", None), str):
            raise InvalidParameter("upscaler", "needs a str attribute name and a method upscale(img, scale)")
        try:
            self._services.upscalers.register(upscaler, owner=self.id)
        except ValueError as exc:
            raise InvalidParameter("upscaler", str(exc)) from None

    def add_denoiser_wrapper(
        self, factory: Callable[..., Denoiser], order: int = 0, *, with_context: bool = False
    ) -> None:
        """Wrap the denoiser of every sampling pass: ``factory(model) -> model`` where
        ``model(x, sigma, **cond) -> x0``. With ``with_context=True`` the factory is called as
        ``factory(model, sampling)`` with a :class:`SamplingContext` (the job's params and extension values,
        the sigma schedule, differentiable decoders); returning ``model`` itself leaves the pass unwrapped.
        Wrappers with a lower ``order`` sit closer to the model (CFG tricks low, guidance high)."""
        if not callable(factory):
            raise InvalidParameter("denoiser_wrapper", "the wrapper factory is not callable")
        self._contributions.add(
            DenoiserWrapper(
                self.id, factory, int(order), len(self._contributions.wrappers), bool(with_context)
            )
        )

    # --- hooks ----------------------------------------------------------------------------------------

    def on(self, hook: str, fn: Callable[..., Any], order: int = 0) -> None:
        """Subscribe ``fn`` to a hook (see :data:`HOOK_NAMES`); it is called with keyword arguments."""
        self._hooks.add(hook, fn, self.id, order)

    # --- settings and infotext ------------------------------------------------------------------------

    def add_setting(
        self,
        name: str,
        default: Any,
        label: str,
        section: str | None = None,
        *,
        choices: Iterable[Any] | None = None,
        minimum: float | None = None,
        maximum: float | None = None,
        step: float | None = None,
    ) -> SettingSpec:
        """Add a setting to the Settings tab (``section`` defaults to the extension's name); its value is
        stored in ``config.json`` under ``name`` and read with :meth:`setting`."""
        from webui.config.options import OPTION_DEFAULTS

        if not isinstance(name, str) or not name.isidentifier():
            raise InvalidParameter("setting", f"setting name {name!r} must be an identifier")
        taken = {s.name: s.owner for s in self._contributions.snapshot(SettingSpec)}
        if name in OPTION_DEFAULTS or name in taken:
            owner = taken.get(name, "the core")
            raise InvalidParameter("setting", f"setting {name!r} already exists (added by {owner})")
        spec = SettingSpec(
            self.id,
            name,
            default,
            label,
            section or self.name,
            tuple(choices) if choices is not None else None,
            minimum,
            maximum,
            step,
        )
        self._contributions.add(spec)
        return spec

    def setting(self, name: str) -> Any:
        """The current value of one of this extension's settings (its default until changed)."""
        spec = next(
            (s for s in self._contributions.snapshot(SettingSpec) if s.owner == self.id and s.name == name),
            None,
        )
        if spec is None:
            mine = [s.name for s in self._contributions.snapshot(SettingSpec) if s.owner == self.id]
            raise InvalidParameter(
                "setting", f"unknown setting {name!r}; valid: {', '.join(mine) or '(none)'}"
            )
        options = self._services.options
        return spec.default if options is None else options.get(name, spec.default)

    def add_infotext_field(self, key: str, api_field: str, parse: Callable[[str], Any] | None = None) -> None:
        """Declare an infotext entry ``key: value``. A ``before_process`` hook writes it by setting
        ``extra_generation_params[key]``; pasting infotext back fills ``api_field`` (through ``parse``)."""
        if not key or "," in key or ":" in key:
            raise InvalidParameter("infotext", f"infotext key {key!r} must be non-empty without ',' or ':'")
        taken = {f.key: f.owner for f in self._contributions.snapshot(InfotextField)}
        if key in taken:
            raise InvalidParameter("infotext", f"infotext key {key!r} already added by {taken[key]}")
        self._contributions.add(InfotextField(self.id, key, api_field, parse))

    # --- HTTP routes and UI ---------------------------------------------------------------------------

    def add_api_route(self, path: str, fn: Callable[..., Any], methods: Iterable[str] = ("GET",)) -> str:
        """Serve ``fn`` at ``/ext/<id><path>``; returns that full path.

        ``fn`` may take ``body`` (the decoded JSON body of POST/PUT/PATCH) and ``query`` (a dict of the query
        string) as keyword arguments; its return value is sent as JSON.
        """
        if not isinstance(path, str) or not ROUTE_PATTERN.match(path) or ".." in path:
            raise InvalidParameter("route", f"route path {path!r} must look like '/name' or '/a/{{item}}'")
        verbs = tuple(m.upper() for m in methods)
        bad = [m for m in verbs if m not in HTTP_METHODS]
        if bad or not verbs:
            raise InvalidParameter(
                "route", f"unknown method {bad[0] if bad else '(none)'}; valid: {', '.join(HTTP_METHODS)}"
            )
        mine = [r for r in self._contributions.snapshot(RouteSpec) if r.owner == self.id]
        if any(r.path == path and set(r.methods) & set(verbs) for r in mine):
            raise InvalidParameter("route", f"route {path!r} is already added")
        route = RouteSpec(self.id, path, fn, verbs)
        self._contributions.add(route)
        return route.full_path

    def add_ui_tab(self, title: str, build_fn: Callable[..., Any]) -> None:
        """Add a top-level tab; the UI calls ``build_fn()`` inside the tab's layout when it builds the page."""
        if not title or not callable(build_fn):
            raise InvalidParameter("ui_tab", "needs a title and a callable build function")
        self._contributions.add(UITab(self.id, title, build_fn))

    def add_ui_form_tab(
        self,
        title: str,
        sections: Iterable[tuple[str, Iterable[ControlSpec | Mapping[str, Any]]]],
        action: Callable[[dict[str, Any]], JobHandle],
        *,
        button: str = "Generate",
    ) -> None:
        """Add a top-level tab the UI lays out for you: ``sections`` of controls (``(title, controls)``; the
        first is open, the rest folded), a ``button`` and a results panel. A click calls
        ``action(values)`` with every control's value by name (checked against its spec); ``action`` returns
        the :class:`JobHandle` of :meth:`submit_job`, whose progress and live preview the tab follows and
        whose result (a :class:`GenerationResult`, or any object with ``images``, ``infotexts``, ``seeds``,
        ``paths``) fills the gallery. Errors raised by ``action`` are shown next to the button."""
        if not title or not callable(action):
            raise InvalidParameter("ui_tab", "needs a title and a callable action")
        built = tuple((str(name), tuple(control_from(c) for c in controls)) for name, controls in sections)
        names = [c.name for _, controls in built for c in controls]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise InvalidParameter("controls", f"control name {duplicates[0]!r} is used twice in {title}")
        if not names:
            raise InvalidParameter("ui_tab", f"{title}: a form tab needs at least one control")
        self._contributions.add(FormTab(self.id, title, built, action, button))

    def sampler_names(self) -> list[str]:
        """The labels of every sampler (built in and from extensions), as the dropdowns list them."""
        return list(self._services.samplers.labels())

    def schedule_names(self) -> list[str]:
        """The labels of every schedule type."""
        return list(self._services.schedules.labels())

    def add_ui_section(
        self, tab: str, title: str, controls: Iterable[ControlSpec | Mapping[str, Any]]
    ) -> UISection:
        """Add a section of controls to the ``"txt2img"`` or ``"img2img"`` tab.

        Each control is a :class:`ControlSpec` or a mapping of its fields (``name``, ``kind`` ...). A job's
        values reach hooks in ``extension_args[<id>]`` keyed by control name; read them with :meth:`values`.
        """
        if tab not in UI_SECTION_TABS:
            raise InvalidParameter("tab", f"unknown tab {tab!r}; valid: {', '.join(UI_SECTION_TABS)}")
        specs = tuple(control_from(c) for c in controls)
        names = [c.name for c in specs]
        for section in self._contributions.snapshot(UISection):
            if section.owner == self.id:
                names.extend(c.name for c in section.controls)
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise InvalidParameter("controls", f"control name {duplicates[0]!r} is used twice in {self.id}")
        section = UISection(self.id, tab, title, specs)
        self._contributions.add(section)
        return section

    def values(self, extension_args: Mapping[str, Mapping[str, Any]] | None) -> dict[str, Any]:
        """This extension's control values in a job (defaults filled in, each value checked)."""
        controls = {
            c.name: c
            for s in self._contributions.snapshot(UISection)
            if s.owner == self.id
            for c in s.controls
        }
        result: dict[str, Any] = {}
        for section in self._contributions.snapshot(UISection):
            if section.owner == self.id:
                result.update(section.defaults())
        given = (extension_args or {}).get(self.id) or {}
        for name, value in given.items():
            if name not in controls:
                raise InvalidParameter(
                    f"extension_args.{self.id}",
                    f"unknown control {name!r}; valid: {', '.join(controls) or '(none)'}",
                )
            result[name] = controls[name].check(value, f"extension_args.{self.id}.{name}")
        return result

    # --- jobs on the GPU worker --------------------------------------------------------------------------

    def submit_job(self, fn: Callable[[ExtensionRun], Any], label: str | None = None) -> JobHandle:
        """Queue ``fn(run)`` on the GPU worker behind the jobs already waiting; ``run`` is an
        :class:`ExtensionRun` (progress, previews, interrupt, ``run.generate``). Returns at once.

        An exception other than :class:`InvalidParameter` / :class:`JobCancelled` escaping ``fn`` fails the
        job with the extension named in the message; the extension stays loaded."""
        services = self._services
        if services.submit_job is None or services.generate_in_job is None:
            raise InvalidParameter("job", "this session has no GPU worker to run jobs on")
        if not callable(fn):
            raise InvalidParameter("job", "the job function is not callable")
        owner, generate_in_job = self.id, services.generate_in_job

        def generate(params: Any, job: Any, folder: str | None) -> Any:
            return generate_in_job(params, job, folder, owner)

        def body(job: Any) -> Any:
            run = ExtensionRun(owner, job, generate, services.outputs_dir)
            try:
                return fn(run)
            except (InvalidParameter, JobCancelled, ExtensionError):
                raise
            except Exception as exc:
                raise ExtensionError(owner, f"job {label or owner}", exc) from exc

        return JobHandle(services.submit_job(f"ext:{owner}:{label or 'job'}", body))

    def output_folder(self, *parts: str) -> Path:
        """A folder under ``outputs/`` (created): ``api.output_folder("disco-images", "run1")``."""
        if self._services.outputs_dir is None:
            raise InvalidParameter("folder", "this session has no outputs folder")
        return output_folder(self._services.outputs_dir, *parts)

    @property
    def device(self) -> torch.device:
        """The device models run on (``cuda``, ``mps`` or ``cpu``)."""
        models = self._services.models
        policy = getattr(models, "policy", None)
        return policy.device if policy is not None else torch.device("cpu")

    # --- CLIP models ----------------------------------------------------------------------------------

    def clip_models(self) -> list[str]:
        """Names of the CLIP models in ``models/clip/`` (and the bundled demo CLIP when present)."""
        models = self._services.models
        return [entry.name for entry in models.clip_models()] if models is not None else []

    def load_clip(self, name: str, device: torch.device | str | None = None) -> Any:
        """Load CLIP model ``name`` (see :meth:`clip_models`) offline, frozen, on ``device`` (default: the
        models' device). The object has ``name``, ``image_size``, ``encode_image(pixels in [0, 1])``
        (differentiable) and ``encode_text(texts)``. Each call loads anew; cache what you keep."""
        from webui.models.errors import ModelNotFound

        models = self._services.models
        if models is None:
            raise InvalidParameter("clip_model", "this session has no model manager")
        try:
            return models.load_clip(name, device=torch.device(device) if device is not None else None)
        except ModelNotFound as exc:
            raise InvalidParameter("clip_model", str(exc)) from None

    @property
    def models_dir(self) -> Path | None:
        """The ``models/`` folder (read it; keep your own files in :attr:`data_dir`)."""
        return self._services.models_dir

    # --- files ----------------------------------------------------------------------------------------

    @property
    def data_dir(self) -> Path:
        """A folder for this extension's own files (kept across updates; created on first use)."""
        self._data_dir.mkdir(parents=True, exist_ok=True)
        return self._data_dir

    def load_model_file(self, path: str | Path, device: str = "cpu") -> dict[str, torch.Tensor]:
        """Read the tensors of a model file with the model manager's safe reader (safetensors memory-mapped;
        pickles restricted to tensors). Relative paths are taken from the ``models/`` folder."""
        from webui.models.checkpoint_files import load_state_dict

        file = Path(path)
        if not file.is_absolute():
            if self._services.models_dir is None:
                raise InvalidParameter("path", f"{path}: relative model paths need a models folder")
            file = self._services.models_dir / file
        if not file.is_file():
            raise InvalidParameter("path", f"model file not found: {file}")
        return load_state_dict(file, device=device)
