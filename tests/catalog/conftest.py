"""Fixtures for the catalog tests: a temporary MODELYARD_HOME and a fake Hugging Face Hub.

`FakeHub` is a tiny HTTP server on 127.0.0.1 that answers the two requests
``huggingface_hub.hf_hub_download`` (2.x) makes for a plain (non-Xet) file:

- ``HEAD /{repo}/resolve/{revision}/{file}``: the metadata. huggingface_hub
  needs ``X-Repo-Commit`` (else "does not seem to be served by a Hugging Face
  Hub endpoint"), an ``ETag`` (the sha256 for LFS files) and the size
  (``Content-Length``; ``X-Linked-Size``/``X-Linked-Etag`` only matter behind a
  redirect, which this server does not do). No ``X-Xet-*`` headers, so no Xet.
- ``GET`` on the same path, honouring ``Range: bytes=N-`` with a 206, which is
  how huggingface_hub resumes after a dropped connection.

A missing file gets a 404 with ``X-Error-Code: EntryNotFound``, as the Hub does.
No other route is needed for single-file downloads. A whole-repository
download (``snapshot_download``) first asks ``GET /api/models/{repo}/revision/{rev}``
for the commit and ``GET /api/models/{repo}/tree/{commit}`` for the file list,
then fetches each file as above at that commit.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote

import pytest

from modelyard.settings import Settings

COMMIT = "0123456789abcdef0123456789abcdef01234567"
_RESOLVE = re.compile(r"^/(?P<repo>[^/]+/[^/]+)/resolve/(?P<revision>[^/]+)/(?P<file>.+)$")
# what snapshot_download (a whole repository) asks first: the commit of a revision, then the file tree
_REPO_INFO = re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+)/revision/(?P<revision>[^/]+)$")
_TREE = re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+)/tree/(?P<revision>[^/]+)$")


@pytest.fixture(autouse=True)
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Every catalog test gets its own MODELYARD_HOME (and no stray Hub settings)."""
    monkeypatch.setenv("MODELYARD_HOME", str(tmp_path / "home"))
    for var in ("HF_ENDPOINT", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "OPENAI_API_KEY", "AZURE_OPENAI_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    return Settings.from_env()


@dataclass
class Request:
    method: str
    path: str
    range: str | None


@dataclass
class FakeHub:
    """What the fake Hub serves and what it was asked."""

    url: str = ""
    files: dict[tuple[str, str, str], bytes] = field(default_factory=dict)
    requests: list[Request] = field(default_factory=list)
    gated: set[str] = field(default_factory=set)
    """Repositories that answer 401 with ``X-Error-Code: GatedRepo``, as the Hub does without an accepted license."""
    drop_first_get_after: int | None = None
    """When set, the first GET sends this many bytes of the body and then closes the connection."""

    def add(self, repo: str, filename: str, data: bytes, revision: str = "main") -> str:
        """Serve `data` as `filename` in `repo` (files on `main` also at the commit `COMMIT`); returns its sha256."""
        self.files[(repo, revision, filename)] = data
        if revision == "main":
            self.files[(repo, COMMIT, filename)] = data
        return hashlib.sha256(data).hexdigest()

    def listing(self, repo: str, revision: str) -> list[tuple[str, bytes]]:
        return sorted((f, d) for (r, rev, f), d in self.files.items() if r == repo and rev == revision)

    def gets(self) -> list[Request]:
        return [r for r in self.requests if r.method == "GET"]


def _handler(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:  # keep test output quiet
            pass

        def _lookup(self) -> bytes | None:
            hub.requests.append(Request(self.command, self.path, self.headers.get("Range")))
            match = _RESOLVE.match(self.path.split("?")[0])
            if not match:
                return None
            key = (unquote(match["repo"]), unquote(match["revision"]), unquote(match["file"]))
            if key[0] in hub.gated:
                return None
            return hub.files.get(key)

        def _not_found(self) -> None:
            match = _RESOLVE.match(self.path.split("?")[0])
            gated = bool(match) and unquote(match["repo"]) in hub.gated
            code, message = ("GatedRepo", "Access to this model is restricted") if gated else ("EntryNotFound", "Entry not found")
            body = json.dumps({"error": message}).encode()
            self.send_response(401 if gated else 404)
            self.send_header("X-Error-Code", code)
            self.send_header("X-Error-Message", message)
            self.send_header("X-Repo-Commit", COMMIT)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _meta_headers(self, data: bytes) -> None:
            self.send_header("X-Repo-Commit", COMMIT)
            self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("Content-Type", "application/octet-stream")

        def do_HEAD(self) -> None:
            data = self._lookup()
            if data is None:
                return self._not_found()
            self.send_response(200)
            self._meta_headers(data)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()

        def _json(self, payload: object) -> None:
            body = json.dumps(payload).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def call_api(self) -> bool:
            path = self.path.split("?")[0]
            if match := _REPO_INFO.match(path):
                files = hub.listing(unquote(match["repo"]), unquote(match["revision"]))
                self._json({"id": unquote(match["repo"]), "sha": COMMIT, "siblings": [{"rfilename": f} for f, _ in files]})
                return True
            if match := _TREE.match(path):
                files = hub.listing(unquote(match["repo"]), unquote(match["revision"]))
                self._json([{"type": "file", "path": f, "size": len(d), "oid": hashlib.sha1(d).hexdigest()} for f, d in files])
                return True
            return False

        def do_GET(self) -> None:
            if self.path.startswith("/api/"):
                hub.requests.append(Request(self.command, self.path, None))
                if self.call_api():
                    return
            data = self._lookup()
            if data is None:
                return self._not_found()
            start = 0
            wanted = self.headers.get("Range")
            if wanted:
                match = re.fullmatch(r"bytes=(\d+)-", wanted.strip())
                assert match, f"fake hub only supports open ranges, got {wanted!r}"
                start = int(match[1])
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            else:
                self.send_response(200)
            body = data[start:]
            self._meta_headers(data)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if hub.drop_first_get_after is not None:
                cut, hub.drop_first_get_after = hub.drop_first_get_after, None
                self.wfile.write(body[:cut])
                self.wfile.flush()
                self.close_connection = True  # the client sees the body end early
                return
            self.wfile.write(body)

    return Handler


@pytest.fixture
def fake_hub(monkeypatch: pytest.MonkeyPatch) -> FakeHub:
    """A running fake Hub, with HF_ENDPOINT pointing at it for the test."""
    hub = FakeHub()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(hub))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-hub", daemon=True)
    thread.start()
    hub.url = f"http://127.0.0.1:{server.server_address[1]}"
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    monkeypatch.delenv("HF_TOKEN", raising=False)  # never send a real token to the fake
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    import huggingface_hub.constants as hf_constants

    # huggingface_hub reads HF_HUB_OFFLINE once, at import; make sure this run is online.
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    try:
        yield hub
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
