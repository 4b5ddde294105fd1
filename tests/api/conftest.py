"""Fixtures of the API tests: two tiny SD1 checkpoints written once, application contexts over them, an
in-process client and a real uvicorn server on 127.0.0.1 for external clients."""

from __future__ import annotations

import base64
import contextlib
import io
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import uvicorn
from fastapi.testclient import TestClient
from PIL import Image

from tests.factories import write_tiny_checkpoint
from webui.config.flags import parse_flags
from webui.context import AppContext, build_context
from webui.server import create_app

CHECKPOINTS = (("tiny_a.safetensors", 0), ("tiny_b.safetensors", 5))
SMALL = {"width": 64, "height": 64, "steps": 2}


@pytest.fixture(scope="session")
def checkpoint_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with two tiny SD1 checkpoints of different weights (passed with --ckpt-dir)."""
    folder = tmp_path_factory.mktemp("api-checkpoints")
    for name, seed in CHECKPOINTS:
        write_tiny_checkpoint(folder / name, "sd1", seed=seed)
    return folder


ContextFactory = Callable[..., AppContext]


@pytest.fixture
def make_context(tmp_path: Path, checkpoint_dir: Path) -> Iterator[ContextFactory]:
    """``make_context(*flags)``: a started context in a fresh data folder; closed after the test."""
    made: list[AppContext] = []

    def build(*argv: str) -> AppContext:
        root = tmp_path / f"data{len(made)}"
        flags = parse_flags(
            ["--data-dir", str(root), "--ckpt-dir", str(checkpoint_dir), "--use-cpu", "all", *argv]
        )
        ctx = build_context(flags, root)
        ctx.start()
        made.append(ctx)
        return ctx

    yield build
    for ctx in made:
        ctx.close()


@pytest.fixture(scope="session")
def shared_context(tmp_path_factory: pytest.TempPathFactory, checkpoint_dir: Path) -> Iterator[AppContext]:
    """One API-only context for tests that do not change settings or models."""
    root = tmp_path_factory.mktemp("api-shared")
    flags = parse_flags(
        ["--data-dir", str(root), "--ckpt-dir", str(checkpoint_dir), "--use-cpu", "all", "--nowebui"]
    )
    ctx = build_context(flags, root)
    ctx.start()
    yield ctx
    ctx.close()


@pytest.fixture(scope="session")
def client(shared_context: AppContext) -> Iterator[TestClient]:
    """An in-process HTTP client of the shared context's app."""
    with TestClient(create_app(shared_context)) as test_client:
        yield test_client


def free_port() -> int:
    """A TCP port that was free a moment ago on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class LiveServer:
    """A uvicorn server in a thread."""

    ctx: AppContext
    host: str
    port: int

    @property
    def url(self) -> str:
        """The API's base URL."""
        return f"http://{self.host}:{self.port}/sdapi/v1"


@contextlib.contextmanager
def serve(ctx: AppContext) -> Iterator[LiveServer]:
    """Serve ``ctx``'s app with uvicorn on 127.0.0.1 and a free port until the block ends."""
    port = free_port()
    config = uvicorn.Config(create_app(ctx), host="127.0.0.1", port=port, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="test-uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield LiveServer(ctx, "127.0.0.1", port)
    finally:
        server.should_exit = True
        thread.join(10)


def png_b64(image: Image.Image, prefix: bool = False) -> str:
    """``image`` as base64 PNG, optionally as a ``data:`` URL."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    data = base64.b64encode(buffer.getvalue()).decode()
    return f"data:image/png;base64,{data}" if prefix else data


def decode_b64(data: str) -> Image.Image:
    """A base64 PNG from an answer."""
    return Image.open(io.BytesIO(base64.b64decode(data)))
