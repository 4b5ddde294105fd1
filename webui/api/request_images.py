"""Images sent in API requests: base64 (with or without a ``data:`` prefix) or, when allowed, a URL.

Sizes are checked from the image header before any pixel is decoded. Remote URLs are refused unless the
option ``api_enable_requests`` is on, and even then never fetched from private, loopback, link-local or
otherwise non-global addresses; redirects are not followed (they could lead to such an address).
"""

from __future__ import annotations

import base64
import binascii
import io
import ipaddress
import socket
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from PIL import Image

from webui.engine.errors import InvalidParameter

URL_TIMEOUT_S = 10.0
URL_SCHEMES = ("http", "https")

Resolver = Callable[..., list[tuple[Any, ...]]]
Opener = Callable[[str, float], Any]


@dataclass(frozen=True)
class ImagePolicy:
    """What a request may send: URL fetching and the largest image (pixels) and download (bytes)."""

    allow_urls: bool = False
    max_pixels: int = 4096 * 4096
    max_bytes: int = 64 * 1024 * 1024


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req: Any, fp: Any, code: int, msg: str, headers: Any, newurl: str) -> None:
        raise urllib.error.HTTPError(newurl, code, "redirects are not followed", headers, fp)


def _open_url(url: str, timeout: float) -> Any:
    opener = urllib.request.build_opener(_NoRedirect)
    request = urllib.request.Request(url, headers={"User-Agent": "webui-api"})
    return opener.open(request, timeout=timeout)


def check_public_host(url: str, field: str, resolve: Resolver = socket.getaddrinfo) -> None:
    """Refuse URLs that are not http(s) or whose host resolves to any non-global address."""
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme not in URL_SCHEMES or not parsed.hostname:
        raise InvalidParameter(field, f"only http:// and https:// URLs with a host are accepted, got {url!r}")
    try:
        infos = resolve(parsed.hostname, parsed.port or (443 if parsed.scheme == "https" else 80))
    except OSError as exc:
        raise InvalidParameter(field, f"cannot resolve {parsed.hostname!r} ({exc})") from None
    addresses = {info[4][0] for info in infos}
    if not addresses:
        raise InvalidParameter(field, f"{parsed.hostname!r} has no address")
    for address in addresses:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
        if not ip.is_global or ip.is_multicast:
            raise InvalidParameter(
                field, f"{parsed.hostname!r} resolves to {address}, a private or local address: refused"
            )


def fetch_url(
    url: str,
    field: str,
    policy: ImagePolicy,
    *,
    resolve: Resolver = socket.getaddrinfo,
    opener: Opener = _open_url,
) -> bytes:
    """Download an image URL allowed by ``policy`` (at most ``policy.max_bytes``)."""
    if not policy.allow_urls:
        raise InvalidParameter(
            field, "image URLs are refused; send base64 data (or enable the option api_enable_requests)"
        )
    check_public_host(url, field, resolve)
    try:
        with opener(url, URL_TIMEOUT_S) as response:
            data = response.read(policy.max_bytes + 1)
    except (OSError, ValueError) as exc:
        raise InvalidParameter(field, f"could not download {url!r} ({exc})") from None
    if len(data) > policy.max_bytes:
        raise InvalidParameter(field, f"the image at {url!r} is larger than {policy.max_bytes} bytes")
    return data


def _base64_bytes(data: str, field: str) -> bytes:
    payload = data.strip()
    if payload.startswith("data:"):
        _, sep, payload = payload.partition(",")
        if not sep:
            raise InvalidParameter(field, "data URL without a comma before the base64 payload")
    try:
        return base64.b64decode(payload, validate=False)
    except (binascii.Error, ValueError):
        raise InvalidParameter(field, "not valid base64") from None


def decode_image(
    data: str,
    field: str,
    policy: ImagePolicy,
    *,
    resolve: Resolver = socket.getaddrinfo,
    opener: Opener = _open_url,
) -> Image.Image:
    """Decode one request image; anything unreadable, too large or not allowed raises InvalidParameter."""
    if not isinstance(data, str) or not data.strip():
        raise InvalidParameter(field, "expected a base64-encoded image")
    text = data.strip()
    if text.lower().startswith(("http://", "https://")):
        raw = fetch_url(text, field, policy, resolve=resolve, opener=opener)
    else:
        raw = _base64_bytes(text, field)
    try:
        image = Image.open(io.BytesIO(raw))
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise InvalidParameter(field, f"not a readable image ({exc.__class__.__name__})") from None
    width, height = image.size
    if width * height > policy.max_pixels:
        raise InvalidParameter(
            field,
            f"the image is {width}x{height}, more than {policy.max_pixels} pixels (option api_max_pixels)",
        )
    try:
        image.load()
    except (OSError, ValueError) as exc:
        raise InvalidParameter(field, f"not a readable image ({exc.__class__.__name__})") from None
    return image


def read_infotext(image: Image.Image) -> tuple[str | None, dict[str, Any]]:
    """The ``parameters`` infotext of an image and its other text items (A1111's PNG Info)."""
    items = {k: v for k, v in image.info.items() if isinstance(k, str) and isinstance(v, str | int | float)}
    text = items.pop("parameters", None)
    if text is None:
        comment = image.getexif().get_ifd(0x8769).get(0x9286)  # Exif UserComment (JPEG / WebP)
        if isinstance(comment, bytes):
            head, body = comment[:8], comment[8:]
            text = body.decode("utf-16-be" if head.startswith(b"UNICODE") else "utf-8", "replace").strip("\0")
        elif isinstance(comment, str):
            text = comment
    return (str(text) if text else None), items
