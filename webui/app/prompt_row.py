"""The prompt area shared by txt2img and img2img: prompts with token counters, Generate / Interrupt /
Skip, the tool buttons (paste parameters, clear, apply style, save style) and the styles picker."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gradio as gr

from webui.app.progress import error_html
from webui.app.services import Form, UiServices
from webui.app.tokens import token_count_text
from webui.engine.errors import InvalidParameter
from webui.engine.styles import PromptStyle, merge_style


@dataclass
class PromptRow:
    """The components of a prompt row."""

    prompt: Any
    negative: Any
    prompt_tokens: Any
    negative_tokens: Any
    generate: Any
    interrupt: Any
    skip: Any
    paste: Any
    clear: Any
    apply_style: Any
    save_style: Any
    style_name: Any
    styles: Any
    message: Any
    style_saved: Any = None  # the save-style event: the page chains a refresh of the other tabs' lists


def build_prompt_row(form: Form) -> PromptRow:
    """Lay out the prompt row of ``form.tab`` and wire its local events."""
    tab, ui = form.tab, form.ui
    with gr.Row(elem_id=f"{tab}_toprow"):
        with gr.Column(scale=6):
            prompt = form.add("prompt", gr.Textbox(
                form.saved("Prompt", ""), label="Prompt", lines=3, elem_id=f"{tab}_prompt",
                placeholder="Prompt (press Ctrl+Enter to generate)",
            ), "Prompt")  # fmt: skip
            prompt_tokens = gr.HTML("", elem_id=f"{tab}_token_counter", elem_classes="webui-token-counter")
            negative = form.add("negative_prompt", gr.Textbox(
                form.saved("Negative prompt", ""), label="Negative prompt", lines=2, elem_id=f"{tab}_neg_prompt",
            ), "Negative prompt")  # fmt: skip
            negative_tokens = gr.HTML(
                "", elem_id=f"{tab}_negative_token_counter", elem_classes="webui-token-counter"
            )
        with gr.Column(scale=2, elem_classes="webui-generate-column"):
            generate = gr.Button("Generate", variant="primary", elem_id=f"{tab}_generate")
            with gr.Row():
                interrupt = gr.Button("Interrupt", elem_id=f"{tab}_interrupt", size="sm")
                skip = gr.Button("Skip", elem_id=f"{tab}_skip", size="sm")
            with gr.Row():
                paste = gr.Button("↙️", elem_id=f"{tab}_paste", size="sm", elem_classes="webui-tool")
                clear = gr.Button("🗑️", elem_id=f"{tab}_clear_prompt", size="sm", elem_classes="webui-tool")
                apply_style = gr.Button(
                    "📋", elem_id=f"{tab}_style_apply", size="sm", elem_classes="webui-tool"
                )
                save_style = gr.Button(
                    "💾", elem_id=f"{tab}_style_create", size="sm", elem_classes="webui-tool"
                )
            styles = form.add("styles", gr.Dropdown(
                list(ui.styles.styles), value=[s for s in form.saved("Styles", []) if s in ui.styles.styles],
                multiselect=True, label="Styles", elem_id=f"{tab}_styles",
            ), "Styles")  # fmt: skip
            style_name = gr.Textbox("", label="New style name", elem_id=f"{tab}_style_name", max_lines=1)
            message = gr.HTML("", elem_id=f"{tab}_message")
    row = PromptRow(prompt, negative, prompt_tokens, negative_tokens, generate, interrupt, skip, paste, clear,
                    apply_style, save_style, style_name, styles, message)  # fmt: skip
    _wire_prompt_row(form, row)
    return row


def _wire_prompt_row(form: Form, row: PromptRow) -> None:
    ui = form.ui

    def count(text: str) -> str:
        return _counter_html(token_count_text(ui.ctx.models, text))

    def count_negative(text: str) -> str:
        return _counter_html(token_count_text(ui.ctx.models, text, is_positive=False))

    quiet: dict[str, Any] = {"show_progress": "hidden", "queue": False, "trigger_mode": "always_last"}
    row.prompt.change(count, row.prompt, row.prompt_tokens, **quiet)
    row.negative.change(count_negative, row.negative, row.negative_tokens, **quiet)
    row.clear.click(lambda: ("", ""), None, [row.prompt, row.negative], queue=False)

    def apply(prompt: str, negative: str, names: list[str]):
        try:
            for name in names or []:
                style = ui.styles.get(name)
                prompt, negative = _merge_one(style, prompt, negative)
        except InvalidParameter as e:
            return prompt, negative, gr.skip(), error_html(f"{e.field}: {e.message}")
        return prompt, negative, [], ""

    row.apply_style.click(
        apply, [row.prompt, row.negative, row.styles], [row.prompt, row.negative, row.styles, row.message]
    )

    def save(name: str, prompt: str, negative: str):
        name = (name or "").strip()
        if not name:
            return gr.skip(), error_html("styles: type a name for the new style first"), gr.skip()
        ui.styles.save_style(PromptStyle(name, prompt or "", negative or ""))
        return gr.update(choices=list(ui.styles.styles)), f"Saved style {name!r}.", ""

    row.style_saved = row.save_style.click(
        save, [row.style_name, row.prompt, row.negative], [row.styles, row.message, row.style_name]
    )


def style_choices(ui: UiServices) -> Any:
    """Fresh choices for a styles dropdown (styles saved since the page was built, e.g. from another
    tab or before a reload of the page)."""
    return gr.update(choices=list(ui.styles.styles))


def _merge_one(style: PromptStyle, prompt: str, negative: str) -> tuple[str, str]:
    return merge_style(style.prompt, prompt), merge_style(style.negative_prompt, negative)


def _counter_html(text: str) -> str:
    return f'<span class="webui-token-counter-value">{text}</span>'
