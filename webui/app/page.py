"""Composition of the page: top bar, the tabs, cross-tab wiring and what runs on every page load."""

from __future__ import annotations

import gradio as gr

from webui.app.extras import build_extras
from webui.app.img2img import build_img2img
from webui.app.pnginfo import build_pnginfo
from webui.app.sendto import wire_send_to
from webui.app.services import UiServices
from webui.app.settings import build_settings, current_values
from webui.app.settings_spec import SETTINGS
from webui.app.theme import page_script
from webui.app.topbar import build_topbar, page_load_values
from webui.app.txt2img import build_txt2img
from webui.context import AppContext

TAB_IDS = ("txt2img", "img2img", "extras", "pnginfo", "settings")


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
            with gr.Tab("Settings", id="settings", elem_id="tab_settings"):
                settings = build_settings(ui)
        wire_send_to(tabs, txt2img, img2img, extras, pnginfo)
        setting_controls = [settings.controls[s.key] for s in SETTINGS]
        demo.load(lambda: (*page_load_values(ui), *current_values(ui)), None, [bar.checkpoint, bar.vae, *setting_controls],
                  js=page_script(ctx.flags.theme), queue=False)  # fmt: skip
    demo.queue(default_concurrency_limit=None)
    return demo
