"""Command-line flags: A1111's names and meanings, parsed into an immutable :class:`Flags`.

Nothing here runs at import time; ``launch.py`` calls :func:`parse_flags` once and hands the result to the
application context.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path

PRECISIONS = ("autocast", "full", "half", "bf16", "fp16", "fp32")


@dataclass(frozen=True)
class Flags:
    """The parsed command line. Field names follow A1111's flags with dashes turned into underscores."""

    # serving
    listen: bool = False
    port: int | None = None
    server_name: str | None = None
    share: bool = False
    ngrok: str | None = None
    api: bool = False
    nowebui: bool = False
    api_auth: str | None = None
    gradio_auth: str | None = None
    autolaunch: bool = False
    theme: str | None = None
    # models and paths
    ckpt: str | None = None
    ckpt_dir: str | None = None
    vae_dir: str | None = None
    vae_path: str | None = None
    data_dir: str | None = None
    models_dir: str | None = None
    # device and precision
    xformers: bool = False
    opt_sdp_attention: bool = False
    precision: str = "autocast"
    no_half: bool = False
    no_half_vae: bool = False
    upcast_sampling: bool = False
    medvram: bool = False
    lowvram: bool = False
    use_cpu: tuple[str, ...] = ()
    device_id: str | None = None
    # launcher and extensions
    skip_install: bool = False
    skip_prepare_environment: bool = False
    reinstall_torch: bool = False
    enable_insecure_extension_access: bool = False
    disable_all_extensions: bool = False
    disable_extra_extensions: bool = False
    # project-specific
    run_tests: bool = False
    download_model: str | None = None
    extra: tuple[str, ...] = field(default_factory=tuple)

    @property
    def server_port(self) -> int:
        """The port to serve on: ``--port`` or A1111's defaults (7860, 7861 for ``--nowebui``)."""
        if self.port is not None:
            return self.port
        return 7861 if self.nowebui else 7860

    @property
    def host(self) -> str:
        """The address to bind: ``--server-name``, ``0.0.0.0`` with ``--listen``, else loopback."""
        if self.server_name:
            return self.server_name
        return "0.0.0.0" if self.listen else "127.0.0.1"

    @property
    def reachable_from_other_hosts(self) -> bool:
        """True when the server can be reached from other machines (A1111's ``cmd_opts`` gate)."""
        loopback = (None, "", "127.0.0.1", "localhost", "::1")
        return self.listen or self.share or bool(self.ngrok) or self.server_name not in loopback


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser with every supported flag and its help text."""
    p = argparse.ArgumentParser(
        prog="launch.py",
        description="Stable Diffusion web UI (A1111-compatible flags).",
    )
    add = p.add_argument
    g = p.add_argument_group("serving")
    g.add_argument("--listen", action="store_true", help="serve on 0.0.0.0 so other hosts can connect")
    g.add_argument("--port", type=int, help="port to serve on (default 7860, 7861 with --nowebui)")
    g.add_argument("--server-name", help="address or host name to bind to")
    g.add_argument("--share", action="store_true", help="open a Gradio share tunnel (for Colab)")
    g.add_argument("--ngrok", metavar="TOKEN", help="open an ngrok tunnel with this auth token (pyngrok)")
    g.add_argument("--api", action="store_true", help="serve the /sdapi/v1 HTTP API beside the UI")
    g.add_argument("--nowebui", action="store_true", help="serve only the API (port 7861 by default)")
    g.add_argument("--api-auth", metavar="USER:PASS[,USER:PASS]", help="HTTP basic auth for the API")
    g.add_argument("--gradio-auth", metavar="USER:PASS[,USER:PASS]", help="login for the web UI")
    g.add_argument("--autolaunch", action="store_true", help="open the UI in the system browser")
    g.add_argument("--theme", choices=("light", "dark"), help="UI theme")

    g = p.add_argument_group("models and paths")
    g.add_argument("--ckpt", help="checkpoint to load at start (a path or a name in models/)")
    g.add_argument("--ckpt-dir", help="extra folder to scan for checkpoints")
    g.add_argument("--vae-dir", help="folder to scan for VAE files (default models/VAE)")
    g.add_argument("--vae-path", help="VAE file to use instead of the checkpoint's own")
    g.add_argument("--data-dir", help="base folder for models/, outputs/, extensions/ and config")
    g.add_argument("--models-dir", help="folder holding Stable-diffusion/, VAE/, Lora/ ...")

    g = p.add_argument_group("device and precision")
    g.add_argument("--xformers", action="store_true", help="use xformers attention when installed")
    g.add_argument("--opt-sdp-attention", action="store_true", help="use PyTorch SDPA (the default)")
    g.add_argument("--precision", choices=PRECISIONS, default="autocast", help="compute precision")
    g.add_argument("--no-half", action="store_true", help="keep models in fp32")
    g.add_argument("--no-half-vae", action="store_true", help="keep the VAE in fp32")
    g.add_argument("--upcast-sampling", action="store_true", help="upcast sampling math to fp32")
    g.add_argument("--medvram", action="store_true", help="keep only the active component on the GPU")
    g.add_argument("--lowvram", action="store_true", help="offload aggressively (sequential offload)")
    g.add_argument(
        "--use-cpu", nargs="+", default=[], metavar="MODULE", help="'all' or module names to run on CPU"
    )
    g.add_argument("--device-id", help="CUDA device index to use")

    g = p.add_argument_group("launcher and extensions")
    g.add_argument("--skip-install", action="store_true", help="do not install requirements")
    g.add_argument("--skip-prepare-environment", action="store_true", help="do not create or check venv")
    g.add_argument("--reinstall-torch", action="store_true", help="reinstall torch (TORCH_COMMAND)")
    g.add_argument(
        "--enable-insecure-extension-access",
        action="store_true",
        help="allow installing extensions even when reachable from other hosts",
    )
    g.add_argument("--disable-all-extensions", action="store_true", help="start with no extensions")
    g.add_argument(
        "--disable-extra-extensions", action="store_true", help="start with built-in extensions only"
    )

    g = p.add_argument_group("project")
    g.add_argument("--run-tests", action="store_true", help="run the test suite instead of the app")
    g.add_argument("--download-model", metavar="NAME", help="download a known checkpoint (e.g. sd15)")
    add("extra", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    return p


def parse_flags(argv: Sequence[str] | None = None) -> Flags:
    """Parse ``argv`` (defaults to ``sys.argv[1:]``) into :class:`Flags`."""
    ns = build_parser().parse_args(argv)
    values = vars(ns)
    values["use_cpu"] = tuple(values.get("use_cpu") or ())
    extra = list(values.get("extra") or ())
    if extra[:1] == ["--"]:
        extra = extra[1:]
    values["extra"] = tuple(extra)
    known = {f.name for f in fields(Flags)}
    return Flags(**{k: v for k, v in values.items() if k in known})


def parse_auth(spec: str | None) -> dict[str, str]:
    """Parse ``user:pass[,user:pass]`` into a mapping; a malformed entry raises ``ValueError``."""
    if not spec:
        return {}
    creds: dict[str, str] = {}
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        user, sep, password = part.partition(":")
        if not sep or not user:
            raise ValueError(f"bad credentials {part!r}: expected user:password")
        creds[user] = password
    return creds


def flags_as_dict(flags: Flags) -> dict[str, object]:
    """The flags as A1111's ``/sdapi/v1/cmd-flags`` returns them (names with underscores)."""
    out: dict[str, object] = {}
    for f in fields(flags):
        v = getattr(flags, f.name)
        out[f.name] = list(v) if isinstance(v, tuple) else v
    return out


def resolve_path(value: str | None, base: Path) -> Path | None:
    """Expand a user-supplied path relative to ``base``."""
    if not value:
        return None
    p = Path(value).expanduser()
    return p if p.is_absolute() else (base / p)
