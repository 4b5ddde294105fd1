"""Sections that extensions add to the txt2img and img2img tabs (``api.add_ui_section``).

Each control is registered in the tab's form under ``ext:<extension id>:<control name>``; on Generate
:func:`~webui.app.form_params.extension_args` turns those keys into the job's ``extension_args`` (values keyed by name, never by
position), which the extension host checks against the control specs.
"""

from __future__ import annotations

from typing import Any

import gradio as gr

from webui.app.form_params import EXTENSION_PREFIX
from webui.app.services import Form


def control_component(control: Any, elem_id: str) -> Any:
    """The Gradio component of one extension control spec."""
    label = control.label or control.name
    if control.kind == "checkbox":
        return gr.Checkbox(bool(control.default), label=label, elem_id=elem_id)
    if control.kind == "slider":
        return gr.Slider(control.minimum, control.maximum, control.default, step=control.step, label=label,
                         elem_id=elem_id)  # fmt: skip
    if control.kind == "number":
        return gr.Number(control.default, label=label, minimum=control.minimum, maximum=control.maximum,
                         step=control.step, elem_id=elem_id)  # fmt: skip
    if control.kind == "dropdown":
        return gr.Dropdown(list(control.choices), value=control.default, label=label, elem_id=elem_id)
    if control.kind == "radio":
        return gr.Radio(list(control.choices), value=control.default, label=label, elem_id=elem_id)
    if control.kind == "textarea":
        return gr.Textbox(str(control.default or ""), label=label, lines=4, elem_id=elem_id)
    if control.kind == "image":
        return gr.Image(label=label, type="pil", sources=["upload", "clipboard"], elem_id=elem_id)
    return gr.Textbox(str(control.default or ""), label=label, elem_id=elem_id)


def build_extension_sections(form: Form) -> None:
    """One accordion per section that loaded extensions added to this tab, each control in ``form``."""
    host = form.ui.ctx.extensions
    if host is None:
        return
    for section in host.ui_sections(form.tab):
        with gr.Accordion(section.title, open=False, elem_id=f"{form.tab}_ext_{section.owner}"):
            for control in section.controls:
                elem_id = f"{form.tab}_ext_{section.owner}_{control.name}"
                form.add(
                    f"{EXTENSION_PREFIX}{section.owner}:{control.name}", control_component(control, elem_id)
                )
