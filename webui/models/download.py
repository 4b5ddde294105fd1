"""``python launch.py --download-model sd15``: fetch a well-known checkpoint once, with a progress bar and a
sha256 check, into ``models/Stable-diffusion``.

The file is written under a temporary name and renamed only after its hash matched, so an interrupted or
corrupted download never looks like a checkpoint. Without a network the error says so and what to do.
"""

from __future__ import annotations

import hashlib
import os
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import IO

from webui.models.errors import ModelError

CHUNK = 1 << 20


@dataclass(frozen=True)
class KnownModel:
    """A checkpoint ``--download-model`` knows: where it lives and the sha256 it must have."""

    name: str
    filename: str
    url: str
    sha256: str
    description: str


KNOWN_MODELS = MappingProxyType(
    {
        "sd15": KnownModel(
            "sd15",
            "v1-5-pruned-emaonly.safetensors",
            "https://huggingface.co/stable-diffusion-v1-5/stable-diffusion-v1-5/resolve/main/"
            "v1-5-pruned-emaonly.safetensors",
            "6ce0161689b3853acaa03779ec93eafe75a02f4ced659bee03f50797806fa2fa",
            "Stable Diffusion 1.5 (4.3 GB), what A1111 downloads on first start",
        ),
    }
)


class DownloadError(ModelError):
    """A download failed (unknown name, no network, wrong hash, disk error); the message says what to do."""


def known_model(name: str) -> KnownModel:
    """The entry for ``name`` (case-insensitive); an unknown name lists the known ones."""
    entry = KNOWN_MODELS.get(name.strip().lower())
    if entry is None:
        raise DownloadError(f"unknown model {name!r}; known: {', '.join(KNOWN_MODELS)}")
    return entry


def _progress_printer(stream: IO[str]) -> Callable[[int, int | None], None]:
    started = time.monotonic()

    def show(done: int, total: int | None) -> None:
        rate = done / max(time.monotonic() - started, 1e-6) / CHUNK
        if total:
            width = 30
            filled = int(width * done / total)
            bar = "#" * filled + "-" * (width - filled)
            stream.write(f"\r[{bar}] {done / CHUNK:8.1f}/{total / CHUNK:.1f} MiB {rate:6.1f} MiB/s")
        else:
            stream.write(f"\r{done / CHUNK:8.1f} MiB {rate:6.1f} MiB/s")
        stream.flush()

    return show


def download_model(
    model: KnownModel,
    dest_dir: Path,
    *,
    progress: Callable[[int, int | None], None] | None = None,
    timeout: float = 30.0,
) -> Path:
    """Download ``model`` into ``dest_dir``; returns the checkpoint path (at once if it is already there).

    Raises:
        DownloadError: no network / HTTP error (with the URL, so it can be fetched by hand), a sha256
            mismatch (the partial file is deleted), or a write error.
    """
    dest_dir.mkdir(parents=True, exist_ok=True)
    target = dest_dir / model.filename
    if target.is_file():
        return target
    partial = target.with_name(target.name + ".part")
    show = progress if progress is not None else _progress_printer(sys.stderr)
    digest = hashlib.sha256()
    try:
        request = urllib.request.Request(model.url, headers={"User-Agent": "sd-webui"})
        with urllib.request.urlopen(request, timeout=timeout) as response, open(partial, "wb") as out:
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            done = 0
            while chunk := response.read(CHUNK):
                out.write(chunk)
                digest.update(chunk)
                done += len(chunk)
                show(done, total)
    except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
        partial.unlink(missing_ok=True)
        reason = getattr(exc, "reason", exc)
        raise DownloadError(
            f"could not download {model.name} from {model.url}: {reason}. Without a network, fetch the file "
            f"elsewhere and put it in {dest_dir}"
        ) from None
    except OSError as exc:
        partial.unlink(missing_ok=True)
        raise DownloadError(f"could not write {partial}: {exc}") from None
    if digest.hexdigest() != model.sha256:
        partial.unlink(missing_ok=True)
        raise DownloadError(
            f"{model.filename}: sha256 {digest.hexdigest()} does not match the expected {model.sha256}; "
            "the download was deleted"
        )
    os.replace(partial, target)
    return target
