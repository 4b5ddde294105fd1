"""Authentication on every route, request and image size limits, URL images, the exposure warning."""

from __future__ import annotations

import base64
import io
import re

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from PIL import Image

from tests.api.conftest import SMALL, ContextFactory, png_b64, serve
from webui.api.auth import credentials_match
from webui.api.request_images import ImagePolicy, check_public_host, decode_image
from webui.config.flags import parse_flags
from webui.engine.errors import InvalidParameter
from webui.server import create_app, exposure_warning

API = "/sdapi/v1"


def _concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "x", path)


def _all_routes(app: FastAPI) -> set[tuple[str, str]]:
    """(path, method) of every plain route and every documented API operation."""
    routes = {
        (r.path, method)
        for r in app.routes
        if isinstance(getattr(r, "path", None), str)
        for method in (getattr(r, "methods", None) or {"GET"})
    }
    for path, operations in app.openapi()["paths"].items():
        routes.update((path, method.upper()) for method in operations)
    return routes


def test_api_auth_protects_every_route_including_docs(make_context: ContextFactory) -> None:
    ctx = make_context("--nowebui", "--api-auth", "alice:pw1,bob:pw2")
    app = create_app(ctx)
    routes = _all_routes(app)
    assert len(routes) > 30
    assert ("/sdapi/v1/queue/{job_id}", "DELETE") in routes
    assert ("/openapi.json", "GET") in routes and ("/docs", "GET") in routes
    with TestClient(app) as c:
        for path, method in routes:
            for auth in (None, ("alice", "wrong"), ("mallory", "pw1"), ("alice", "pw2")):
                r = c.request(method, _concrete(path), auth=auth)
                assert r.status_code == 401, (method, path, auth, r.status_code)
                assert r.headers["www-authenticate"].startswith("Basic ")
        assert c.get("/docs", auth=("alice", "pw1")).status_code == 200
        assert c.get("/openapi.json", auth=("bob", "pw2")).status_code == 200
        assert c.get(f"{API}/samplers", auth=("bob", "pw2")).status_code == 200
        assert c.get(f"{API}/samplers", headers={"Authorization": "Basic !!!"}).status_code == 401
        assert c.get(f"{API}/samplers", headers={"Authorization": "Bearer abc"}).status_code == 401


def test_without_api_auth_the_api_is_open(client: TestClient) -> None:
    assert client.get(f"{API}/samplers").status_code == 200


def test_credentials_match_needs_both_parts() -> None:
    good = "Basic " + base64.b64encode(b"u:p:with:colons").decode()
    assert credentials_match(good, {"u": "p:with:colons"})
    assert not credentials_match(good, {"u": "p"})
    assert not credentials_match("Basic " + base64.b64encode(b"nocolon").decode(), {"nocolon": ""})
    assert not credentials_match(None, {"u": "p"})


def test_over_large_requests_and_sizes_are_refused_before_work(make_context: ContextFactory) -> None:
    ctx = make_context("--nowebui")
    ctx.options.update({"api_max_request_mb": 0.01, "api_max_pixels": 128 * 128}, save=False)  # 10 KiB
    with TestClient(create_app(ctx)) as c:
        big = {"prompt": "x" * 20_000, **SMALL}
        r = c.post(f"{API}/txt2img", json=big)
        assert r.status_code == 413 and r.json()["error"] == "RequestTooLarge"

        def chunks():
            yield b'{"prompt": "'
            for _ in range(20):
                yield b"y" * 1000
            yield b'"}'

        r = c.post(f"{API}/txt2img", content=chunks(), headers={"content-type": "application/json"})
        assert r.status_code == 413
        r = c.post(f"{API}/txt2img", json={"prompt": "x", "width": 256, "height": 128, "steps": 1})
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "width"]
        r = c.post(f"{API}/txt2img", json={"prompt": "x", "enable_hr": True, "hr_scale": 4, **SMALL})
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "hr_scale"]
        huge = png_b64(Image.new("L", (256, 256)))
        r = c.post(f"{API}/img2img", json={"init_images": [huge], **SMALL})
        assert r.status_code == 422 and "256x256" in r.json()["errors"]
        assert ctx.queue.snapshot() == []
    assert len(list(ctx.paths.outputs_dir.rglob("*.png"))) == 0


def _png_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (1, 2, 3)).save(buffer, format="PNG")
    return buffer.getvalue()


class _Response(io.BytesIO):
    def __enter__(self) -> _Response:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def test_image_urls_are_refused_unless_allowed_and_never_to_local_addresses() -> None:
    url = "https://example.test/cat.png"
    with pytest.raises(InvalidParameter, match="api_enable_requests") as info:
        decode_image(url, "init_images.0", ImagePolicy(allow_urls=False))
    assert info.value.field == "init_images.0"

    def public(host: str, port: int) -> list[tuple]:
        return [(2, 1, 6, "", ("93.184.216.34", port))]

    opened: list[str] = []

    def opener(u: str, timeout: float) -> _Response:
        opened.append(u)
        return _Response(_png_bytes())

    image = decode_image(url, "mask", ImagePolicy(allow_urls=True), resolve=public, opener=opener)
    assert image.size == (8, 8) and opened == [url]
    for address in ("127.0.0.1", "10.0.0.5", "192.168.1.2", "169.254.169.254", "::1", "fd00::1", "0.0.0.0"):

        def local(host: str, port: int, address: str = address) -> list[tuple]:
            return [(2, 1, 6, "", (address, port))]

        with pytest.raises(InvalidParameter, match="private or local"):
            decode_image(url, "mask", ImagePolicy(allow_urls=True), resolve=local, opener=opener)
    assert opened == [url]  # nothing local was fetched
    with pytest.raises(InvalidParameter, match="http"):
        check_public_host("file:///etc/passwd", "mask")
    with pytest.raises(InvalidParameter, match="private or local"):
        check_public_host("http://127.0.0.1:7861/sdapi/v1/options", "mask")


def test_url_in_a_request_answers_422(client: TestClient) -> None:
    r = client.post(f"{API}/img2img", json={"init_images": ["http://127.0.0.1/x.png"], **SMALL})
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"] == ["body", "init_images", "0"]


@pytest.mark.parametrize(
    ("argv", "warned"),
    [
        (["--listen", "--api"], True),
        (["--share", "--nowebui"], True),
        (["--server-name", "0.0.0.0", "--nowebui"], True),
        (["--listen", "--nowebui", "--api-auth", "a:b"], False),
        (["--listen", "--api", "--api-auth", "a:b"], True),  # the UI itself has no password
        (["--listen", "--api", "--api-auth", "a:b", "--gradio-auth", "c:d"], False),
        (["--api"], False),
        (["--nowebui"], False),
    ],
)
def test_exposure_warning_when_reachable_without_auth(argv: list[str], warned: bool) -> None:
    warning = exposure_warning(parse_flags(argv))
    assert (warning is not None) is warned
    if warned:
        assert "WARNING" in warning and "password" in warning


def test_nowebui_serves_the_api_alone_on_7861(make_context: ContextFactory) -> None:
    ctx = make_context("--nowebui")
    assert ctx.flags.server_port == 7861
    assert parse_flags(["--api"]).server_port == 7860
    with serve(ctx) as server:
        r = httpx.get(f"{server.url}/samplers", timeout=10)
        assert r.status_code == 200
        assert httpx.get(f"http://{server.host}:{server.port}/", timeout=10).status_code == 404
    assert all(
        path.startswith((API, "/docs", "/openapi", "/ext/")) for path, _ in _all_routes(create_app(ctx))
    )
