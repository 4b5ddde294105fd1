"""The Settings tab: A1111's sections over ``ctx.options``; Apply writes config.json, Reload UI reloads."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gradio as gr

from webui.app.progress import error_html
from webui.app.services import UiServices
from webui.app.settings_spec import DEFAULT_QUICKSETTINGS, QUICKSETTINGS_KEY, SECTIONS, SETTINGS, coerce
from webui.app.settings_widgets import setting_control

RELOAD_JS = "() => { window.location.reload(); }"


@dataclass
class SettingsTab:
    """The settings controls by option name."""

    controls: dict[str, Any]
    result: Any


def current_values(ui: UiServices) -> list[Any]:
    """The options' current values in :data:`SETTINGS` order (for a page load)."""
    opts = ui.ctx.options
    return [
        opts.get(s.key, list(DEFAULT_QUICKSETTINGS) if s.key == QUICKSETTINGS_KEY else None) for s in SETTINGS
    ]


def apply_settings(ui: UiServices, values: list[Any]) -> str:
    """Store changed values in ``ctx.options`` (and config.json); returns a summary line."""
    opts = ui.ctx.options
    changes: dict[str, Any] = {}
    for spec, value in zip(SETTINGS, values, strict=True):
        old = opts.get(spec.key, list(DEFAULT_QUICKSETTINGS) if spec.key == QUICKSETTINGS_KEY else None)
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
    values = dict(zip((s.key for s in SETTINGS), current_values(ui), strict=True))
    controls: dict[str, Any] = {}
    with gr.Row():
        apply = gr.Button("Apply settings", variant="primary", elem_id="settings_submit")
        reload = gr.Button("Reload UI", elem_id="settings_reload_ui")
    result = gr.HTML("", elem_id="settings_result")
    with gr.Tabs(elem_id="settings_sections"):
        for section in SECTIONS:
            with gr.Tab(section, id=f"settings_{section}"):
                for spec in (s for s in SETTINGS if s.section == section):
                    controls[spec.key] = setting_control(spec, values[spec.key])
    ordered = [controls[s.key] for s in SETTINGS]
    apply.click(lambda *vals: apply_settings(ui, list(vals)), ordered, result)
    reload.click(None, None, None, js=RELOAD_JS)
    return SettingsTab(controls, result)
