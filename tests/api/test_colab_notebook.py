"""notebooks/colab.ipynb is a valid nbformat-4 notebook whose launch command uses only real flags."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

from webui.config.flags import build_parser, parse_flags

NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "colab.ipynb"


def _cells() -> list[dict]:
    nb = json.loads(NOTEBOOK.read_text(encoding="utf-8"))
    assert nb["nbformat"] == 4 and isinstance(nb["nbformat_minor"], int)
    assert isinstance(nb["metadata"], dict)
    for cell in nb["cells"]:
        assert cell["cell_type"] in ("markdown", "code")
        assert isinstance(cell["metadata"], dict)
        assert isinstance(cell["source"], list) and all(isinstance(line, str) for line in cell["source"])
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [] and cell["execution_count"] is None
    return nb["cells"]


def _code(cells: list[dict]) -> list[str]:
    return ["".join(c["source"]) for c in cells if c["cell_type"] == "code"]


def _launch_line() -> str:
    lines = [
        line
        for src in _code(_cells())
        for line in src.splitlines()
        if "launch.py" in line and line.startswith("!")
    ]
    assert len(lines) == 1, lines
    return lines[0]


def test_notebook_is_valid_and_has_the_expected_cells() -> None:
    code = _code(_cells())
    assert any("drive.mount(" in src for src in code)
    assert any("git" in src and "clone" in src for src in code)
    assert any("Stable-diffusion" in src and "wget" in src and "--show-progress" in src for src in code)
    for src in code:  # each code cell compiles once the IPython magics are set aside
        python = "\n".join(line for line in src.splitlines() if not line.lstrip().startswith(("!", "%")))
        compile(python, "<cell>", "exec")


def test_launch_command_uses_only_real_flags() -> None:
    line = _launch_line()
    known = {option for action in build_parser()._actions for option in action.option_strings}
    used = re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", line)
    assert {"--share", "--gradio-auth", "--api", "--api-auth", "--data-dir"} <= set(used)
    unknown = [flag for flag in used if flag not in known]
    assert unknown == [], f"unknown flags in the notebook: {unknown}"
    argv = shlex.split(re.sub(r"\{(\w+)\}", r"\1", line.lstrip("!")))[2:]  # after "python launch.py"
    flags = parse_flags(argv)
    assert flags.share and flags.api and flags.api_auth and flags.gradio_auth and flags.extra == ()
