"""The Extensions tab in headless Chromium: install an extension from a local git URL, generate with its
sampler, and (after a restart) use the section it adds to txt2img; its values reach the job by name."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.extensions.helpers import make_remote, manifest
from tests.factories import write_tiny_checkpoint
from tests.ui.conftest import UI_DEFAULTS, _browser_skip_reason, open_app, screenshot, served_page
from tests.ui.test_browser import outputs_with, set_number, wait_text
from webui.engine.outputs import read_infotext

JUMP_MAIN = """
    from webui.extensions.api import ExtensionAPI, sigma_batch, to_d


    def sample_jump(model, x, sigmas, extra_args=None, callback=None, disable=None):
        for i in range(len(sigmas) - 1):
            denoised = model(x, sigma_batch(x, sigmas[i]), **(extra_args or {}))
            if callback is not None:
                callback({"x": x, "i": i, "sigma": sigmas[i], "sigma_hat": sigmas[i], "denoised": denoised})
            x = x + to_d(x, sigmas[i], denoised) * (sigmas[i + 1] - sigmas[i])
        return x


    def setup(api: ExtensionAPI) -> None:
        api.register_sampler(label="Jump Euler", aliases=("jump_euler",), function=sample_jump)
        api.add_ui_section("txt2img", "Jump controls", [
            {"name": "jump_strength", "kind": "slider", "label": "Jump strength", "default": 0.5,
             "minimum": 0, "maximum": 1, "step": 0.05},
            {"name": "jump_mode", "kind": "dropdown", "label": "Jump mode", "default": "soft",
             "choices": ["soft", "hard"]},
        ])

        def note(params, extension_args, extra_generation_params, **_):
            mine = api.values(extension_args)
            extra_generation_params["Jump"] = f"{mine['jump_mode']} {mine['jump_strength']:.2f}"

        api.on("before_process", note)
"""


@pytest.fixture
def fresh_dir(tmp_path: Path) -> Path:
    """A data folder of its own (this test installs into its extensions folder)."""
    root = tmp_path / "data"
    (root / "models" / "Stable-diffusion").mkdir(parents=True)
    write_tiny_checkpoint(root / "models" / "Stable-diffusion" / "sd1.safetensors", "sd1")
    (root / "ui-config.json").write_text(json.dumps(UI_DEFAULTS), encoding="utf-8")
    return root


def choose(pg: Any, elem_id: str, option: str) -> None:
    """Pick ``option`` in a Gradio dropdown."""
    pg.locator(f"#{elem_id} input").first.click()
    pg.locator("ul[role=listbox] li", has_text=option).first.click()


def generate(pg: Any, prompt: str) -> str:
    pg.locator("#txt2img_prompt textarea").fill(prompt)
    set_number(pg, "txt2img_seed", 77)
    pg.locator("#txt2img_generate").click()
    wait_text(pg, "#txt2img_progress", "Done")
    return pg.locator("#txt2img_infotext textarea").input_value()


def test_install_from_git_url_then_generate_with_its_sampler_and_section(
    browser: Any, fresh_dir: Path, tmp_path: Path
) -> None:
    reason = _browser_skip_reason()
    if reason or shutil.which("git") is None:
        pytest.skip(reason or "git is missing")
    bare, _work = make_remote(tmp_path, "sd-jump", {"main.py": JUMP_MAIN}, manifest("jump"))
    other, _ = make_remote(
        tmp_path, "sd-other", {"main.py": "def setup(api):\n    pass\n"}, manifest("other")
    )
    index = tmp_path / "index.json"
    index.write_text(json.dumps([
        {"name": "Jump", "url": str(bare), "description": "jumps", "tags": ["sampler"]},
        {"name": "Other", "url": str(other), "description": "does nothing", "tags": ["demo"]},
    ]), encoding="utf-8")  # fmt: skip
    with served_page(browser, fresh_dir) as (server, pg):
        pg.locator("#tab_extensions-button").click()
        pg.locator("#extensions_install_tab-button").click()
        pg.locator("#extensions_install_url textarea, #extensions_install_url input").first.fill(str(bare))
        pg.locator("#extensions_install_button").click()
        status = wait_text(pg, "#extensions_install_status", "installed")
        assert "Jump" in status and "loaded" in status
        assert (fresh_dir / "extensions" / "sd-jump" / "main.py").is_file()
        screenshot(pg, "extensions-installed")
        pg.locator("#extensions_installed_tab-button").click()
        wait_text(pg, "#extensions_installed", "sd-jump.git")

        # the "Available" index lists both, marks the installed one, and installs the other
        pg.locator("#extensions_available_tab-button").click()
        pg.locator("#extensions_index_url input, #extensions_index_url textarea").first.fill(str(index))
        pg.locator("#extensions_index_load").click()
        wait_text(pg, "#extensions_available_status", "2 extensions")
        choose(pg, "extensions_available_pick", "Other")
        pg.locator("#extensions_available_install").click()
        wait_text(pg, "#extensions_available_status", "installed Other")
        assert (fresh_dir / "extensions" / "sd-other" / "main.py").is_file()

        # the sampler is everywhere a sampler is, after a page reload (no restart)
        assert "Jump Euler" in server.ctx.samplers.labels()
        open_app(pg, server.url)
        choose(pg, "txt2img_sampling", "Jump Euler")
        infotext = generate(pg, "a jumping cat")
        assert "Sampler: Jump Euler" in infotext and "Jump: soft 0.50" in infotext
        files = outputs_with(fresh_dir, "txt2img", "a jumping cat")
        assert len(files) == 1 and "Sampler: Jump Euler" in (read_infotext(files[0]) or "")

    # after a restart the extension's section is part of txt2img; its values reach the job by name
    with served_page(browser, fresh_dir) as (_server, pg):
        pg.locator("#txt2img_ext_jump").click()
        set_number(pg, "txt2img_ext_jump_jump_strength", 0.75)
        choose(pg, "txt2img_ext_jump_jump_mode", "hard")
        choose(pg, "txt2img_sampling", "Jump Euler")
        infotext = generate(pg, "a jumping dog")
        screenshot(pg, "extensions-section")
        assert "Jump: hard 0.75" in infotext and "Sampler: Jump Euler" in infotext
