"""One Gradio control per :class:`SettingSpec`."""

from __future__ import annotations

from typing import Any

import gradio as gr

from webui.app.settings_spec import DEFAULT_QUICKSETTINGS, QUICKSETTINGS_KEY, SETTINGS, SettingSpec


def quicksettings_choices() -> list[str]:
    """Option names the quicksettings list may hold."""
    return ["sd_model_checkpoint", "sd_vae", *(s.key for s in SETTINGS if s.key != QUICKSETTINGS_KEY)]


def setting_control(spec: SettingSpec, value: Any, **kwargs: Any) -> Any:
    """The control for ``spec`` showing ``value``; its elem_id is ``setting_<key>`` as in A1111."""
    common = {"label": spec.label, "elem_id": f"setting_{spec.key}", **kwargs}
    if spec.kind == "checkbox":
        return gr.Checkbox(bool(value), **common)
    if spec.kind == "slider":
        return gr.Slider(spec.minimum, spec.maximum, value, step=spec.step, **common)
    if spec.kind == "number":
        return gr.Number(value, **common)
    if spec.kind == "radio":
        return gr.Radio(list(spec.choices), value=value, **common)
    if spec.kind == "multiselect":
        chosen = list(value) if isinstance(value, (list, tuple)) else list(DEFAULT_QUICKSETTINGS)
        return gr.Dropdown(quicksettings_choices(), value=chosen, multiselect=True, **common)
    return gr.Textbox("" if value is None else str(value), max_lines=1, **common)
