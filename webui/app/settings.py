"""The Settings tab: A1111's sections over ``ctx.options``; Apply writes config.json, Reload UI reloads."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gradio as gr

from webui.app.progress import error_html
from webui.app.services import UiServices
from webui.app.settings_spec import (
    DEFAULT_QUICKSETTINGS,
    QUICKSETTINGS_KEY,
    SECTIONS,
    SETTINGS,
    SettingSpec,
    coerce,
    extension_setting,
)
from webui.app.settings_widgets import setting_control

RELOAD_JS = "() => { window.location.reload(); }"


@dataclass
class SettingsTab:
    """The settings controls by option name, and the specs they were built from (in order)."""

    controls: dict[str, Any]
    result: Any
    specs: tuple[SettingSpec, ...] = ()


def all_settings(ui: UiServices) -> tuple[SettingSpec, ...]:
    """A1111's settings, then those of the loaded extensions (each in its own section)."""
    host = ui.ctx.extensions
    added = tuple(extension_setting(s) for s in host.settings()) if host is not None else ()
    return (*SETTINGS, *added)


def _default(spec: SettingSpec) -> Any:
    return list(DEFAULT_QUICKSETTINGS) if spec.key == QUICKSETTINGS_KEY else spec.default


def current_values(ui: UiServices, specs: tuple[SettingSpec, ...] | None = None) -> list[Any]:
    """The options' current values in ``specs`` order (default: :func:`all_settings`; for a page load)."""
    opts = ui.ctx.options
    return [opts.get(s.key, _default(s)) for s in (specs if specs is not None else all_settings(ui))]


def apply_settings(ui: UiServices, values: list[Any], specs: tuple[SettingSpec, ...] | None = None) -> str:
    """Store changed values in ``ctx.options`` (and config.json); returns a summary line."""
    opts = ui.ctx.options
    changes: dict[str, Any] = {}
    for spec, value in zip(specs if specs is not None else all_settings(ui), values, strict=True):
        old = opts.get(spec.key, _default(spec))
        try:
            new = coerce(spec, value, old)
        except (TypeError, ValueError):
            return error_html(f"{spec.key}: {value!r} is not a valid value for {spec.label!r}")
        if new != old:
            changes[spec.key] = new
    if not changes:
        return "Nothing changed."
    try:
        opts.update(changes)
    except ValueError as e:
        return error_html(str(e))
    note = " Reload the UI to update the quicksettings." if QUICKSETTINGS_KEY in changes else ""
    return f"{len(changes)} setting(s) changed: {', '.join(changes)}.{note}"


def build_settings(ui: UiServices) -> SettingsTab:
    """Lay out the Settings tab inside the current ``gr.Tab`` and wire it."""
    specs = all_settings(ui)
    values = dict(zip((s.key for s in specs), current_values(ui, specs), strict=True))
    sections = list(dict.fromkeys([*SECTIONS, *(s.section for s in specs)]))
    controls: dict[str, Any] = {}
    with gr.Row():
        apply = gr.Button("Apply settings", variant="primary", elem_id="settings_submit")
        reload = gr.Button("Reload UI", elem_id="settings_reload_ui")
    result = gr.HTML("", elem_id="settings_result")
    with gr.Tabs(elem_id="settings_sections"):
        for section in sections:
            with gr.Tab(section, id=f"settings_{section}"):
                for spec in (s for s in specs if s.section == section):
                    controls[spec.key] = setting_control(spec, values[spec.key])
    ordered = [controls[s.key] for s in specs]
    apply.click(lambda *vals: apply_settings(ui, list(vals), specs), ordered, result)
    reload.click(None, None, None, js=RELOAD_JS)
    return SettingsTab(controls, result, specs)
