"""Tabs that extensions describe with control specs (``api.add_ui_form_tab``): the UI lays out their
sections, calls the extension's action on the button and follows the job it returns like txt2img does."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import gradio as gr

from webui.app.extension_sections import control_component
from webui.app.form_params import whole_number
from webui.app.progress import error_html
from webui.app.results import build_results, stream_job
from webui.app.services import UiServices


def build_form_tab(ui: UiServices, tab: Any) -> None:
    """Lay out one form tab inside the current ``gr.Tab`` and wire its button."""
    prefix = f"ext_{tab.owner}".replace("-", "_")
    components: dict[str, Any] = {}
    with gr.Row():
        with gr.Column(scale=1, elem_id=f"{prefix}_settings"):
            for index, (title, controls) in enumerate(tab.sections):
                with gr.Accordion(title, open=index == 0, elem_id=f"{prefix}_section_{index}"):
                    for control in controls:
                        components[control.name] = control_component(control, f"{prefix}_{control.name}")
        with gr.Column(scale=1):
            with gr.Row():
                run = gr.Button(tab.button, variant="primary", elem_id=f"{prefix}_generate")
                stop = gr.Button("Interrupt", elem_id=f"{prefix}_interrupt")
            message = gr.HTML("", elem_id=f"{prefix}_message")
            panel = build_results(prefix)
    names = list(components)

    def start(*values: Any) -> Iterator[dict[Any, Any]]:
        given = {name: whole_number(value) for name, value in zip(names, values, strict=True)}
        host = ui.ctx.extensions
        try:
            checked = tab.check(given)
            handle = host.call_guarded(tab.owner, f"tab {tab.title}", tab.action, checked)
            job = ui.ctx.queue.get(handle.id)
            if job is None:
                raise RuntimeError(f"{tab.owner}: the action did not queue a job")
        except Exception as e:  # the extension's own message (bad settings, missing models) is shown
            yield {message: error_html(str(e) or type(e).__name__)}
            return
        yield {message: ""}
        yield from stream_job(ui, panel, lambda: job)

    outputs = [message, panel.progress, panel.preview, panel.gallery, panel.infotext, panel.folder,
               panel.state, panel.job_id, panel.download]  # fmt: skip
    run.click(start, [components[n] for n in names], outputs, show_progress="hidden", concurrency_limit=None)

    def interrupt(job_id: str) -> None:
        job = ui.ctx.queue.get(job_id) if job_id else None
        if job is not None:
            job.interrupt()

    stop.click(interrupt, panel.job_id, None, queue=False)
