"""Last-used values of the UI's controls, kept in ``ui-config.json`` (A1111's file and key format).

Keys look like ``"txt2img/Sampling steps/value"``: the tab, the control's label and the property. The UI
reads them when it builds its controls and records the values a user generated with, so they come back
after a restart. Hand-edited entries (A1111 users edit this file to change defaults) are kept.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def state_key(tab: str, label: str, prop: str = "value") -> str:
    """The ui-config.json key of one property of one control."""
    return f"{tab}/{label}/{prop}"


class UiState:
    """Thread-safe view of ``ui-config.json``; a missing or broken file means no saved values."""

    def __init__(self, file: Path) -> None:
        self.file = file
        self._lock = threading.Lock()
        self._values: dict[str, Any] = {}
        if file.is_file():
            try:
                data = json.loads(file.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                data = None
            if isinstance(data, dict):
                self._values = data

    def get(self, tab: str, label: str, default: Any, prop: str = "value") -> Any:
        """The saved value of a control, or ``default``; a saved value of another type is ignored."""
        with self._lock:
            value = self._values.get(state_key(tab, label, prop), default)
        return value if _same_kind(value, default) else default

    def as_dict(self) -> dict[str, Any]:
        """A copy of every saved entry."""
        with self._lock:
            return dict(self._values)

    def remember(self, tab: str, values: Mapping[str, Any]) -> None:
        """Record ``{label: value}`` of one tab and write the file atomically."""
        with self._lock:
            for label, value in values.items():
                if _is_plain(value):
                    self._values[state_key(tab, label)] = value
            data = dict(self._values)
            self.file.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.file.parent, prefix=".ui-config-")
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(data, f, indent=4, ensure_ascii=False)
            os.replace(tmp, self.file)


def _is_plain(value: Any) -> bool:
    if isinstance(value, (str, bool, int, float)) or value is None:
        return True
    return isinstance(value, list) and all(isinstance(v, (str, int, float, bool)) for v in value)


def _same_kind(value: Any, default: Any) -> bool:
    if default is None or value is None:
        return True
    if isinstance(default, bool) or isinstance(value, bool):
        return isinstance(value, bool) and isinstance(default, bool)
    if isinstance(default, (int, float)):
        return isinstance(value, (int, float))
    return isinstance(value, type(default))
