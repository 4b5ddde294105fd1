"""Saving generated images where and as A1111 does, and reading their infotext back.

Layout under the outputs folder (A1111's defaults)::

    txt2img-images/<YYYY-MM-DD>/00000-<seed>.png      img2img-images/...      extras-images/...
    txt2img-grids/<YYYY-MM-DD>/grid-0000.png           img2img-grids/...

The number continues after the highest one already in the folder (5 digits, 4 for grids); the rest of
the name comes from the filename pattern setting (``[seed]`` by default) with A1111's tags. Infotext goes
into the PNG ``parameters`` text chunk, or the EXIF UserComment of JPEG / WebP files. Every file is
written to a temporary name in the same folder and renamed into place, so a failed save leaves nothing.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import re
import string
import struct
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from datetime import datetime
from pathlib import Path
from types import MappingProxyType
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import piexif
import piexif.helper
from PIL import Image, PngImagePlugin

from webui.engine.errors import InvalidParameter

IMAGE_FOLDERS = MappingProxyType(
    {"txt2img": "txt2img-images", "img2img": "img2img-images", "extras": "extras-images"}
)
GRID_FOLDERS = MappingProxyType({"txt2img": "txt2img-grids", "img2img": "img2img-grids"})
IMAGE_FORMATS = MappingProxyType({"png": "PNG", "jpg": "JPEG", "jpeg": "JPEG", "webp": "WEBP"})
INFOTEXT_KEY = "parameters"

MAX_FILENAME_PART_LENGTH = 128  # A1111's --filenames-max-length default
_MAX_NAME_BYTES = 240  # whole file name, below the 255-byte limit of common file systems
_INVALID_CHARS = '#<>:"/\\|?*\n\r\t'
_WINDOWS_RESERVED = frozenset(
    ["CON", "PRN", "AUX", "NUL"] + [f"COM{i}" for i in range(1, 10)] + [f"LPT{i}" for i in range(1, 10)]
)
_NON_LETTERS = re.compile(r"[\s" + re.escape(string.punctuation) + "]+")
_TAG = re.compile(r"(.*?)(?:\[([^\[\]]+)\]|$)", re.DOTALL)
_TAG_ARGUMENT = re.compile(r"(.*)<([^>]*)>$")
_DEFAULT_DATETIME_FORMAT = "%Y%m%d%H%M%S"


class _SkipPrecedingText:
    """Marker returned by a tag that expands to nothing and swallows the literal text before it."""


_SKIP = _SkipPrecedingText()


@dataclass(frozen=True)
class OutputSettings:
    """The A1111 settings that decide where and how images are saved (A1111's option names)."""

    samples_format: str = "png"
    grid_format: str = "png"
    samples_filename_pattern: str = ""
    save_images_add_number: bool = True
    save_to_dirs: bool = True
    grid_save_to_dirs: bool = True
    directories_filename_pattern: str = "[date]"
    directories_max_prompt_words: int = 8
    grid_extended_filename: bool = False
    enable_pnginfo: bool = True
    jpeg_quality: int = 80
    webp_lossless: bool = False

    @classmethod
    def from_settings(cls, settings: object | None) -> OutputSettings:
        """Reads the known names from a mapping or an attribute object; missing names keep defaults."""
        if settings is None or isinstance(settings, OutputSettings):
            return settings or cls()
        values: dict[str, Any] = {}
        for field in fields(cls):
            if isinstance(settings, Mapping):
                if field.name in settings:
                    values[field.name] = settings[field.name]
            elif hasattr(settings, field.name):
                values[field.name] = getattr(settings, field.name)
        return cls(**values)


@dataclass(frozen=True)
class FileNameContext:
    """Values the filename pattern tags expand to, for one saved image.

    ``batch_index``/``iteration`` are 0-based; ``now`` fixes the clock (the current time when ``None``).
    ``width``/``height`` default to the saved image's size.
    """

    seed: int | None = None
    prompt: str = ""
    negative_prompt: str = ""
    steps: int | None = None
    cfg_scale: float | None = None
    sampler: str = ""
    scheduler: str = ""
    model_name: str = ""
    model_hash: str = ""
    width: int | None = None
    height: int | None = None
    batch_index: int = 0
    batch_size: int = 1
    iteration: int = 0
    n_iter: int = 1
    all_seeds: tuple[int, ...] = ()
    styles: tuple[str, ...] = ()
    clip_skip: int | None = None
    denoising_strength: float | None = None
    job_timestamp: str = ""
    now: datetime | None = None


def _replace_forbidden(text: str) -> str:
    text = text.translate({ord(c): "_" for c in _INVALID_CHARS})
    return "".join(c if c.isprintable() else "_" for c in text)


def sanitize_filename_part(text: str, replace_spaces: bool = True) -> str:
    """Makes ``text`` safe as (part of) one file name, as A1111 does: no path separators or characters
    Windows forbids, no leading spaces, no trailing dots or spaces, at most 128 characters."""
    if replace_spaces:
        text = text.replace(" ", "_")
    text = _replace_forbidden(text).lstrip(" ")[:MAX_FILENAME_PART_LENGTH]
    return text.rstrip(" .")


def _safe_name(stem: str) -> str:
    """A whole file name stem: forbidden characters replaced, no leading spaces or trailing dots and
    spaces, at most 240 bytes, never empty, ``.`` or ``..``, nor a Windows reserved device name."""
    stem = _replace_forbidden(stem).lstrip(" ").rstrip(" .")
    while len(stem.encode("utf-8")) > _MAX_NAME_BYTES:
        stem = stem[:-1].rstrip(" .")
    if stem.split(".")[0].upper() in _WINDOWS_RESERVED:
        stem = "_" + stem
    return stem if stem.strip(".") else "_"


class FileNamer:
    """Expands A1111 filename patterns (``[seed]-[prompt_words]``, ``[datetime<%Y%m%d><UTC>]``, ...)."""

    def __init__(self, context: FileNameContext, image: Image.Image | None = None, max_prompt_words: int = 8):
        self.context = context
        self.image = image
        self.max_prompt_words = max_prompt_words
        self.now = context.now or datetime.now()

    def apply(self, pattern: str) -> str:
        """``pattern`` with every known tag replaced; unknown tags stay as they were."""
        out: list[str] = []
        for match in _TAG.finditer(pattern):
            text, tag = match.groups()
            if tag is None:
                out.append(text)
                continue
            name, args = tag, []
            while (arg_match := _TAG_ARGUMENT.match(name)) is not None:
                name, arg = arg_match.groups()
                args.insert(0, arg)
            expand = _TAGS.get(name.lower())
            value = expand(self, *args) if expand is not None else None
            if value is _SKIP:
                continue
            out.append(text + (f"[{tag}]" if value is None else str(value)))
        return "".join(out)

    # tag implementations -------------------------------------------------------------------------

    def _seed(self) -> str:
        return "" if self.context.seed is None else str(self.context.seed)

    def _seed_first(self) -> str:
        seeds = self.context.all_seeds
        return str(seeds[0]) if seeds else self._seed()

    def _seed_last(self) -> str | _SkipPrecedingText:
        if self.context.batch_size == 1 or not self.context.all_seeds:
            return _SKIP
        return str(self.context.all_seeds[-1])

    def _width(self) -> str:
        c = self.context
        return str(c.width if c.width is not None else (self.image.width if self.image else ""))

    def _height(self) -> str:
        c = self.context
        return str(c.height if c.height is not None else (self.image.height if self.image else ""))

    def _prompt_words(self) -> str:
        words = [w for w in _NON_LETTERS.split(self.context.prompt) if w] or ["empty"]
        return sanitize_filename_part(" ".join(words[: self.max_prompt_words]), replace_spaces=False)

    def _batch_number(self) -> str | _SkipPrecedingText:
        return _SKIP if self.context.batch_size == 1 else str(self.context.batch_index + 1)

    def _generation_number(self) -> str | _SkipPrecedingText:
        c = self.context
        if c.n_iter == 1 and c.batch_size == 1:
            return _SKIP
        return str(c.iteration * c.batch_size + c.batch_index + 1)

    def _datetime(self, time_format: str = "", zone: str = "") -> str:
        moment = self.now
        if zone:
            with contextlib.suppress(ZoneInfoNotFoundError, ValueError):
                moment = moment.astimezone(ZoneInfo(zone))
        try:
            text = moment.strftime(time_format or _DEFAULT_DATETIME_FORMAT)
        except (ValueError, TypeError):
            text = moment.strftime(_DEFAULT_DATETIME_FORMAT)
        return sanitize_filename_part(text, replace_spaces=False)


def _hash8(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:8]


def _optional(value: object) -> str:
    return "" if value is None else str(value)


_TAGS: Mapping[str, Callable[..., object]] = MappingProxyType(
    {
        "seed": FileNamer._seed,
        "seed_first": FileNamer._seed_first,
        "seed_last": FileNamer._seed_last,
        "steps": lambda n: _optional(n.context.steps),
        "cfg": lambda n: _optional(n.context.cfg_scale),
        "width": FileNamer._width,
        "height": FileNamer._height,
        "styles": lambda n: sanitize_filename_part(
            ", ".join(s for s in n.context.styles if s != "None") or "None", replace_spaces=False
        ),
        "sampler": lambda n: sanitize_filename_part(n.context.sampler, replace_spaces=False),
        "scheduler": lambda n: sanitize_filename_part(n.context.scheduler, replace_spaces=False),
        "model_hash": lambda n: n.context.model_hash,
        "model_name": lambda n: sanitize_filename_part(n.context.model_name, replace_spaces=False),
        "date": lambda n: n.now.date().isoformat(),
        "datetime": FileNamer._datetime,
        "job_timestamp": lambda n: n.context.job_timestamp or n.now.strftime(_DEFAULT_DATETIME_FORMAT),
        "prompt_hash": lambda n: _hash8(n.context.prompt),
        "negative_prompt_hash": lambda n: _hash8(n.context.negative_prompt),
        "full_prompt_hash": lambda n: _hash8(f"{n.context.prompt} {n.context.negative_prompt}"),
        "prompt": lambda n: sanitize_filename_part(n.context.prompt),
        "prompt_no_styles": lambda n: sanitize_filename_part(n.context.prompt, replace_spaces=False),
        "prompt_spaces": lambda n: sanitize_filename_part(n.context.prompt, replace_spaces=False),
        "prompt_words": FileNamer._prompt_words,
        "batch_number": FileNamer._batch_number,
        "batch_size": lambda n: str(n.context.batch_size),
        "generation_number": FileNamer._generation_number,
        "clip_skip": lambda n: _optional(n.context.clip_skip),
        "denoising": lambda n: _optional(n.context.denoising_strength),
        "none": lambda n: "",
    }
)
FILENAME_TAGS = tuple(_TAGS)


def next_sequence_number(folder: Path, basename: str = "") -> int:
    """One past the highest number that starts a file name in ``folder`` (after ``basename-``); 0 if none."""
    prefix = f"{basename}-" if basename else ""
    highest = -1
    if folder.is_dir():
        for entry in folder.iterdir():
            name = entry.name
            if not name.startswith(prefix):
                continue
            head = os.path.splitext(name[len(prefix) :])[0].split("-")[0]
            if head.isdigit():
                highest = max(highest, int(head))
    return highest + 1


def _exif_user_comment(infotext: str) -> bytes:
    comment = piexif.helper.UserComment.dump(infotext, encoding="unicode")
    return piexif.dump({"Exif": {piexif.ExifIFD.UserComment: comment}})


def _encode(image: Image.Image, image_format: str, infotext: str | None, settings: OutputSettings) -> bytes:
    """The file's bytes; infotext in the PNG chunk or EXIF UserComment."""
    buffer = io.BytesIO()
    if image_format == "PNG":
        pnginfo = None
        if infotext is not None and settings.enable_pnginfo:
            pnginfo = PngImagePlugin.PngInfo()
            pnginfo.add_text(INFOTEXT_KEY, infotext)
        image.save(buffer, format="PNG", pnginfo=pnginfo)
        return buffer.getvalue()
    options: dict[str, Any] = {"quality": settings.jpeg_quality}
    if infotext is not None and settings.enable_pnginfo:
        options["exif"] = _exif_user_comment(infotext)
    if image_format == "JPEG":
        if image.mode not in ("RGB", "L"):
            image = image.convert("RGB")
        image.save(buffer, format="JPEG", optimize=True, **options)
    else:
        image.save(buffer, format="WEBP", lossless=settings.webp_lossless, **options)
    return buffer.getvalue()


def write_atomically(path: Path, data: bytes) -> None:
    """Writes ``data`` to ``path`` through a temporary file in the same folder and an atomic rename."""
    fd, temp_name = tempfile.mkstemp(prefix=".saving-", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp_name, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp_name)
        raise


class OutputSaver:
    """Saves images under ``root`` (the outputs folder) with A1111's folders, names and metadata.

    ``settings`` is an :class:`OutputSettings`, or any mapping / object carrying A1111's option names
    (``samples_format``, ``samples_filename_pattern``, ``save_to_dirs``, ``jpeg_quality`` ...).
    """

    def __init__(self, root: Path, settings: object | None = None, folder: str | None = None) -> None:
        """``folder``: one folder under ``root`` (e.g. ``"disco-images/run1"``) that takes the images and
        grids of every kind, instead of A1111's per-kind folders and their date subfolders."""
        self.root = Path(root)
        self.settings = OutputSettings.from_settings(settings)
        if folder is not None:
            parts = [part for part in re.split(r"[\\/]+", folder) if part]
            if not parts or any(part in (".", "..") or _safe_name(part) != part for part in parts):
                raise InvalidParameter("folder", f"{folder!r} is not a plain relative folder name")
        self.folder = folder

    def _folder(self, base: str, use_dirs: bool, namer: FileNamer) -> Path:
        folder = self.root / base
        if use_dirs:
            pattern = self.settings.directories_filename_pattern or "[prompt_words]"
            for part in re.split(r"[\\/]+", namer.apply(pattern)):
                part = sanitize_filename_part(part, replace_spaces=False)
                if part.strip("."):
                    folder /= _safe_name(part)
        return folder

    def _format(self, extension: str) -> tuple[str, str]:
        ext = extension.lower().lstrip(".")
        if ext not in IMAGE_FORMATS:
            valid = ", ".join(IMAGE_FORMATS)
            raise InvalidParameter("samples_format", f"unknown image format {extension!r}; valid: {valid}")
        return ext, IMAGE_FORMATS[ext]

    def _save(
        self,
        image: Image.Image,
        folder_name: str,
        basename: str,
        decoration_pattern: str,
        use_dirs: bool,
        extension: str,
        context: FileNameContext,
        infotext: str | None,
    ) -> Path:
        ext, image_format = self._format(extension)
        namer = FileNamer(context, image, self.settings.directories_max_prompt_words)
        folder = self._folder(folder_name, use_dirs, namer)
        folder.mkdir(parents=True, exist_ok=True)
        data = _encode(image, image_format, infotext, self.settings)

        decoration = namer.apply(decoration_pattern) if decoration_pattern else ""
        add_number = self.settings.save_images_add_number or not decoration
        if not add_number:
            path = folder / f"{_safe_name(decoration)}.{ext}"
            write_atomically(path, data)
            return path
        start = next_sequence_number(folder, basename)
        for number in range(start, start + 1000):
            counter = f"{basename}-{number:04}" if basename else f"{number:05}"
            stem = _safe_name(f"{counter}-{decoration}" if decoration else counter)
            path = folder / f"{stem}.{ext}"
            if not path.exists():
                write_atomically(path, data)
                return path
        raise OSError(f"no free file name in {folder}")

    def save_image(
        self,
        image: Image.Image,
        kind: str,
        context: FileNameContext,
        infotext: str | None = None,
        extension: str | None = None,
    ) -> Path:
        """Saves one generated image of ``kind`` ("txt2img", "img2img", "extras"); returns its path."""
        if kind not in IMAGE_FOLDERS:
            raise InvalidParameter("kind", f"unknown output kind {kind!r}; valid: {', '.join(IMAGE_FOLDERS)}")
        s = self.settings
        pattern = s.samples_filename_pattern or ("[seed]" if s.save_to_dirs else "[seed]-[prompt_spaces]")
        if context.seed is None:
            pattern = ""
        return self._save(
            image,
            self.folder or IMAGE_FOLDERS[kind],
            "",
            pattern,
            s.save_to_dirs and self.folder is None,
            extension or s.samples_format,
            context,
            infotext,
        )

    def save_grid(
        self,
        image: Image.Image,
        kind: str,
        context: FileNameContext,
        infotext: str | None = None,
        extension: str | None = None,
    ) -> Path:
        """Saves a grid of ``kind`` ("txt2img", "img2img") as ``grid-0000.<ext>``; returns its path."""
        if kind not in GRID_FOLDERS:
            raise InvalidParameter("kind", f"unknown grid kind {kind!r}; valid: {', '.join(GRID_FOLDERS)}")
        s = self.settings
        pattern = ""
        if s.grid_extended_filename:
            pattern = s.samples_filename_pattern or "[seed]-[prompt_spaces]"
        return self._save(
            image,
            self.folder or GRID_FOLDERS[kind],
            "grid",
            pattern,
            s.grid_save_to_dirs and self.folder is None,
            extension or s.grid_format,
            context,
            infotext,
        )


def read_infotext(source: str | os.PathLike[str] | Image.Image) -> str | None:
    """The infotext stored in an image file or opened image: the PNG ``parameters`` chunk, or the EXIF
    UserComment (JPEG / WebP); ``None`` when there is none."""
    if isinstance(source, Image.Image):
        return _infotext_of(source)
    with Image.open(source) as image:
        return _infotext_of(image)


def _infotext_of(image: Image.Image) -> str | None:
    text = image.info.get(INFOTEXT_KEY)
    if isinstance(text, str):
        return text
    exif = image.info.get("exif")
    if not exif:
        return None
    try:
        comment = piexif.load(exif).get("Exif", {}).get(piexif.ExifIFD.UserComment)
        return piexif.helper.UserComment.load(comment) if comment else None
    except (ValueError, KeyError, struct.error):
        return None
