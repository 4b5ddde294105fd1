"""CLIP tokenizer files built offline from the BPE vocabulary that ``open_clip_torch`` ships.

Stable Diffusion's text encoders (OpenAI CLIP-L, OpenCLIP-H, OpenCLIP-bigG) share one byte-level BPE
vocabulary of 49408 tokens. Hub downloads are impossible offline, so the ``vocab.json`` / ``merges.txt``
pair that ``transformers.CLIPTokenizer`` reads is rebuilt from ``bpe_simple_vocab_16e6.txt.gz``.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import os
import tempfile
from pathlib import Path

from webui.models.errors import ModelError

BPE_FILE_NAME = "bpe_simple_vocab_16e6.txt.gz"
VOCAB_SIZE = 49408
BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
# OpenCLIP (SD2, SDXL's second encoder) pads with "!" (id 0); OpenAI CLIP-L pads with the EOS token.
PAD_TOKEN_CLIP_L = EOS_TOKEN
PAD_TOKEN_OPEN_CLIP = "!"
_NUM_MERGES = VOCAB_SIZE - 2 * 256 - 2


def find_bpe_vocabulary() -> Path:
    """Locate the gzip BPE file inside the installed ``open_clip`` package without importing it."""
    spec = importlib.util.find_spec("open_clip")
    locations = list(spec.submodule_search_locations or []) if spec else []
    for loc in locations:
        candidate = Path(loc) / BPE_FILE_NAME
        if candidate.is_file():
            return candidate
    raise ModelError(
        f"CLIP's BPE vocabulary ({BPE_FILE_NAME}) was not found: install the `open_clip_torch` package "
        "(pip install --no-deps open_clip_torch)"
    )


def byte_to_unicode_table() -> dict[int, str]:
    """The reversible byte -> printable character table of byte-level BPE (GPT-2/CLIP)."""
    printable = list(range(ord("!"), ord("~") + 1))
    printable += list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    table: dict[int, str] = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def build_vocabulary(bpe_path: Path) -> tuple[dict[str, int], list[str]]:
    """Return (token -> id, merge lines) in CLIP's order: bytes, bytes+``</w>``, merges, BOS, EOS."""
    lines = gzip.decompress(bpe_path.read_bytes()).decode("utf-8").split("\n")
    merges = lines[1 : 1 + _NUM_MERGES]
    base = list(byte_to_unicode_table().values())
    tokens = base + [t + "</w>" for t in base]
    tokens += ["".join(m.split()) for m in merges]
    tokens += [BOS_TOKEN, EOS_TOKEN]
    if len(tokens) != VOCAB_SIZE:
        raise ModelError(f"unexpected CLIP vocabulary size {len(tokens)} from {bpe_path}")
    return {t: i for i, t in enumerate(tokens)}, merges


def _write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def write_clip_tokenizer(dest: Path, pad_token: str = PAD_TOKEN_CLIP_L, bpe_path: Path | None = None) -> Path:
    """Write a ``CLIPTokenizer`` folder (vocab, merges, configs) to ``dest`` unless it is already there."""
    marker = dest / "tokenizer_config.json"
    if marker.is_file():
        return dest
    dest.mkdir(parents=True, exist_ok=True)
    vocab, merges = build_vocabulary(bpe_path or find_bpe_vocabulary())
    _write_atomic(dest / "vocab.json", json.dumps(vocab, ensure_ascii=False))
    _write_atomic(dest / "merges.txt", "#version: 0.2\n" + "\n".join(merges) + "\n")
    special = {"bos_token": BOS_TOKEN, "eos_token": EOS_TOKEN, "unk_token": EOS_TOKEN, "pad_token": pad_token}
    _write_atomic(dest / "special_tokens_map.json", json.dumps(special, indent=2))
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": 77,
        "do_lower_case": True,
        "errors": "replace",
        "clean_up_tokenization_spaces": True,
        **special,
    }
    _write_atomic(marker, json.dumps(config, indent=2))
    return dest
