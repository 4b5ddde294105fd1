"""The Gradio web UI: A1111's tabs and flow over the application context.

The UI never touches torch: it builds :class:`~webui.engine.params.GenerationParams`, submits jobs to
``ctx.queue`` and renders progress and results. One module per tab; :func:`build_ui` composes them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import gradio as gr

    from webui.context import AppContext

__all__ = ["build_ui"]


def build_ui(ctx: AppContext) -> gr.Blocks:
    """Build the whole page for ``ctx`` (mounted at "/" by :func:`webui.server.create_app`)."""
    from webui.app.page import build_page

    return build_page(ctx)
