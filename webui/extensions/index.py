"""The "Available" extensions index: a JSON list of ``{name, url, description, tags}``.

The index comes from a local file or an ``http(s)`` URL. A1111's own index format (an object with an
``"extensions"`` list) is read as well. Nothing from the index is executed; installing goes through the
host like any other URL.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

INDEX_TIMEOUT_S = 10.0
MAX_INDEX_BYTES = 20 * 1024 * 1024


class ExtensionIndexError(ValueError):
    """The index cannot be fetched or is not a list of extensions."""


@dataclass(frozen=True)
class IndexEntry:
    """One extension listed in the index."""

    name: str
    url: str
    description: str = ""
    tags: tuple[str, ...] = ()


def _read_source(source: str | Path, timeout: float) -> str:
    text_source = str(source)
    if text_source.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(text_source, timeout=timeout) as response:
                data = response.read(MAX_INDEX_BYTES + 1)
        except OSError as exc:
            raise ExtensionIndexError(f"cannot fetch the extension index {text_source}: {exc}") from None
        if len(data) > MAX_INDEX_BYTES:
            raise ExtensionIndexError(
                f"the extension index {text_source} is larger than {MAX_INDEX_BYTES} bytes"
            )
        return data.decode("utf-8")
    path = Path(text_source[len("file://") :] if text_source.startswith("file://") else text_source)
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ExtensionIndexError(f"cannot read the extension index {path}: {exc}") from None


def parse_index(data: Any) -> list[IndexEntry]:
    """Entries from parsed JSON (a list, or an object with an ``extensions`` list); bad items are skipped."""
    items = data.get("extensions") if isinstance(data, dict) else data
    if not isinstance(items, list):
        raise ExtensionIndexError("the extension index must be a JSON list of {name, url, description, tags}")
    entries = []
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("url"), str) or not item["url"].strip():
            continue
        tags = item.get("tags") or ()
        entries.append(
            IndexEntry(
                name=str(item.get("name") or item["url"].rstrip("/").rsplit("/", 1)[-1]),
                url=item["url"].strip(),
                description=str(item.get("description") or ""),
                tags=tuple(str(t) for t in tags) if isinstance(tags, (list, tuple)) else (),
            )
        )
    return entries


def load_index(source: str | Path, timeout: float = INDEX_TIMEOUT_S) -> list[IndexEntry]:
    """Read the index from a local path or an ``http(s)://`` URL (fetched with ``timeout`` seconds)."""
    text = _read_source(source, timeout)
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ExtensionIndexError(f"the extension index is not valid JSON: {exc}") from None
    return parse_index(data)


def search(entries: Iterable[IndexEntry], text: str = "", tags: Iterable[str] = ()) -> list[IndexEntry]:
    """Entries whose name, description or URL contain ``text`` (case-insensitive) and that carry every
    tag in ``tags``; the order of the index is kept."""
    needle = text.strip().lower()
    wanted = {t.lower() for t in tags}
    result = []
    for entry in entries:
        haystack = f"{entry.name}\n{entry.description}\n{entry.url}".lower()
        if needle and needle not in haystack:
            continue
        if not wanted <= {t.lower() for t in entry.tags}:
            continue
        result.append(entry)
    return result
