"""Checkpoint identity as A1111 shows it: full sha256 (cached), 10-hex short hash, legacy 8-hex hash."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
from pathlib import Path

_CHUNK = 1 << 20


def sha256_file(path: Path) -> str:
    """sha256 of the whole file, hex."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def legacy_model_hash(path: Path) -> str:
    """A1111's old 8-hex "model hash": sha256 of the 64 KiB starting at offset 1 MiB."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        f.seek(0x100000)
        h.update(f.read(0x10000))
    return h.hexdigest()[:8]


def short_hash(sha256: str) -> str:
    """The 10-hex short hash shown in titles and written as ``Model hash`` in infotext."""
    return sha256[:10]


class HashCache:
    """sha256 values cached on disk, keyed by path and invalidated by mtime or size changes.

    Thread-safe; the JSON file is rewritten atomically after each new hash.
    """

    def __init__(self, file: Path) -> None:
        self._file = file
        self._lock = threading.Lock()
        self._entries: dict[str, dict[str, object]] | None = None

    def _load(self) -> dict[str, dict[str, object]]:
        if self._entries is None:
            try:
                data = json.loads(self._file.read_text(encoding="utf-8"))
                self._entries = data if isinstance(data, dict) else {}
            except (OSError, ValueError):
                self._entries = {}
        return self._entries

    def _save(self) -> None:
        self._file.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self._file.parent, prefix=".hashes-")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(self._entries, f, indent=1)
        os.replace(tmp, self._file)

    @staticmethod
    def _stamp(path: Path) -> tuple[float, int]:
        st = path.stat()
        return st.st_mtime, st.st_size

    def cached(self, path: Path) -> str | None:
        """The cached sha256 of ``path`` if it is still valid, else None (never hashes)."""
        key = str(path.resolve())
        with self._lock:
            entry = self._load().get(key)
            if not entry:
                return None
            try:
                mtime, size = self._stamp(path)
            except OSError:
                return None
            if entry.get("mtime") == mtime and entry.get("size") == size:
                value = entry.get("sha256")
                return value if isinstance(value, str) else None
            return None

    def sha256(self, path: Path) -> str:
        """The sha256 of ``path``, computed once per (path, mtime, size) and then served from the cache."""
        hit = self.cached(path)
        if hit is not None:
            return hit
        mtime, size = self._stamp(path)
        digest = sha256_file(path)
        with self._lock:
            self._load()[str(path.resolve())] = {"mtime": mtime, "size": size, "sha256": digest}
            self._save()
        return digest
