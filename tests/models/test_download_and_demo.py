"""``--download-model``: progress, sha256 check, atomic file, clear offline error; and the demo model as the
fallback checkpoint of a fresh install (listed only while no other checkpoint exists)."""

from __future__ import annotations

import hashlib
import http.server
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from tests.factories import write_tiny_checkpoint
from webui.config.flags import parse_flags
from webui.config.paths import Paths
from webui.models.devices import choose_policy
from webui.models.download import KNOWN_MODELS, DownloadError, download_model, known_model
from webui.models.manager import ModelManager

PAYLOAD = b"not really a checkpoint " * 50_000


@pytest.fixture
def server() -> Iterator[str]:
    """A local HTTP server whose /model.safetensors is PAYLOAD."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path != "/model.safetensors":
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(PAYLOAD)))
            self.end_headers()
            self.wfile.write(PAYLOAD)

        def log_message(self, *args: object) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def test_download_checks_sha256_reports_progress_and_is_atomic(server: str, tmp_path: Path) -> None:
    good = replace(
        known_model("sd15"), url=f"{server}/model.safetensors", sha256=hashlib.sha256(PAYLOAD).hexdigest()
    )
    seen: list[tuple[int, int | None]] = []
    path = download_model(good, tmp_path, progress=lambda done, total: seen.append((done, total)))
    assert path == tmp_path / "v1-5-pruned-emaonly.safetensors" and path.read_bytes() == PAYLOAD
    assert seen[-1] == (len(PAYLOAD), len(PAYLOAD)) and len(seen) >= 2
    assert download_model(good, tmp_path, progress=lambda *_: pytest.fail("downloaded twice")) == path

    bad = replace(good, filename="bad.safetensors", sha256="0" * 64)
    with pytest.raises(DownloadError, match="does not match"):
        download_model(bad, tmp_path, progress=lambda *_: None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v1-5-pruned-emaonly.safetensors"]


def test_offline_and_unknown_names_fail_clearly(server: str, tmp_path: Path) -> None:
    missing = replace(known_model("sd15"), url=f"{server}/nothing.safetensors")
    with pytest.raises(DownloadError, match=r"could not download sd15 .* put it in"):
        download_model(missing, tmp_path, progress=lambda *_: None)
    unreachable = replace(known_model("sd15"), url="http://127.0.0.1:9/x.safetensors")
    with pytest.raises(DownloadError, match="Without a network"):
        download_model(unreachable, tmp_path, progress=lambda *_: None, timeout=5)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(DownloadError, match="known: sd15"):
        known_model("sd99")
    assert KNOWN_MODELS["sd15"].sha256.startswith("6ce0161689")  # A1111's short hash of this file


def test_demo_model_is_the_checkpoint_of_a_fresh_install_only(tmp_path: Path) -> None:
    flags = parse_flags(["--data-dir", str(tmp_path / "data"), "--use-cpu", "all"])
    paths = Paths.from_flags(flags, tmp_path).ensure()
    manager = ModelManager(paths, choose_policy(flags))
    assert manager.refresh() == []
    paths.demo_checkpoint.parent.mkdir(parents=True)
    write_tiny_checkpoint(paths.demo_checkpoint, "sd1")
    only = manager.refresh()
    assert [c.name for c in only] == ["demo-shapes-v1.safetensors"] and manager.is_demo(only[0])
    model = manager.load()
    assert manager.is_demo(model.checkpoint) and model.spec.family == "sd1"
    write_tiny_checkpoint(paths.ckpt_dirs[0] / "mine.safetensors", "sd1", seed=3)
    assert [c.name for c in manager.refresh()] == ["mine.safetensors"]
    manager.close()
