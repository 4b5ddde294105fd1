"""Fixtures of the UI tests: a real server over a tiny SD1 checkpoint and headless Debian Chromium.

The browser tests are skipped (with the reason) when /usr/bin/chromium, Playwright or Gradio is missing.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
)  # fmt: skip
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"

# Small, fast defaults through ui-config.json, the way users set theirs.
UI_DEFAULTS = {
    "txt2img/Width/value": 64,
    "txt2img/Height/value": 64,
    "txt2img/Sampling steps/value": 3,
    "txt2img/Sampling method/value": "Euler",
    "img2img/Width/value": 64,
    "img2img/Height/value": 64,
    "img2img/Sampling steps/value": 4,
    "img2img/Sampling method/value": "Euler",
    "img2img/Mask blur/value": 0,
}


def free_port() -> int:
    """An unused TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class RunningServer:
    """One uvicorn server over an application context."""

    ctx: Any
    url: str
    server: Any
    thread: threading.Thread

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)
        self.ctx.close()


def start_server(data_dir: Path, *, load_model: bool = True, root: Path | None = None) -> RunningServer:
    """Build a context over ``data_dir`` and serve ``create_app(ctx)`` on a free port (``root``: the
    folder whose ``extensions/`` are built in, e.g. the repository for the shipped extensions)."""
    import uvicorn

    from webui.config.flags import parse_flags
    from webui.context import build_context
    from webui.server import create_app, load_initial_model

    ctx = build_context(
        parse_flags(["--data-dir", str(data_dir), "--use-cpu", "all", "--theme", "light"]), root or data_dir
    )
    ctx.start()
    if load_model:
        load_initial_model(ctx)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(ctx), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the UI server did not start")
        time.sleep(0.05)
    return RunningServer(ctx, f"http://127.0.0.1:{port}/", server, thread)


@contextlib.contextmanager
def served_page(
    browser: Any, data_dir: Path, *, root: Path | None = None
) -> Iterator[tuple[RunningServer, Any]]:
    """A server of its own over ``data_dir`` and a loaded page on it; both closed afterwards."""
    server = start_server(data_dir, root=root)
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    context.set_default_timeout(30_000)
    try:
        pg = context.new_page()
        open_app(pg, server.url)
        yield server, pg
    finally:
        context.close()
        server.stop()


def _browser_skip_reason() -> str | None:
    if not CHROMIUM.exists():
        return f"{CHROMIUM} is missing (apt-get install chromium)"
    try:
        import gradio  # noqa: F401
        import playwright.sync_api  # noqa: F401
    except ImportError as e:
        return f"browser tests need gradio and playwright: {e}"
    return None


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data folder with the tiny SD1 checkpoint and fast UI defaults."""
    from tests.factories import write_tiny_checkpoint

    root = tmp_path_factory.mktemp("ui-data")
    (root / "models" / "Stable-diffusion").mkdir(parents=True)
    write_tiny_checkpoint(root / "models" / "Stable-diffusion" / "sd1.safetensors", "sd1")
    (root / "ui-config.json").write_text(json.dumps(UI_DEFAULTS), encoding="utf-8")
    return root


@pytest.fixture(scope="session")
def server(data_dir: Path) -> Iterator[RunningServer]:
    """The app served for the whole session, its model loaded."""
    reason = _browser_skip_reason()
    if reason:
        pytest.skip(reason)
    running = start_server(data_dir)
    yield running
    running.stop()


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    """Headless Debian Chromium driven by Playwright (never a downloaded browser)."""
    reason = _browser_skip_reason()
    if reason:
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM), args=list(CHROMIUM_ARGS))
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Any, server: RunningServer) -> Iterator[Any]:
    """A fresh page on the app, loaded and ready."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    context.set_default_timeout(30_000)
    pg = context.new_page()
    open_app(pg, server.url)
    yield pg
    context.close()


def open_app(pg: Any, url: str) -> None:
    """Load the UI and wait until its controls are there."""
    pg.goto(url)
    pg.wait_for_selector("#txt2img_generate")


def screenshot(pg: Any, name: str) -> Path:
    """Save a full-page screenshot under test-artifacts/."""
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    pg.screenshot(path=str(path), full_page=True)
    return path
