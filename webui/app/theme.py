"""Look and keyboard: the page's extra CSS, light/dark theme (``--theme``) and Ctrl+Enter to generate.

The server mounts the Blocks without page-level css/js, so both are installed by one small script that
runs when the page loads (:func:`page_script`).
"""

from __future__ import annotations

import json

THEMES = ("light", "dark")

CSS = """
#webui_topbar { align-items: flex-end; }
#webui_topbar .webui-queue { font-size: 0.9em; opacity: 0.8; }
.webui-token-counter { text-align: right; font-size: 0.85em; opacity: 0.75; min-height: 1.2em; }
.webui-token-counter.over { color: #d33; opacity: 1; }
.webui-progress { position: relative; height: 1.6em; border-radius: 6px; overflow: hidden;
  background: var(--block-background-fill); border: 1px solid var(--border-color-primary); }
.webui-progress-fill { position: absolute; inset: 0 auto 0 0; background: var(--color-accent); opacity: 0.55;
  transition: width 0.2s; }
.webui-progress-text { position: relative; padding: 0 0.6em; line-height: 1.6em; font-size: 0.9em; }
.webui-error { color: #fff; background: #c0392b; padding: 0.5em 0.8em; border-radius: 6px; }
.webui-generate-column button { min-height: 3.2em; }
.webui-tool { max-width: 3em; min-width: 2.6em !important; }
.webui-pnginfo-table td { padding: 0.15em 0.6em; vertical-align: top; }
"""

_SCRIPT = """
() => {
  const theme = __THEME__;
  if (theme === "dark") document.body.classList.add("dark");
  if (theme === "light") document.body.classList.remove("dark");
  if (!document.getElementById("webui-css")) {
    const style = document.createElement("style");
    style.id = "webui-css";
    style.textContent = __CSS__;
    document.head.appendChild(style);
  }
  if (!window.__webuiKeys) {
    window.__webuiKeys = true;
    document.addEventListener("keydown", (e) => {
      if (!(e.key === "Enter" && (e.ctrlKey || e.metaKey))) return;
      for (const id of ["txt2img_generate", "img2img_generate"]) {
        const button = document.getElementById(id);
        if (button && button.offsetParent !== null) {
          e.preventDefault();
          button.click();
          return;
        }
      }
    });
  }
}
"""


def page_script(theme: str | None) -> str:
    """The JavaScript run on page load: theme, CSS and the Ctrl+Enter shortcut."""
    if theme not in (None, *THEMES):
        theme = None
    return _SCRIPT.replace("__THEME__", json.dumps(theme)).replace("__CSS__", json.dumps(CSS))
