"""Composition of the page: top bar, the tabs, cross-tab wiring and what runs on every page load."""

from __future__ import annotations

from typing import Any

import gradio as gr

from webui.app.extensions_tab import build_extension_tabs, build_extensions_tab
from webui.app.extras import build_extras
from webui.app.form_params import SAME_SAMPLER, SAME_SCHEDULER
from webui.app.img2img import build_img2img
from webui.app.pnginfo import build_pnginfo
from webui.app.prompt_row import style_choices
from webui.app.sendto import wire_send_to
from webui.app.services import Form, UiServices
from webui.app.settings import build_settings, current_values
from webui.app.theme import page_script
from webui.app.topbar import build_topbar, page_load_values
from webui.app.txt2img import build_txt2img
from webui.context import AppContext

TAB_IDS = ("txt2img", "img2img", "extras", "pnginfo", "extensions", "settings")
# dropdowns whose choices come from registries that extensions add to: (form field, kind, leading choice)
REGISTRY_DROPDOWNS = (
    ("sampler_name", "sampler", None),
    ("scheduler", "schedule", None),
    ("hr_sampler_name", "sampler", SAME_SAMPLER),
    ("hr_scheduler", "schedule", SAME_SCHEDULER),
)


def sampler_lists(*forms: Form) -> list[tuple[Any, tuple[str, str | None]]]:
    """The sampler and schedule dropdowns of ``forms`` with what fills each one."""
    return [
        (form.fields[name], (kind, lead))
        for form in forms
        for name, kind, lead in REGISTRY_DROPDOWNS
        if name in form.fields
    ]


def sampler_choices(ui: UiServices, lists: list[tuple[Any, tuple[str, str | None]]]) -> list[Any]:
    """Fresh choices for every registry dropdown, so samplers an extension installed since the page was
    built appear after a reload of the page (the selected value is kept)."""
    labels = {"sampler": ui.sampler_labels(), "schedule": ui.schedule_labels()}
    return [gr.update(choices=([lead] if lead else []) + labels[kind]) for _, (kind, lead) in lists]


def build_page(ctx: AppContext) -> gr.Blocks:
    """Build the Blocks of the whole UI."""
    ui = UiServices.for_context(ctx)
    with gr.Blocks(title="Stable Diffusion", analytics_enabled=False) as demo:
        bar = build_topbar(ui)
        with gr.Tabs(elem_id="tabs") as tabs:
            with gr.Tab("txt2img", id="txt2img", elem_id="tab_txt2img"):
                txt2img = build_txt2img(ui)
            with gr.Tab("img2img", id="img2img", elem_id="tab_img2img"):
                img2img = build_img2img(ui)
            with gr.Tab("Extras", id="extras", elem_id="tab_extras"):
                extras = build_extras(ui)
            with gr.Tab("PNG Info", id="pnginfo", elem_id="tab_pnginfo"):
                pnginfo = build_pnginfo()
            build_extension_tabs(ui)
            with gr.Tab("Extensions", id="extensions", elem_id="tab_extensions"):
                build_extensions_tab(ui)
            with gr.Tab("Settings", id="settings", elem_id="tab_settings"):
                settings = build_settings(ui)
        wire_send_to(tabs, txt2img, img2img, extras, pnginfo)
        setting_controls = [settings.controls[s.key] for s in settings.specs]
        lists = sampler_lists(txt2img.form, img2img.form)
        style_lists = (txt2img.row.styles, img2img.row.styles)
        # a style saved in one tab shows in the other at once (the saving tab refreshes its own list)
        for saved_in, other in ((txt2img.row, img2img.row.styles), (img2img.row, txt2img.row.styles)):
            saved_in.style_saved.then(lambda: style_choices(ui), None, other, queue=False)
        demo.load(lambda: (*page_load_values(ui), *current_values(ui, settings.specs), *sampler_choices(ui, lists),
                           *(style_choices(ui) for _ in style_lists)), None,
                  [bar.checkpoint, bar.vae, bar.note, *setting_controls, *(c for c, _ in lists), *style_lists],
                  js=page_script(ctx.flags.theme), queue=False)  # fmt: skip
    demo.queue(default_concurrency_limit=None)
    return demo
