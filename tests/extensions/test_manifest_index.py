"""Manifests, facade version requirements, the access gate and the available-extensions index."""

from __future__ import annotations

import json

import pytest

from tests.extensions.helpers import write_extension
from webui.config.flags import parse_flags
from webui.config.options import Options
from webui.extensions.index import ExtensionIndexError, load_index, search
from webui.extensions.manifest import ManifestError, parse_manifest, read_manifest, version_satisfies
from webui.extensions.security import AccessGate, ExtensionAccessDenied


def test_manifest_defaults_and_fields(tmp_path):
    folder = write_extension(tmp_path, "x", {"id": "my-ext", "requirements": ["einops>=0.7", "scipy"]}, {})
    m = read_manifest(folder)
    assert (m.id, m.name, m.version, m.facade, m.entry) == ("my-ext", "my-ext", "0", "", "main:setup")
    assert (m.entry_module, m.entry_function, m.requirements) == ("main", "setup", ("einops>=0.7", "scipy"))
    json_folder = write_extension(tmp_path, "y", {"id": "j", "entry": "pkg.start:run"}, {}, as_json=True)
    assert read_manifest(json_folder).entry_module == "pkg.start"


@pytest.mark.parametrize(
    ("data", "field", "text"),
    [
        ({"name": "no id"}, "id", "is required"),
        ({"id": "Has Space"}, "id", "not valid"),
        ({"id": "core"}, "id", "reserved"),
        ({"id": "a", "entry": "main"}, "entry", "module:function"),
        ({"id": "a", "requirements": ["--index-url=http://evil"]}, "requirements", "plain package"),
        ({"id": "a", "requirements": ["git+https://x/y"]}, "requirements", "plain package"),
        ({"id": "a", "requirements": "numpy"}, "requirements", "must be a list"),
        ({"id": "a", "facade": "about 1"}, "facade", "version clause"),
        ({"id": "a", "colour": "red"}, "colour", "valid: id, name, version, facade, entry"),
    ],
)
def test_manifest_errors_name_the_field(data, field, text):
    with pytest.raises(ManifestError) as caught:
        parse_manifest(data)
    assert caught.value.field == field and text in caught.value.message


def test_unreadable_manifest(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "extension.toml").write_text("id = [unclosed")
    with pytest.raises(ManifestError, match="cannot be read"):
        read_manifest(tmp_path / "x")


@pytest.mark.parametrize(
    ("version", "spec", "ok"),
    [
        ("1.0", "", True),
        ("1.0", ">=1,<2", True),
        ("2.0", ">=1,<2", False),
        ("1.9", ">=1,<2", True),
        ("1.0", ">1", False),
        ("1.0", "==1", True),
        ("1.3", "==1.*", True),
        ("2.0", "==1.*", False),
        ("1.4", "~=1.2", True),
        ("2.0", "~=1.2", False),
        ("1.1", "~=1.2", False),
        ("1.0", "!=1.0", False),
        ("0.9", "<=1.0", True),
    ],
)
def test_version_requirements(version, spec, ok):
    assert version_satisfies(version, spec) is ok


def test_access_gate_follows_a1111_rules():
    local = AccessGate.from_flags(parse_flags([]))
    assert local.changes_allowed and local.may_load(builtin=False)
    local.check("install")
    for flags in (["--listen"], ["--share"], ["--server-name", "0.0.0.0"], ["--ngrok", "tok"]):
        gate = AccessGate.from_flags(parse_flags(flags))
        assert not gate.changes_allowed
        with pytest.raises(ExtensionAccessDenied, match="extension install refused"):
            gate.check("install")
        assert AccessGate.from_flags(
            parse_flags([*flags, "--enable-insecure-extension-access"])
        ).changes_allowed
    assert AccessGate.from_flags(parse_flags(["--server-name", "127.0.0.1"])).changes_allowed
    off = AccessGate.from_flags(parse_flags(["--disable-all-extensions"]))
    assert not off.may_load(builtin=True) and not off.may_load(builtin=False)
    setting = AccessGate.from_flags(parse_flags([]), Options(None, {"disable_all_extensions": "extra"}))
    assert setting.may_load(builtin=True) and not setting.may_load(builtin=False)


INDEX = [
    {"name": "Dynamic Prompts", "url": "https://github.com/x/dynamic-prompts", "description": "Wildcards and combinatorial prompts", "tags": ["prompting", "script"]},
    {"name": "Tiled Upscale", "url": "https://github.com/y/tiled", "description": "Upscale big images in tiles", "tags": ["extras", "script"]},
    {"name": "Broken entry without url"},
    {"url": "https://github.com/z/nameless.git", "description": "no name", "tags": "not-a-list"},
]  # fmt: skip


def test_index_from_local_file_and_search(tmp_path):
    path = tmp_path / "index.json"
    path.write_text(json.dumps(INDEX))
    entries = load_index(path)
    assert [e.name for e in entries] == ["Dynamic Prompts", "Tiled Upscale", "nameless.git"]
    assert entries[2].tags == ()
    assert [e.name for e in search(entries, "WILDCARD")] == ["Dynamic Prompts"]
    assert [e.name for e in search(entries, tags=["script"])] == ["Dynamic Prompts", "Tiled Upscale"]
    assert [e.name for e in search(entries, "upscale", tags=["Extras"])] == ["Tiled Upscale"]
    assert search(entries, "upscale", tags=["prompting"]) == []
    a1111_style = tmp_path / "a1111.json"
    a1111_style.write_text(json.dumps({"tags": {}, "extensions": INDEX[:1]}))
    assert [e.url for e in load_index(f"file://{a1111_style}")] == ["https://github.com/x/dynamic-prompts"]


def test_index_errors(tmp_path):
    with pytest.raises(ExtensionIndexError, match="cannot read"):
        load_index(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ExtensionIndexError, match="not valid JSON"):
        load_index(tmp_path / "bad.json")
    (tmp_path / "obj.json").write_text('{"a": 1}')
    with pytest.raises(ExtensionIndexError, match="JSON list"):
        load_index(tmp_path / "obj.json")
