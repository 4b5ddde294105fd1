"""The Disco tab (the shipped disco-mode extension) in headless Chromium: a run from the tab shows its image,
saves it under outputs/disco-images/<batch name>/ with the settings JSON, and a bad setting is shown as a
readable message."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.disco.test_disco_app import write_tiny_clip
from tests.factories import write_tiny_checkpoint
from tests.ui.conftest import UI_DEFAULTS, _browser_skip_reason, screenshot, served_page
from tests.ui.test_browser import set_number, wait_text
from webui.engine.outputs import read_infotext

REPO = Path(__file__).resolve().parents[2]


def fill(pg: Any, elem_id: str, text: str) -> None:
    pg.locator(f"#{elem_id} textarea, #{elem_id} input").first.fill(text)


def test_disco_tab_runs_and_reports_bad_settings(browser: Any, tmp_path: Path) -> None:
    if _browser_skip_reason():
        pytest.skip(_browser_skip_reason())
    data = tmp_path / "data"
    (data / "models" / "Stable-diffusion").mkdir(parents=True)
    write_tiny_checkpoint(data / "models" / "Stable-diffusion" / "sd1.safetensors", "sd1")
    write_tiny_clip(data / "models" / "clip" / "tiny-clip")
    (data / "ui-config.json").write_text(json.dumps(UI_DEFAULTS), encoding="utf-8")
    with served_page(browser, data, root=REPO) as (_server, pg):
        pg.locator("#tab_ext_disco-mode-button").click()
        fill(pg, "ext_disco_mode_text_prompts_text", "a lighthouse:2\nstyle: ukiyo-e")
        fill(pg, "ext_disco_mode_batch_name", "browser")
        for elem_id, value in (
            ("steps", 3),
            ("width", 64),
            ("height", 64),
            ("seed", 21),
            ("clip_guidance_scale", 200),
        ):
            set_number(pg, f"ext_disco_mode_{elem_id}", value)
        pg.locator("#ext_disco_mode_generate").click()
        wait_text(pg, "#ext_disco_mode_progress", "Done", timeout=120)
        pg.wait_for_selector("#ext_disco_mode_gallery img")
        screenshot(pg, "disco-tab")
        infotext = pg.locator("#ext_disco_mode_infotext textarea").input_value()
        assert (
            infotext.startswith("a lighthouse, style: ukiyo-e")
            and "Seed: 21" in infotext
            and "Disco: " in infotext
        )
        folder = data / "outputs" / "disco-images" / "browser"
        pngs = sorted(folder.glob("*.png"))
        assert len(pngs) == 1 and read_infotext(pngs[0]) == infotext
        saved = json.loads((folder / "browser(0)_settings.json").read_text(encoding="utf-8"))
        assert saved["steps"] == 3 and saved["clip_models"] == ["tiny-clip"]

        fill(pg, "ext_disco_mode_text_prompts_text", "a:1\nb:-1")
        pg.locator("#ext_disco_mode_generate").click()
        message = wait_text(pg, "#ext_disco_mode_message", "text_prompts")
        assert "sum" in message
