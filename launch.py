#!/usr/bin/env python3
"""The one entry point, as in A1111: prepare ``venv/``, install requirements when needed, start the app.

    python launch.py                 # start the web UI on http://127.0.0.1:7860
    python launch.py --run-tests     # run the test suite (what CI runs)

Only the standard library is used before the virtual environment is ready.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / "venv"
REQUIREMENT_FILES = ("requirements.txt", "requirements-nodeps.txt")
DEV_REQUIREMENT_FILES = ("requirements-dev.txt",)
DEFAULT_TORCH_COMMAND = "pip install torch>=2.4"


def in_virtual_env() -> bool:
    """True inside a venv/virtualenv/conda env, or on Colab (which has no venv and needs none)."""
    return (
        sys.prefix != getattr(sys, "base_prefix", sys.prefix)
        or bool(os.environ.get("VIRTUAL_ENV") or os.environ.get("CONDA_PREFIX"))
        or "COLAB_RELEASE_TAG" in os.environ
    )


def venv_python() -> Path:
    """The interpreter of ``venv/``."""
    return VENV / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def run(cmd: list[str], what: str) -> None:
    """Run a command, streaming its output; exit with a clear message when it fails."""
    print(f"[launch] {what}: {' '.join(cmd)}", flush=True)
    result = subprocess.run(cmd, cwd=ROOT)
    if result.returncode != 0:
        sys.exit(f"[launch] {what} failed (exit code {result.returncode})")


def requirements_stamp(dev: bool) -> str:
    """A hash of the requirement files (and TORCH_COMMAND): reinstall only when it changes."""
    h = hashlib.sha256(os.environ.get("TORCH_COMMAND", DEFAULT_TORCH_COMMAND).encode())
    for name in REQUIREMENT_FILES + (DEV_REQUIREMENT_FILES if dev else ()):
        path = ROOT / name
        if path.is_file():
            h.update(path.read_bytes())
    return h.hexdigest()


OPTIONAL_UPSCALER_PACKAGES = ("spandrel", "einops")
"""ESRGAN-family upscalers (models/ESRGAN) run through spandrel, which imports torchvision at import time."""


def torchvision_works(python: str = sys.executable) -> bool:
    """True when torchvision imports (with its compiled ops) beside the installed torch.

    Probed in a child process: a torchvision built for another torch fails while registering its ops
    ("operator torchvision::nms does not exist"), which must not take this process down.
    """
    probe = "import torch, torchvision, torchvision.ops; torchvision.ops.nms"
    result = subprocess.run([python, "-c", probe], cwd=ROOT, capture_output=True)
    return result.returncode == 0


def optional_installs(torchvision_ok: bool, have: set[str]) -> tuple[list[str], str | None]:
    """Packages to add for optional features, and a notice for what is skipped.

    spandrel is installed only beside a working torchvision (never pulling torchvision itself, which could
    replace torch or break transformers' imports when it does not match the installed torch).
    """
    if not torchvision_ok:
        return [], (
            "ESRGAN-family upscalers (models/ESRGAN) need spandrel, which needs a torchvision that matches "
            "your torch; torchvision is missing or does not load, so spandrel was not installed "
            "(install torchvision for your torch, then `pip install spandrel einops`)"
        )
    return [name for name in OPTIONAL_UPSCALER_PACKAGES if name not in have], None


def install_requirements(dev: bool, reinstall_torch: bool) -> None:
    """pip-install torch (``TORCH_COMMAND``) and the requirement files unless already done."""
    stamp_file = Path(sys.prefix) / (".webui-requirements-dev" if dev else ".webui-requirements")
    stamp = requirements_stamp(dev)
    if stamp_file.is_file() and stamp_file.read_text().strip() == stamp and not reinstall_torch:
        return
    pip = [sys.executable, "-m", "pip"]
    try:
        import torch  # noqa: F401

        have_torch = True
    except ImportError:
        have_torch = False
    if not have_torch or reinstall_torch:
        torch_cmd = os.environ.get("TORCH_COMMAND", DEFAULT_TORCH_COMMAND).split()
        if torch_cmd[:1] == ["pip"]:
            torch_cmd = pip + torch_cmd[1:]
        run(torch_cmd, "installing torch")
    run([*pip, "install", "-r", "requirements.txt"], "installing requirements")
    run([*pip, "install", "--no-deps", "-r", "requirements-nodeps.txt"], "installing requirements (no deps)")
    if dev:
        run([*pip, "install", "-r", "requirements-dev.txt"], "installing test requirements")
    have = {name for name in OPTIONAL_UPSCALER_PACKAGES if importlib.util.find_spec(name) is not None}
    extra, notice = optional_installs(torchvision_works(), have)
    if extra:
        run([*pip, "install", "--no-deps", *extra], "installing ESRGAN upscaler support")
    if notice:
        print(f"[launch] {notice}", flush=True)
    stamp_file.write_text(stamp)


def main(argv: list[str] | None = None) -> int:
    """Parse flags, make sure the environment is ready, then run the app or the tests."""
    argv = list(sys.argv[1:] if argv is None else argv)
    sys.path.insert(0, str(ROOT))
    from webui.config.flags import parse_flags

    flags = parse_flags(argv)
    if not flags.skip_prepare_environment and not in_virtual_env():
        if not venv_python().exists():
            run([sys.executable, "-m", "venv", str(VENV)], "creating venv")
        os.execv(str(venv_python()), [str(venv_python()), str(Path(__file__).resolve()), *argv])
    if not flags.skip_install:
        install_requirements(dev=flags.run_tests, reinstall_torch=flags.reinstall_torch)
    if flags.run_tests:
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
        cmd = [sys.executable, "-m", "pytest", *flags.extra]
        print(f"[launch] running tests: {' '.join(cmd)}", flush=True)
        return subprocess.call(cmd, cwd=ROOT, env=env)
    if flags.download_model:
        from webui.config.paths import Paths
        from webui.models.download import DownloadError, download_model, known_model

        try:
            model = known_model(flags.download_model)
            print(f"[launch] downloading {model.description}", flush=True)
            path = download_model(model, Paths.from_flags(flags, ROOT).ckpt_dirs[0])
        except DownloadError as e:
            print(f"\n[launch] {e}", file=sys.stderr, flush=True)
            return 1
        print(f"\n[launch] {path} is ready", flush=True)
    from webui.server import serve

    return serve(flags, ROOT)


if __name__ == "__main__":
    sys.exit(main())
