"""Prompt styles (A1111's ``styles.csv``): named prompt / negative-prompt snippets.

A style's text may contain ``{prompt}``; applying it puts the user's prompt there, otherwise the style
is appended after a comma, exactly as A1111 does.
"""

from __future__ import annotations

import csv
import os
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from webui.engine.errors import InvalidParameter

PLACEHOLDER = "{prompt}"
FIELDS = ("name", "prompt", "negative_prompt")


@dataclass(frozen=True)
class PromptStyle:
    """One style row."""

    name: str
    prompt: str = ""
    negative_prompt: str = ""


def merge_style(style_text: str, prompt: str) -> str:
    """Apply one style's text to ``prompt`` (placeholder substitution or comma-append)."""
    if PLACEHOLDER in style_text:
        return style_text.replace(PLACEHOLDER, prompt)
    if not style_text.strip():
        return prompt
    if not prompt.strip():
        return style_text
    return f"{prompt}, {style_text}"


class StyleDatabase:
    """Styles loaded from (and saved to) a CSV file with columns name, prompt, negative_prompt."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._styles: dict[str, PromptStyle] = {}
        self.reload()

    def reload(self) -> None:
        """Re-read the CSV file (a missing file means no styles)."""
        styles: dict[str, PromptStyle] = {}
        if self.path.is_file():
            with open(self.path, encoding="utf-8-sig", newline="") as f:
                for row in csv.DictReader(f, skipinitialspace=True):
                    name = (row.get("name") or "").strip()
                    if name:
                        styles[name] = PromptStyle(
                            name, row.get("prompt") or row.get("text") or "", row.get("negative_prompt") or ""
                        )
        with self._lock:
            self._styles = styles

    @property
    def styles(self) -> dict[str, PromptStyle]:
        """A copy of the styles by name, in file order."""
        with self._lock:
            return dict(self._styles)

    def get(self, name: str) -> PromptStyle:
        """A style by name; unknown names raise :class:`InvalidParameter` listing the known ones."""
        with self._lock:
            style = self._styles.get(name)
        if style is None:
            raise InvalidParameter(
                "styles", f"unknown style {name!r}; valid: {', '.join(self.styles) or 'none'}"
            )
        return style

    def apply_styles_to_prompt(self, prompt: str, names: list[str]) -> str:
        """The prompt with each named style applied in order."""
        for name in names:
            prompt = merge_style(self.get(name).prompt, prompt)
        return prompt

    def apply_negative_styles_to_prompt(self, prompt: str, names: list[str]) -> str:
        """The negative prompt with each named style's negative text applied in order."""
        for name in names:
            prompt = merge_style(self.get(name).negative_prompt, prompt)
        return prompt

    def save_style(self, style: PromptStyle) -> None:
        """Add or replace a style and write the CSV atomically (a backup of the old file is kept)."""
        if not style.name.strip():
            raise InvalidParameter("name", "a style needs a name")
        with self._lock:
            self._styles[style.name] = style
            rows = list(self._styles.values())
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".styles-", suffix=".csv")
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=FIELDS)
            writer.writeheader()
            for s in rows:
                writer.writerow({"name": s.name, "prompt": s.prompt, "negative_prompt": s.negative_prompt})
        if self.path.is_file():
            os.replace(self.path, self.path.with_suffix(".csv.bak"))
        os.replace(tmp, self.path)

    def delete_style(self, name: str) -> None:
        """Remove a style (unknown names raise) and save."""
        self.get(name)
        with self._lock:
            del self._styles[name]
        remaining = list(self.styles.values())
        with self._lock:
            self._styles = {}
        for style in remaining:
            self.save_style(style)
        if not remaining:
            self.path.write_text(",".join(FIELDS) + "\n", encoding="utf-8")
