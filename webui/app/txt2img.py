"""The txt2img tab."""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from webui.app.extension_sections import build_extension_sections
from webui.app.generation import wire_generation
from webui.app.generation_controls import (
    build_batch_and_cfg,
    build_hires,
    build_sampling,
    build_seed,
    build_size,
)
from webui.app.prompt_row import PromptRow, build_prompt_row
from webui.app.results import ResultsPanel, build_results
from webui.app.services import Form, UiServices


@dataclass
class Txt2ImgTab:
    """What other tabs connect to: the form (paste / send-to targets) and the results."""

    form: Form
    row: PromptRow
    results: ResultsPanel


def build_txt2img(ui: UiServices) -> Txt2ImgTab:
    """Lay out the txt2img tab inside the current ``gr.Tab`` and wire it."""
    form = Form("txt2img", ui)
    row = build_prompt_row(form)
    with gr.Row():
        with gr.Column(scale=1, elem_id="txt2img_settings"):
            build_sampling(form)
            build_hires(form)
            build_size(form)
            build_batch_and_cfg(form)
            seeds = build_seed(form)
            build_extension_sections(form)
        with gr.Column(scale=1):
            results = build_results(form.tab)
    wire_generation(form, row, results, seeds)
    return Txt2ImgTab(form, row, results)
