"""The Extensions tab: installed extensions (enable/disable, apply, update, uninstall), install from a git
URL, and the "Available" index; plus the tabs extensions add through their facade.

Every action goes through :class:`~webui.extensions.host.ExtensionHost`, which enforces A1111's security
gate (no install/update/enable while the server is reachable from other hosts without
``--enable-insecure-extension-access``); refusals and failures are shown next to the controls.
"""

from __future__ import annotations

import html
from collections.abc import Callable
from typing import Any

import gradio as gr

from webui.app.progress import error_html
from webui.app.services import UiServices

INSTALLED_HEADERS = ["Extension", "Id", "Version", "URL", "Branch", "Commit", "Date", "Enabled", "Status"]
AVAILABLE_HEADERS = ["Name", "URL", "Description", "Tags", "Installed"]
INDEX_OPTION = "extensions_index_url"


def installed_rows(ui: UiServices) -> list[list[Any]]:
    """One row per extension, as the Installed table shows it."""
    host = ui.ctx.extensions
    if host is None:
        return []
    rows = []
    for e in host.list():
        status = e.status if not e.error else f"{e.status}: {e.error}"
        rows.append([e.name, e.id, e.version, e.remote_url or "", e.branch or "", (e.commit or "")[:8],
                     e.commit_date or "", e.enabled, status])  # fmt: skip
    return rows


def _ok(message: str) -> str:
    return f'<div class="webui-ok">{html.escape(message)}</div>'


def _action(ui: UiServices, fn: Callable[[Any], str]) -> tuple[str, list[list[Any]], Any]:
    """Run one host action; any refusal or failure becomes a readable message, never a crash."""
    host = ui.ctx.extensions
    if host is None:
        return error_html("extensions are not available in this session"), [], gr.update()
    try:
        message = _ok(fn(host))
    except Exception as e:  # every host error (gate, git, manifest, unknown id) is shown to the user
        message = error_html(f"{type(e).__name__}: {e}")
    return message, installed_rows(ui), gr.update(choices=[r[1] for r in installed_rows(ui)])


def build_extensions_tab(ui: UiServices) -> None:
    """Lay out the Extensions tab inside the current ``gr.Tab`` and wire it."""
    ids = [r[1] for r in installed_rows(ui)]
    with gr.Tabs(elem_id="extensions_tabs"):
        with gr.Tab("Installed", elem_id="extensions_installed_tab"):
            status = gr.HTML("", elem_id="extensions_status")
            table = gr.Dataframe(installed_rows(ui), headers=INSTALLED_HEADERS, interactive=False,
                                 elem_id="extensions_installed", wrap=True)  # fmt: skip
            with gr.Row():
                chosen = gr.Dropdown(
                    ids, value=ids[0] if ids else None, label="Extension", elem_id="extensions_chosen"
                )
                enable = gr.Button("Enable", elem_id="extensions_enable")
                disable = gr.Button("Disable", elem_id="extensions_disable")
                apply = gr.Button("Apply (reload)", elem_id="extensions_apply")
            with gr.Row():
                check = gr.Button("Check for updates", elem_id="extensions_check")
                update = gr.Button("Update", elem_id="extensions_update")
                remove = gr.Button("Uninstall", variant="stop", elem_id="extensions_uninstall")
                refresh = gr.Button("Refresh", elem_id="extensions_refresh")
        with gr.Tab("Install from URL", elem_id="extensions_install_tab"):
            url = gr.Textbox(label="URL for extension's git repository", elem_id="extensions_install_url")
            branch = gr.Textbox(label="Specific branch name", placeholder="leave empty for default main branch",
                                elem_id="extensions_install_branch")  # fmt: skip
            folder = gr.Textbox(label="Local directory name", placeholder="leave empty for auto",
                                elem_id="extensions_install_dirname")  # fmt: skip
            install = gr.Button("Install", variant="primary", elem_id="extensions_install_button")
            install_status = gr.HTML("", elem_id="extensions_install_status")
        with gr.Tab("Available", elem_id="extensions_available_tab"):
            index_source = gr.Textbox(str(ui.ctx.options.get(INDEX_OPTION, "") or ""),
                                      label="Extension index URL or file", elem_id="extensions_index_url")  # fmt: skip
            with gr.Row():
                load = gr.Button("Load from:", elem_id="extensions_index_load")
                query = gr.Textbox(label="Search", elem_id="extensions_search")
            available = gr.Dataframe(
                [], headers=AVAILABLE_HEADERS, interactive=False, elem_id="extensions_available"
            )
            with gr.Row():
                pick = gr.Dropdown([], label="Extension to install", elem_id="extensions_available_pick")
                install_pick = gr.Button("Install", elem_id="extensions_available_install")
            available_status = gr.HTML("", elem_id="extensions_available_status")

    def do(fn: Callable[[Any, str], str]) -> Callable[[str], tuple[str, list[list[Any]], Any]]:
        return lambda ext_id: _action(ui, lambda host: fn(host, ext_id))

    outputs = [status, table, chosen]
    enable.click(do(lambda h, i: f"enabled {h.enable(i).id}: {h.get(i).status}"), chosen, outputs)
    disable.click(do(lambda h, i: f"disabled {h.disable(i).id}"), chosen, outputs)
    apply.click(do(lambda h, i: f"reloaded {h.reload(i).id}: {h.get(i).status}"), chosen, outputs)
    check.click(
        do(lambda h, i: "an update is available" if h.check_for_updates(i) else "up to date"), chosen, outputs
    )
    update.click(do(lambda h, i: f"updated {h.update(i).id} to {h.get(i).commit or '?'}"), chosen, outputs)
    remove.click(do(lambda h, i: (h.uninstall(i), f"uninstalled {i}")[1]), chosen, outputs)
    refresh.click(lambda: ("", installed_rows(ui), gr.update(choices=[r[1] for r in installed_rows(ui)])),
                  None, outputs)  # fmt: skip

    def run_install(url: str, branch: str, folder: str) -> tuple[str, list[list[Any]], Any]:
        def go(host: Any) -> str:
            if not url.strip():
                raise ValueError("enter the git URL of the extension")
            done = host.install(url.strip(), branch.strip() or None, folder.strip() or None)
            tail = f" ({done.error})" if done.error else ""
            return (
                f"installed {done.name} into {done.path}: {done.status}{tail}. Reload the page for its samplers; "
                "its tabs and sections appear after a restart."
            )

        return _action(ui, go)

    install.click(run_install, [url, branch, folder], [install_status, table, chosen])

    def load_available(source: str, text: str) -> tuple[list[list[Any]], Any, str]:
        from webui.extensions.git import normalize_url
        from webui.extensions.index import load_index, search

        host = ui.ctx.extensions
        try:
            entries = search(load_index(source.strip()), text)
        except Exception as e:  # unreadable index files or URLs are reported, not raised
            return [], gr.update(choices=[], value=None), error_html(f"{type(e).__name__}: {e}")
        installed = host.installed_urls() if host else set()
        rows = [
            [e.name, e.url, e.description, ", ".join(e.tags), normalize_url(e.url) in installed]
            for e in entries
        ]
        choices = [(f"{e.name} ({e.url})", e.url) for e in entries if normalize_url(e.url) not in installed]
        return rows, gr.update(choices=choices, value=None), _ok(f"{len(rows)} extensions")

    load.click(load_available, [index_source, query], [available, pick, available_status])
    query.submit(load_available, [index_source, query], [available, pick, available_status])
    install_pick.click(lambda url: run_install(url or "", "", ""), pick, [available_status, table, chosen])


def build_extension_tabs(ui: UiServices) -> None:
    """Tabs that loaded extensions add (``api.add_ui_form_tab`` and ``api.add_ui_tab``); a failing builder
    disables its extension."""
    from webui.app.extension_forms import build_form_tab

    host = ui.ctx.extensions
    if host is None:
        return
    for form in host.form_tabs():
        with gr.Tab(form.title, elem_id=f"tab_ext_{form.owner}"):
            build_form_tab(ui, form)
    for tab in host.ui_tabs():
        with gr.Tab(tab.title, elem_id=f"tab_ext_{tab.owner}"):
            try:
                host.call_guarded(tab.owner, "ui tab", tab.build)
            except Exception as e:  # the extension is now marked failed; the page still builds
                gr.HTML(error_html(str(e)))
