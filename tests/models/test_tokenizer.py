"""CLIP tokenizer files rebuilt offline from open_clip's BPE vocabulary."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
from transformers import CLIPTokenizer

from webui.models.errors import ModelError
from webui.models.tokenizer_files import (
    PAD_TOKEN_CLIP_L,
    PAD_TOKEN_OPEN_CLIP,
    build_vocabulary,
    byte_to_unicode_table,
    find_bpe_vocabulary,
    write_clip_tokenizer,
)

PROMPT_IDS = [49406, 320, 1125, 539, 320, 2368, 49407]


@pytest.fixture(scope="module")
def tokenizers(tokenizer_cache: Path) -> dict[str, CLIPTokenizer]:
    """The CLIP-L and OpenCLIP tokenizers written by the session fixture."""
    return {
        "clip-l": CLIPTokenizer.from_pretrained(tokenizer_cache / "clip-l"),
        "open-clip": CLIPTokenizer.from_pretrained(tokenizer_cache / "open-clip"),
    }


@pytest.mark.parametrize("kind", ["clip-l", "open-clip"])
def test_prompt_token_ids(tokenizers: dict[str, CLIPTokenizer], kind: str) -> None:
    tokenizer = tokenizers[kind]
    assert tokenizer("a photo of a cat").input_ids == PROMPT_IDS
    assert tokenizer("A  Photo of a CAT").input_ids == PROMPT_IDS  # lower-cased, whitespace collapsed
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, len(tokenizer)) == (49406, 49407, 49408)


@pytest.mark.parametrize(("kind", "pad"), [("clip-l", 49407), ("open-clip", 0)])
def test_padding_follows_the_encoder(tokenizers: dict[str, CLIPTokenizer], kind: str, pad: int) -> None:
    tokenizer = tokenizers[kind]
    ids = tokenizer("a photo of a cat", padding="max_length", max_length=77).input_ids
    assert ids == PROMPT_IDS + [pad] * 70
    assert tokenizer.pad_token_id == pad
    long = tokenizer("cat " * 200, padding="max_length", max_length=77, truncation=True).input_ids
    assert len(long) == 77 and long[0] == 49406 and long[-1] == 49407 and long[1:-1] == [2368] * 75


def test_vocabulary_layout_follows_byte_level_bpe() -> None:
    table = byte_to_unicode_table()
    assert len(table) == 256 and len(set(table.values())) == 256
    assert all(table[b] == chr(b) for b in range(ord("!"), ord("~") + 1))
    vocab, merges = build_vocabulary(find_bpe_vocabulary())
    assert len(vocab) == 49408 and len(merges) == 49408 - 512 - 2
    # bytes first (printable ASCII from "!"), then the same with "</w>", then merges, BOS, EOS
    assert vocab["!"] == 0 and vocab["a"] == ord("a") - ord("!")
    assert vocab["a</w>"] == 256 + ord("a") - ord("!") == 320
    assert vocab["<|startoftext|>"] == 49406 and vocab["<|endoftext|>"] == 49407


def test_written_folder_is_complete_and_not_rewritten(tmp_path: Path) -> None:
    folder = write_clip_tokenizer(tmp_path / "tok", pad_token=PAD_TOKEN_OPEN_CLIP)
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["merges.txt", "special_tokens_map.json", "tokenizer_config.json", "vocab.json"]
    config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert (config["model_max_length"], config["pad_token"]) == (77, "!")
    stamp = (folder / "vocab.json").stat().st_mtime_ns
    assert write_clip_tokenizer(folder, pad_token=PAD_TOKEN_CLIP_L) == folder
    assert (folder / "vocab.json").stat().st_mtime_ns == stamp


def test_wrong_bpe_file_is_reported(tmp_path: Path) -> None:
    bad = tmp_path / "bpe_simple_vocab_16e6.txt.gz"
    bad.write_bytes(gzip.compress(b"#version\nh e\nt h\n"))
    with pytest.raises(ModelError, match="unexpected CLIP vocabulary size"):
        build_vocabulary(bad)
