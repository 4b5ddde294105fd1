"""What extensions contribute besides samplers, schedules, upscalers and hooks: denoiser wrappers,
settings, infotext fields, API routes, UI tabs and UI sections, each recorded with its owner's id.

The UI and API layers read these records from the host; nothing here imports Gradio or FastAPI.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from PIL import Image

from webui.engine.errors import InvalidParameter

CONTROL_KINDS = ("checkbox", "slider", "number", "textbox", "textarea", "dropdown", "radio", "image")
UI_SECTION_TABS = ("txt2img", "img2img")
HTTP_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
ROUTE_PATTERN = re.compile(r"^(/[A-Za-z0-9_.{}-]+)+/?$|^/$")


@dataclass(frozen=True)
class DenoiserWrapper:
    """``factory(model) -> model`` (or ``factory(model, sampling)`` with ``with_context``): wraps the
    denoiser of every sampling pass; lower ``order`` wraps first (inner)."""

    owner: str
    factory: Callable[..., Callable[..., Any]]
    order: int = 0
    seq: int = 0
    with_context: bool = False


@dataclass(frozen=True)
class SettingSpec:
    """A setting an extension adds to the Settings tab; its value lives in ``config.json`` under ``name``."""

    owner: str
    name: str
    default: Any
    label: str
    section: str
    choices: tuple[Any, ...] | None = None
    minimum: float | None = None
    maximum: float | None = None
    step: float | None = None


@dataclass(frozen=True)
class InfotextField:
    """An infotext entry ``key: value`` written for a job and parsed back into the API field ``api_field``."""

    owner: str
    key: str
    api_field: str
    parse: Callable[[str], Any] | None = None


@dataclass(frozen=True)
class RouteSpec:
    """An HTTP route of an extension, served at :attr:`full_path` (``/ext/<id>/<path>``)."""

    owner: str
    path: str
    fn: Callable[..., Any]
    methods: tuple[str, ...] = ("GET",)

    @property
    def full_path(self) -> str:
        """The path the server mounts."""
        return f"/ext/{self.owner}{self.path if self.path != '/' else ''}"


@dataclass(frozen=True)
class UITab:
    """A top-level tab; ``build()`` is called by the UI layer inside the tab's layout context."""

    owner: str
    title: str
    build: Callable[..., Any]


@dataclass(frozen=True)
class ControlSpec:
    """One control of a UI section. Values reach the extension keyed by ``name``, never by position."""

    name: str
    kind: str
    label: str = ""
    default: Any = None
    choices: tuple[Any, ...] = ()
    minimum: float | None = None
    maximum: float | None = None
    step: float | None = None

    def check(self, value: Any, field_name: str) -> Any:
        """Return ``value`` converted to the control's type; invalid values raise InvalidParameter."""
        if self.kind == "checkbox":
            if not isinstance(value, bool):
                raise InvalidParameter(field_name, f"must be true or false, got {value!r}")
            return value
        if self.kind in ("slider", "number"):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise InvalidParameter(field_name, f"must be a number, got {value!r}")
            if (self.minimum is not None and value < self.minimum) or (
                self.maximum is not None and value > self.maximum
            ):
                raise InvalidParameter(
                    field_name, f"must be within {self.minimum}..{self.maximum}, got {value}"
                )
            return value
        if self.kind == "image":
            if value is not None and not isinstance(value, Image.Image):
                raise InvalidParameter(field_name, f"must be an image, got {type(value).__name__}")
            return value
        if self.kind in ("dropdown", "radio"):
            if value not in self.choices:
                raise InvalidParameter(
                    field_name, f"{value!r} is not a choice; valid: {', '.join(map(str, self.choices))}"
                )
            return value
        if not isinstance(value, str):
            raise InvalidParameter(field_name, f"must be text, got {value!r}")
        return value


_CONTROL_FIELDS = tuple(f.name for f in fields(ControlSpec))


def control_from(spec: ControlSpec | Mapping[str, Any]) -> ControlSpec:
    """Build and validate a :class:`ControlSpec` from a spec object or a mapping of its fields."""
    if isinstance(spec, Mapping):
        unknown = sorted(set(spec) - set(_CONTROL_FIELDS))
        if unknown:
            raise InvalidParameter(
                "controls", f"unknown field {unknown[0]!r}; valid: {', '.join(_CONTROL_FIELDS)}"
            )
        values = dict(spec)
        if "choices" in values:
            values["choices"] = tuple(values["choices"])
        try:
            spec = ControlSpec(**values)
        except TypeError as exc:
            raise InvalidParameter("controls", f"a control needs a name and a kind ({exc})") from None
    if not isinstance(spec, ControlSpec):
        raise InvalidParameter("controls", f"a control must be a ControlSpec or a mapping, got {spec!r}")
    if not _NAME.match(spec.name):
        raise InvalidParameter("controls", f"control name {spec.name!r} must be an identifier")
    if spec.kind not in CONTROL_KINDS:
        raise InvalidParameter(
            "controls", f"unknown control kind {spec.kind!r}; valid: {', '.join(CONTROL_KINDS)}"
        )
    if spec.kind in ("dropdown", "radio") and not spec.choices:
        raise InvalidParameter("controls", f"{spec.kind} {spec.name!r} needs choices")
    if spec.default is not None:
        spec.check(spec.default, spec.name)
    elif spec.kind in ("dropdown", "radio"):
        spec = ControlSpec(**{**{f: getattr(spec, f) for f in _CONTROL_FIELDS}, "default": spec.choices[0]})
    return spec


_EMPTY_DEFAULTS = {"checkbox": False, "textbox": "", "textarea": "", "slider": 0, "number": 0}


@dataclass(frozen=True)
class FormTab:
    """A top-level tab the UI lays out from control specs: sections of controls, a button that calls
    ``action(values) -> JobHandle`` and a results panel that follows the job (progress, preview, images)."""

    owner: str
    title: str
    sections: tuple[tuple[str, tuple[ControlSpec, ...]], ...]
    action: Callable[[dict[str, Any]], Any]
    button: str = "Generate"

    def controls(self) -> dict[str, ControlSpec]:
        """Every control of the tab by name."""
        return {c.name: c for _, controls in self.sections for c in controls}

    def check(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """``values`` checked against the controls, defaults filled in; unknown names are refused."""
        controls = self.controls()
        unknown = sorted(set(values) - set(controls))
        if unknown:
            raise InvalidParameter(self.owner, f"unknown control {unknown[0]!r}")
        result = {name: c.default for name, c in controls.items()}
        for name, value in values.items():
            result[name] = controls[name].check(value, name)
        return result


@dataclass(frozen=True)
class UISection:
    """A group of controls an extension adds to the txt2img or img2img tab."""

    owner: str
    tab: str
    title: str
    controls: tuple[ControlSpec, ...]

    def defaults(self) -> dict[str, Any]:
        """Every control's default value, keyed by name."""
        result = {}
        for control in self.controls:
            default = control.default
            if default is None:
                default = (
                    control.minimum if control.minimum is not None else _EMPTY_DEFAULTS.get(control.kind)
                )
            result[control.name] = default
        return result


@dataclass
class Contributions:
    """The contribution records of every loaded extension (thread-safe)."""

    wrappers: list[DenoiserWrapper] = field(default_factory=list)
    settings: list[SettingSpec] = field(default_factory=list)
    infotext: list[InfotextField] = field(default_factory=list)
    routes: list[RouteSpec] = field(default_factory=list)
    tabs: list[UITab] = field(default_factory=list)
    sections: list[UISection] = field(default_factory=list)
    form_tabs: list[FormTab] = field(default_factory=list)
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False)

    def _lists(self) -> tuple[list[Any], ...]:
        return (
            self.wrappers,
            self.settings,
            self.infotext,
            self.routes,
            self.tabs,
            self.sections,
            self.form_tabs,
        )

    def _list_for(self, kind: type) -> list[Any]:
        return {
            DenoiserWrapper: self.wrappers,
            SettingSpec: self.settings,
            InfotextField: self.infotext,
            RouteSpec: self.routes,
            UITab: self.tabs,
            UISection: self.sections,
            FormTab: self.form_tabs,
        }[kind]

    def add(self, record: Any) -> None:
        """Record one contribution in the list of its type."""
        with self.lock:
            self._list_for(type(record)).append(record)

    def remove_owner(self, owner: str) -> int:
        """Remove every record of ``owner``; return how many were removed."""
        removed = 0
        with self.lock:
            for records in self._lists():
                kept = [r for r in records if r.owner != owner]
                removed += len(records) - len(kept)
                records[:] = kept
        return removed

    def owned_by(self, owner: str) -> list[Any]:
        """All records of ``owner``."""
        with self.lock:
            return [r for records in self._lists() for r in records if r.owner == owner]

    def snapshot(self, kind: type) -> tuple[Any, ...]:
        """A copy of the records of one type (``SettingSpec``, ``RouteSpec`` ...)."""
        with self.lock:
            return tuple(self._list_for(kind))
