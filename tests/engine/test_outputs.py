"""Saving outputs as A1111 does: folders, counters, filename patterns, sanitising, metadata, atomic writes."""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path

import piexif
import pytest
from PIL import Image

from webui.engine.errors import InvalidParameter
from webui.engine.outputs import (
    FileNameContext,
    FileNamer,
    OutputSaver,
    next_sequence_number,
    read_infotext,
    sanitize_filename_part,
)

NOW = datetime(2024, 3, 9, 14, 5, 7)
INFOTEXT = "a photo of a cat, ünïcödé ✓\nNegative prompt: blurry\nSteps: 20, Sampler: Euler a, Seed: 1234"


def image() -> Image.Image:
    return Image.new("RGB", (16, 8), (200, 30, 40))


def context(**values: object) -> FileNameContext:
    values.setdefault("seed", 1234)
    values.setdefault("now", NOW)
    return FileNameContext(**values)  # type: ignore[arg-type]


def test_default_layout_date_folder_and_numbering(tmp_path: Path) -> None:
    saver = OutputSaver(tmp_path)
    first = saver.save_image(image(), "txt2img", context(), INFOTEXT)
    second = saver.save_image(image(), "txt2img", context(seed=1235), INFOTEXT)
    assert first == tmp_path / "txt2img-images" / "2024-03-09" / "00000-1234.png"
    assert second.name == "00001-1235.png"
    grid = saver.save_grid(image(), "img2img", context(), INFOTEXT)
    assert grid == tmp_path / "img2img-grids" / "2024-03-09" / "grid-0000.png"
    assert saver.save_grid(image(), "img2img", context()).name == "grid-0001.png"
    assert saver.save_image(image(), "extras", context(seed=None)).name == "00000.png"


def test_counter_continues_after_the_highest_existing_number(tmp_path: Path) -> None:
    folder = tmp_path / "img2img-images" / "2024-03-09"
    folder.mkdir(parents=True)
    for name in ("00003-5.png", "00007-1.png", "notes.txt", "grid-0042.png", "00005.jpg"):
        (folder / name).write_bytes(b"x")
    assert next_sequence_number(folder) == 8
    assert next_sequence_number(folder, "grid") == 43
    path = OutputSaver(tmp_path).save_image(image(), "img2img", context(seed=99))
    assert path.name == "00008-99.png"


def test_pattern_tags(tmp_path: Path) -> None:
    ctx = context(
        prompt="A (red:1.2) fox, jumping over fences",
        steps=30,
        cfg_scale=7.5,
        sampler="DPM++ 2M",
        scheduler="Karras",
        model_name="sd_xl_base_1.0",
        model_hash="31e35c80fc",
        width=1024,
        height=768,
        batch_index=1,
        batch_size=4,
        iteration=2,
        n_iter=3,
        all_seeds=(1234, 1235, 1236, 1237),
    )
    namer = FileNamer(ctx, image())
    assert namer.apply("[seed]-[steps]-[cfg]-[sampler]-[scheduler]") == "1234-30-7.5-DPM++ 2M-Karras"
    assert namer.apply("[model_name]_[model_hash]_[width]x[height]") == "sd_xl_base_1.0_31e35c80fc_1024x768"
    assert namer.apply("[date] [datetime] [datetime<%Y>]") == "2024-03-09 20240309140507 2024"
    assert namer.apply("[prompt_words]") == "A red 1 2 fox jumping over fences"
    assert namer.apply("[prompt]") == "A_(red_1.2)_fox,_jumping_over_fences"
    assert namer.apply("[prompt_spaces]") == "A (red_1.2) fox, jumping over fences"
    assert namer.apply("[batch_number]-[generation_number]-[seed_last]") == "2-10-1237"
    assert namer.apply("[SEED] [unknown_tag]") == "1234 [unknown_tag]"
    single = FileNamer(context(), image())
    # tags with nothing to say drop the literal text before them, as in A1111
    assert single.apply("[seed]-[batch_number]-[seed_last]_[width]") == "1234_16"
    saver = OutputSaver(tmp_path, {"samples_filename_pattern": "[seed]-[prompt_words]"})
    assert (
        saver.save_image(image(), "txt2img", ctx).name == "00000-1234-A red 1 2 fox jumping over fences.png"
    )


@pytest.mark.parametrize(
    ("prompt", "replace_spaces", "expected"),
    [
        ("../../etc/passwd", True, ".._.._etc_passwd"),
        ("a:b*c?", True, "a_b_c_"),
        ('  <x>|"y"\\z\n.. ', False, "_x___y__z_"),
        ("two words. ", True, "two_words._"),
        ("two words. ", False, "two words"),
    ],
)
def test_sanitize_filename_part(prompt: str, replace_spaces: bool, expected: str) -> None:
    assert sanitize_filename_part(prompt, replace_spaces) == expected


def test_nasty_prompts_stay_inside_the_output_folder(tmp_path: Path) -> None:
    saver = OutputSaver(tmp_path, {"samples_filename_pattern": "[prompt]", "save_images_add_number": False})
    folder = tmp_path / "txt2img-images" / "2024-03-09"
    for prompt in ("../../etc/passwd", "a:b*c?", "..", "CON", "x" * 500, "ü" * 300 + " tail"):
        path = saver.save_image(image(), "txt2img", context(prompt=prompt))
        assert path.parent == folder and path.exists()
        assert path.resolve().parent == folder.resolve()
        assert len(path.name.encode()) <= 255
        assert not any(c in path.name for c in '/\\:*?"<>|')
    names = sorted(p.name for p in folder.iterdir())
    assert ".._.._etc_passwd.png" in names
    assert "a_b_c_.png" in names
    assert "_CON.png" in names
    assert "x" * 128 + ".png" in names


def test_long_prompt_name_is_cut_to_128_characters(tmp_path: Path) -> None:
    saver = OutputSaver(tmp_path, {"samples_filename_pattern": "[seed]-[prompt_spaces]"})
    path = saver.save_image(image(), "txt2img", context(prompt="abc " * 100))
    stem = path.stem
    assert stem.startswith("00000-1234-abc abc")
    assert len(stem) == len("00000-1234-") + 128 - 1  # 128 characters, then the trailing space is dropped


def test_directory_pattern_cannot_escape(tmp_path: Path) -> None:
    saver = OutputSaver(tmp_path, {"directories_filename_pattern": "../[prompt_words]/.."})
    path = saver.save_image(image(), "txt2img", context(prompt="hello world"))
    assert path.parent == tmp_path / "txt2img-images" / "hello world"


def test_png_infotext_round_trip(tmp_path: Path) -> None:
    path = OutputSaver(tmp_path).save_image(image(), "txt2img", context(), INFOTEXT)
    with Image.open(path) as saved:
        assert saved.info["parameters"] == INFOTEXT
        assert saved.size == (16, 8)
    assert read_infotext(path) == INFOTEXT
    with Image.open(path) as saved:
        assert read_infotext(saved) == INFOTEXT


@pytest.mark.parametrize("fmt", ["jpg", "webp"])
def test_exif_user_comment_round_trip(tmp_path: Path, fmt: str) -> None:
    saver = OutputSaver(tmp_path, {"samples_format": fmt, "jpeg_quality": 95})
    path = saver.save_image(image(), "txt2img", context(), INFOTEXT)
    assert path.suffix == f".{fmt}"
    assert read_infotext(path) == INFOTEXT
    with Image.open(path) as saved:
        raw = piexif.load(saved.info["exif"])["Exif"][piexif.ExifIFD.UserComment]
    assert raw.startswith(b"UNICODE\x00")  # A1111's "unicode" UserComment encoding (UTF-16)


def test_no_infotext_gives_none(tmp_path: Path) -> None:
    path = OutputSaver(tmp_path, {"samples_format": "jpg"}).save_image(image(), "txt2img", context())
    assert read_infotext(path) is None
    assert read_infotext(OutputSaver(tmp_path).save_image(image(), "txt2img", context())) is None


def test_failure_mid_save_leaves_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_replace = os.replace

    def fail(src: str, dst: str) -> None:
        raise OSError("disk full")

    saver = OutputSaver(tmp_path)
    monkeypatch.setattr("webui.engine.outputs.os.replace", fail)
    with pytest.raises(OSError, match="disk full"):
        saver.save_image(image(), "txt2img", context(), INFOTEXT)
    folder = tmp_path / "txt2img-images" / "2024-03-09"
    assert list(folder.iterdir()) == []
    monkeypatch.setattr("webui.engine.outputs.os.replace", real_replace)
    assert saver.save_image(image(), "txt2img", context()).name == "00000-1234.png"


def test_failure_after_writing_the_data_leaves_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken_fsync(fd: int) -> None:
        raise OSError("I/O error")

    monkeypatch.setattr("webui.engine.outputs.os.fsync", broken_fsync)
    with pytest.raises(OSError, match="I/O error"):
        OutputSaver(tmp_path).save_image(image(), "txt2img", context())
    assert list((tmp_path / "txt2img-images" / "2024-03-09").iterdir()) == []


def test_failure_while_encoding_leaves_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_save(self: Image.Image, fp: object, *args: object, **kwargs: object) -> None:
        fp.write(b"\x89PNG half")  # type: ignore[attr-defined]
        raise OSError("encoder crashed")

    monkeypatch.setattr(Image.Image, "save", broken_save)
    with pytest.raises(OSError, match="encoder crashed"):
        OutputSaver(tmp_path).save_image(image(), "txt2img", context())
    folder = tmp_path / "txt2img-images" / "2024-03-09"
    assert not folder.exists() or list(folder.iterdir()) == []


def test_unknown_kind_and_format(tmp_path: Path) -> None:
    with pytest.raises(InvalidParameter) as info:
        OutputSaver(tmp_path).save_image(image(), "video", context())
    assert "txt2img" in info.value.message
    with pytest.raises(InvalidParameter) as info:
        OutputSaver(tmp_path, {"samples_format": "bmpx"}).save_image(image(), "txt2img", context())
    assert info.value.field == "samples_format" and "webp" in info.value.message


def test_settings_object_with_attributes(tmp_path: Path) -> None:
    class Settings:
        save_to_dirs = False
        samples_filename_pattern = ""

    path = OutputSaver(tmp_path, Settings()).save_image(image(), "txt2img", context(prompt="red fox"))
    assert path == tmp_path / "txt2img-images" / "00000-1234-red fox.png"
