"""launch.py's optional installs: spandrel only beside a torchvision that loads with the installed torch."""

from __future__ import annotations

import sys
from pathlib import Path

import launch


def test_spandrel_is_added_only_when_torchvision_works() -> None:
    extra, notice = launch.optional_installs(torchvision_ok=True, have=set())
    assert extra == ["spandrel", "einops"] and notice is None
    extra, notice = launch.optional_installs(torchvision_ok=True, have={"einops"})
    assert extra == ["spandrel"]
    extra, notice = launch.optional_installs(torchvision_ok=False, have=set())
    assert extra == []
    assert notice is not None and "spandrel" in notice and "torchvision" in notice


def test_torchvision_probe_reports_a_broken_install_without_crashing(tmp_path: Path) -> None:
    # a stand-in interpreter whose torchvision import fails as a mismatched build does
    broken = tmp_path / "python"
    broken.write_text(
        '#!/bin/sh\necho "RuntimeError: operator torchvision::nms does not exist" >&2\nexit 1\n'
    )
    broken.chmod(0o755)
    assert launch.torchvision_works(str(broken)) is False
    working = tmp_path / "python-ok"
    working.write_text("#!/bin/sh\nexit 0\n")
    working.chmod(0o755)
    assert launch.torchvision_works(str(working)) is True


def test_probe_of_this_interpreter_matches_importability() -> None:
    import importlib.util

    if importlib.util.find_spec("torchvision") is None:
        assert launch.torchvision_works(sys.executable) is False
