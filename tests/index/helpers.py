"""Fakes for the index tests: a deterministic embedder, a tiny PDF writer, and a gateway the routes can use."""

from __future__ import annotations

import hashlib
import re
import socket
import threading
from types import SimpleNamespace
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from starlette.responses import Response

from modelyard.errors import ModelyardError, not_found
from modelyard.index import IndexRegistry
from modelyard.server import index_routes
from modelyard.server.http import error_response

DIM = 384
ADMIN_KEY = "sk-admin-test"
USER_KEY = "sk-user-test"


def bag_of_words(text: str, dim: int = DIM) -> np.ndarray:
    """A unit vector from the text's words, hashed into `dim` buckets: texts sharing words are near."""
    v = np.zeros(dim, dtype=np.float32)
    for word in re.findall(r"[a-z0-9]+", text.lower()):
        digest = hashlib.blake2b(word.encode(), digest_size=8).digest()
        v[int.from_bytes(digest[:4], "little") % dim] += 1.0 if digest[4] & 1 else -1.0
    norm = np.linalg.norm(v)
    return v / norm if norm else v


class HashEmbedder:
    """``async (texts) -> vectors`` as `build` takes it; counts calls and texts, and can fail from a given call on."""

    def __init__(self, *, fail_from_call: int | None = None, dim: int = DIM, error: Exception | None = None) -> None:
        self.fail_from_call = fail_from_call
        self.dim = dim
        self.error = error or ModelyardError("No instance of endpoint 'embed' is ready.", status=503,
                                             code="no_instance_ready")
        self.calls = 0
        self.texts: list[str] = []
        self.batches: list[int] = []

    async def __call__(self, texts: list[str]) -> list[list[float]]:
        self.calls += 1
        if self.fail_from_call is not None and self.calls >= self.fail_from_call:
            raise self.error
        self.texts += texts
        self.batches.append(len(texts))
        return [bag_of_words(t, self.dim).tolist() for t in texts]


def make_pdf(pages: list[str], *, title: str | None = None) -> bytes:
    """A minimal PDF with one line of Helvetica text per page (xref offsets computed, so readers accept it)."""
    objects: list[bytes] = []
    n_pages = len(pages)
    font = 3 + 2 * n_pages
    info = font + 1
    objects.append(b"<< /Type /Catalog /Pages 2 0 R >>")
    kids = " ".join(f"{3 + 2 * i} 0 R" for i in range(n_pages))
    objects.append(f"<< /Type /Pages /Kids [{kids}] /Count {n_pages} >>".encode())
    for i, text in enumerate(pages):
        content = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode()
        objects.append(f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents {4 + 2 * i} 0 R "
                       f"/Resources << /Font << /F1 {font} 0 R >> >> >>".encode())
        objects.append(b"<< /Length %d >>\nstream\n" % len(content) + content + b"\nendstream")
    objects.append(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>")
    objects.append(f"<< /Title ({title or ''}) >>".encode())
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    for offset in offsets:
        out += b"%010d 00000 n \n" % offset
    out += b"trailer\n<< /Size %d /Root 1 0 R /Info %d 0 R >>\n" % (len(objects) + 1, info)
    out += b"startxref\n%d\n%%%%EOF\n" % xref
    return bytes(out)


class _Keys:
    def verify(self, key: str) -> Any:
        if key == ADMIN_KEY:
            return SimpleNamespace(is_admin=True, id=1)
        if key == USER_KEY:
            return SimpleNamespace(is_admin=False, id=2)
        return None


class _Endpoints:
    def __init__(self, names: set[str]) -> None:
        self.names = names

    def get(self, name: str) -> Any:
        if name not in self.names:
            raise not_found(f"The model (endpoint) '{name}' does not exist.", param="model", code="model_not_found")
        return SimpleNamespace(name=name)


def fake_gateway(registry: IndexRegistry, embedder: HashEmbedder, *, endpoints: set[str] = frozenset({"embed"}),
                 max_body_bytes: int = 8 << 20) -> SimpleNamespace:
    """What the index routes use of the gateway: keys, settings, endpoints, indexes and `index_embedder`."""
    gateway = SimpleNamespace(keys=_Keys(), settings=SimpleNamespace(max_body_bytes=max_body_bytes),
                              endpoints=_Endpoints(set(endpoints)), indexes=registry, embedder=embedder,
                              embedded_for=[])

    def index_embedder(endpoint: str):
        gateway.endpoints.get(endpoint)
        gateway.embedded_for.append(endpoint)
        return gateway.embedder

    gateway.index_embedder = index_embedder
    return gateway


def index_app(gateway: SimpleNamespace) -> FastAPI:
    """The index routes alone, with the gateway's error handling."""
    app = FastAPI()
    app.state.gateway = gateway
    app.include_router(index_routes.router)

    @app.exception_handler(ModelyardError)
    async def _error(request: Request, exc: ModelyardError) -> Response:
        return error_response(exc)

    return app


class LiveServer:
    """`app` served by uvicorn on a free port in a thread (what the CLI talks to)."""

    def __init__(self, app: FastAPI) -> None:
        import uvicorn

        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.thread.start()
        for _ in range(2000):
            if self.server.started or not self.thread.is_alive():
                break
            threading.Event().wait(0.005)
        if not self.server.started:
            raise RuntimeError("the test server did not start")

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()
